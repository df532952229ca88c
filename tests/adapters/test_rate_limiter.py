import asyncio

from adapters.rate_limiter import SlidingWindowRateLimiter


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


async def test_calls_beyond_the_limit_wait_for_the_window_to_slide():
    time = FakeTime()
    limiter = SlidingWindowRateLimiter(3, monotonic=time.monotonic, sleep=time.sleep)
    for _ in range(3):
        await limiter.acquire()
        time.now += 1
    assert time.slept == []
    await limiter.acquire()  # the first call was at 1000: wait until 1060
    assert time.slept == [57.0] and time.now == 1060.0


async def test_waiters_are_served_in_order_and_none_is_dropped():
    time = FakeTime()
    limiter = SlidingWindowRateLimiter(2, monotonic=time.monotonic, sleep=time.sleep)
    served: list[int] = []

    async def call(n: int) -> None:
        await limiter.acquire()
        served.append(n)

    await asyncio.gather(*(call(n) for n in range(5)))
    assert served == [0, 1, 2, 3, 4]
    assert time.now == 1120.0  # two per minute: the fifth call starts two minutes in


async def test_zero_means_no_limit():
    limiter = SlidingWindowRateLimiter(0)
    await asyncio.wait_for(asyncio.gather(*(limiter.acquire() for _ in range(1000))), 1)


async def test_calls_are_spread_out_while_the_provider_runs_low():
    from application.ports import RateLimitStatus

    time = FakeTime()
    limiter = SlidingWindowRateLimiter(0, monotonic=time.monotonic, sleep=time.sleep)
    limiter.observe(RateLimitStatus(remaining_requests=4, limit_requests=100, reset_seconds=8.0))
    for _ in range(3):
        await limiter.acquire()
    assert time.slept == [2.0, 2.0]  # 4 calls left in 8 s: one every 2 s
    limiter.observe(RateLimitStatus(remaining_requests=90, limit_requests=100, reset_seconds=8.0))
    await limiter.acquire()
    assert time.slept == [2.0, 2.0]  # plenty left again: no pacing


async def test_pacing_ends_when_the_providers_window_resets():
    from application.ports import RateLimitStatus

    time = FakeTime()
    limiter = SlidingWindowRateLimiter(0, monotonic=time.monotonic, sleep=time.sleep)
    limiter.observe(RateLimitStatus(remaining_tokens=10, limit_tokens=10_000, reset_seconds=1.0))
    await limiter.acquire()
    time.now += 2.0  # past the reset
    await limiter.acquire()
    await limiter.acquire()
    assert time.slept == []


async def test_tokens_count_their_estimate_until_settled_with_what_was_used():
    time = FakeTime()
    limiter = SlidingWindowRateLimiter(0, 100, monotonic=time.monotonic, sleep=time.sleep)
    first = await limiter.acquire(60)
    time.now += 10
    limiter.settle(first, 10)  # it used 10: 90 left in the window
    await limiter.acquire(80)
    assert time.slept == [] and limiter.tokens_in_window == 90
    await limiter.acquire(20)  # 110 > 100: until the 10 leave (at 1060)
    assert time.slept == [50.0] and limiter.tokens_in_window == 100


async def test_a_call_larger_than_the_token_limit_waits_for_an_empty_window():
    time = FakeTime()
    limiter = SlidingWindowRateLimiter(0, 100, monotonic=time.monotonic, sleep=time.sleep)
    await limiter.acquire(5)
    time.now += 30
    await limiter.acquire(500)
    assert time.slept == [30.0]  # the 5 left at 1060: then it goes alone
    limiter.settle(object(), 3)  # not one of its admissions: ignored


async def test_settling_a_call_that_left_the_window_changes_nothing():
    time = FakeTime()
    limiter = SlidingWindowRateLimiter(10, 100, monotonic=time.monotonic, sleep=time.sleep)
    late = await limiter.acquire(50)
    time.now += 61
    await limiter.acquire(30)
    limiter.settle(late, 5)
    assert limiter.tokens_in_window == 30


async def test_a_reply_using_less_than_its_worst_case_frees_tokens_at_once():
    limiter = SlidingWindowRateLimiter(0, 100)  # the real clock: a minute's wait otherwise
    first = await limiter.acquire(80)
    waiting = asyncio.ensure_future(limiter.acquire(50))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    limiter.settle(first, 10)
    await asyncio.wait_for(waiting, 1)
    assert limiter.tokens_in_window == 60


def test_calls_counted_for_the_shared_limits_are_kept_for_a_minute_only():
    """The Redis limiter records every call it lets through here too (its share
    during an outage): a day of calls must not pile up."""
    time = FakeTime()
    limiter = SlidingWindowRateLimiter(30, tokens_per_minute=1000, monotonic=time.monotonic, sleep=time.sleep)
    for _ in range(10_000):
        limiter.record(5)
        time.now += 1
    assert len(limiter._calls) <= 61 and limiter._tokens <= 61 * 5
