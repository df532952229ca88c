"""ModelSlots: priority order with aging, the concurrency bound, and cancellation."""

import asyncio

import pytest

from application.model_slots import ModelSlots
from application.ports import RateLimitStatus


class GateLimiter:
    """A rate limiter that lets one call through each time the test says so."""

    def __init__(self) -> None:
        self.pending: list[asyncio.Future[None]] = []
        self.granted = 0
        self.most_waiting = 0

    async def acquire(self, tokens: int = 0) -> None:
        future = asyncio.get_running_loop().create_future()
        self.pending.append(future)
        self.most_waiting = max(self.most_waiting, len(self.pending))
        try:
            await future
        finally:
            self.pending.remove(future)
        self.granted += 1

    def allow(self) -> None:
        self.pending[0].set_result(None)

    def observe(self, status: RateLimitStatus) -> None:
        pass

    def settle(self, admission: object, tokens: int) -> None:
        pass


class OpenLimiter:
    """Lets everyone through at once."""

    def __init__(self) -> None:
        self.calls = 0

    async def acquire(self, tokens: int = 0) -> None:
        self.calls += 1

    def observe(self, status: RateLimitStatus) -> None:
        pass

    def settle(self, admission: object, tokens: int) -> None:
        pass


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


class Harness:
    """Starts requests that record when they get into the body, and hold it
    until released (or return at once)."""

    def __init__(self, slots: ModelSlots) -> None:
        self.slots = slots
        self.entered: list[str] = []
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.inside = 0
        self.most_inside = 0
        self.hold: asyncio.Event | None = None

    async def start(self, name: str, priority: int = 0, since: float | None = None) -> asyncio.Task[None]:
        async def request() -> None:
            async with self.slots.slot(priority, since=since):
                self.entered.append(name)
                self.inside += 1
                self.most_inside = max(self.most_inside, self.inside)
                try:
                    if self.hold is not None:
                        await self.hold.wait()
                    else:
                        await asyncio.sleep(0)
                finally:
                    self.inside -= 1

        task = asyncio.create_task(request(), name=name)
        self.tasks[name] = task
        await settle()
        return task

    async def allow_all(self, limiter: GateLimiter, count: int) -> None:
        for _ in range(count):
            await settle()
            limiter.allow()
        await settle()


async def test_high_priority_waiters_go_before_low_ones():
    limiter = GateLimiter()
    slots = ModelSlots(limiter, monotonic=FakeClock())
    run = Harness(slots)
    await run.start("first", 0)  # the head, waiting in the rate limiter
    await run.start("low", 0)
    await run.start("high", 5)
    await run.start("middle", 2)
    await run.start("lowest", -1)
    assert slots.waiting == 5 and len(limiter.pending) == 1

    await run.allow_all(limiter, 5)
    assert run.entered == ["first", "high", "middle", "low", "lowest"]
    assert slots.waiting == slots.in_use == 0


async def test_equal_priorities_go_first_come_first_served():
    limiter = GateLimiter()
    slots = ModelSlots(limiter, monotonic=FakeClock())
    run = Harness(slots)
    names = [f"r{n}" for n in range(8)]
    for name in names:
        await run.start(name, 1)
    await run.allow_all(limiter, len(names))
    assert run.entered == names


async def test_equals_go_in_the_order_their_records_were_produced_not_fetched():
    """Records of different conversations come from different partitions of the
    repartition topic in any order: "first come" is when each was produced."""
    import time

    limiter = GateLimiter()
    slots = ModelSlots(limiter, monotonic=FakeClock())
    run = Harness(slots)
    now = time.time()
    await run.start("head", 0, since=now - 10)
    for name, produced in [("third", now - 1), ("first", now - 3), ("second", now - 2)]:
        await run.start(name, 0, since=produced)
    await run.allow_all(limiter, 4)
    assert run.entered == ["head", "first", "second", "third"]


async def test_a_high_priority_arrival_goes_next_past_many_low_ones_waiting_for_the_limiter():
    limiter = GateLimiter()
    slots = ModelSlots(limiter, monotonic=FakeClock())
    run = Harness(slots)
    for n in range(5):
        await run.start(f"low{n}", 0)
    await run.allow_all(limiter, 2)  # low0 and low1 in; low2 is now the head, asking
    await run.start("urgent", 3)
    await run.allow_all(limiter, 4)
    # The head keeps its place in the limiter; "urgent" is the very next.
    assert run.entered == ["low0", "low1", "low2", "urgent", "low3", "low4"]
    # Only the head ever waits in the rate limiter.
    assert limiter.most_waiting == 1


async def test_aging_lets_a_long_waiting_low_request_go_before_a_fresh_high_one():
    clock = FakeClock()
    limiter = GateLimiter()
    slots = ModelSlots(limiter, aging_seconds=30.0, monotonic=clock)
    run = Harness(slots)
    await run.start("head", 0)
    await run.start("old-low", 0)
    clock.now += 61  # old-low: 0 + 61/30 = 2.03 by now
    await run.start("new-high", 2)
    await run.allow_all(limiter, 3)
    assert run.entered == ["head", "old-low", "new-high"]


async def test_without_enough_waiting_the_higher_priority_still_goes_first():
    clock = FakeClock()
    limiter = GateLimiter()
    slots = ModelSlots(limiter, aging_seconds=30.0, monotonic=clock)
    run = Harness(slots)
    await run.start("head", 0)
    await run.start("old-low", 0)
    clock.now += 59  # old-low: 0 + 59/30 = 1.97 < 2
    await run.start("new-high", 2)
    await run.allow_all(limiter, 3)
    assert run.entered == ["head", "new-high", "old-low"]


async def test_the_concurrency_bound_is_never_exceeded():
    slots = ModelSlots(OpenLimiter(), concurrency=3, monotonic=FakeClock())
    run = Harness(slots)
    run.hold = asyncio.Event()
    for n in range(10):
        await run.start(f"r{n}", n % 3)
    assert slots.in_use == 3 and slots.waiting == 7 and run.inside == 3
    # Let them out one by one, each freeing a slot for the next.
    run.hold.set()
    await asyncio.gather(*run.tasks.values())
    assert run.most_inside == 3
    assert sorted(run.entered) == sorted(run.tasks)
    assert slots.in_use == slots.waiting == 0


async def test_the_concurrency_bound_holds_with_the_body_yielding_many_times():
    slots = ModelSlots(OpenLimiter(), concurrency=2, monotonic=FakeClock())
    inside = most = 0

    async def request(n: int) -> None:
        nonlocal inside, most
        async with slots.slot(n % 4):
            inside += 1
            most = max(most, inside)
            for _ in range(n % 5 + 1):
                await asyncio.sleep(0)
            inside -= 1

    await asyncio.gather(*(request(n) for n in range(40)))
    assert most == 2
    assert slots.in_use == slots.waiting == 0


async def test_a_cancelled_waiter_leaves_the_order_and_loses_nothing():
    limiter = GateLimiter()
    slots = ModelSlots(limiter, concurrency=1, monotonic=FakeClock())
    run = Harness(slots)
    await run.start("head", 0)
    await run.start("a", 1)
    gone = await run.start("b", 3)
    await run.start("c", 0)
    gone.cancel()
    await settle()
    assert gone.cancelled() and slots.waiting == 3

    await run.allow_all(limiter, 3)
    await asyncio.gather(*(task for name, task in run.tasks.items() if name != "b"))
    assert run.entered == ["head", "a", "c"]
    assert limiter.granted == 3 and not limiter.pending
    assert slots.in_use == slots.waiting == 0


async def test_the_head_cancelled_inside_the_rate_limiter_hands_over_to_the_next():
    limiter = GateLimiter()
    slots = ModelSlots(limiter, concurrency=1, monotonic=FakeClock())
    run = Harness(slots)
    head = await run.start("head", 5)
    await run.start("a", 1)
    await run.start("b", 0)
    assert len(limiter.pending) == 1  # the head, inside acquire
    head.cancel()
    await settle()
    assert head.cancelled()
    assert len(limiter.pending) == 1  # "a" has become the head and asks in turn

    await run.allow_all(limiter, 2)
    assert run.entered == ["a", "b"]
    assert slots.in_use == slots.waiting == 0


async def test_the_head_cancelled_while_waiting_for_a_free_slot_hands_over_too():
    limiter = OpenLimiter()
    slots = ModelSlots(limiter, concurrency=1, monotonic=FakeClock())
    run = Harness(slots)
    run.hold = asyncio.Event()
    await run.start("holder", 0)
    head = await run.start("head", 0)
    await run.start("next", 0)
    assert slots.in_use == 1 and slots.waiting == 2
    head.cancel()
    await settle()
    run.hold.set()
    await asyncio.gather(run.tasks["holder"], run.tasks["next"])
    assert run.entered == ["holder", "next"]
    assert limiter.calls == 2
    assert slots.in_use == slots.waiting == 0


async def test_a_waiter_cancelled_just_as_its_turn_came_hands_over_too():
    limiter = GateLimiter()
    slots = ModelSlots(limiter, monotonic=FakeClock())
    entered: list[str] = []
    tasks: dict[str, asyncio.Task[None]] = {}

    async def request(name: str) -> None:
        async with slots.slot():
            entered.append(name)
            if name == "first":
                # Entering made "victim" the head; it is cancelled before it runs.
                tasks["victim"].cancel()

    for name in ("first", "victim", "last"):
        tasks[name] = asyncio.create_task(request(name))
        await settle()
    limiter.allow()
    await settle()
    assert tasks["victim"].cancelled()
    assert len(limiter.pending) == 1  # "last" is the head now, asking the limiter
    limiter.allow()
    await asyncio.gather(tasks["first"], tasks["last"])
    assert entered == ["first", "last"]
    assert slots.in_use == slots.waiting == 0


async def test_a_waiter_cancelled_just_before_the_head_moves_on_is_skipped():
    limiter = GateLimiter()
    slots = ModelSlots(limiter, monotonic=FakeClock())
    run = Harness(slots)
    await run.start("head")
    victim = await run.start("victim", 1)
    await run.start("last")
    # In one step: the head is let through, then the next in line is cancelled;
    # the head moves on before the cancelled task has had a chance to run.
    limiter.allow()
    victim.cancel()
    await run.allow_all(limiter, 1)
    await asyncio.gather(run.tasks["head"], run.tasks["last"])
    assert victim.cancelled()
    assert run.entered == ["head", "last"]
    assert slots.in_use == slots.waiting == 0


async def test_a_failing_body_gives_its_slot_back():
    slots = ModelSlots(OpenLimiter(), concurrency=1, monotonic=FakeClock())
    with pytest.raises(RuntimeError):
        async with slots.slot():
            assert slots.in_use == 1
            raise RuntimeError("model call failed")
    assert slots.in_use == 0
    async with slots.slot():
        assert slots.in_use == 1


async def test_a_failing_rate_limiter_passes_the_turn_on():
    class Flaky(OpenLimiter):
        async def acquire(self, tokens: int = 0) -> None:
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("limiter broke")

    slots = ModelSlots(Flaky(), concurrency=1, monotonic=FakeClock())
    with pytest.raises(RuntimeError):
        async with slots.slot():
            pass
    assert slots.in_use == slots.waiting == 0
    async with slots.slot():
        assert slots.in_use == 1


async def test_without_a_concurrency_limit_everyone_proceeds_at_once():
    limiter = OpenLimiter()
    slots = ModelSlots(limiter, concurrency=0, monotonic=FakeClock())
    run = Harness(slots)
    run.hold = asyncio.Event()
    for n in range(25):
        await run.start(f"r{n}", n % 4)
    assert run.inside == slots.in_use == 25 and slots.waiting == 0
    run.hold.set()
    await asyncio.gather(*run.tasks.values())
    assert limiter.calls == 25
    assert slots.in_use == 0


async def test_many_cancelled_waiters_are_dropped_and_the_rest_still_pass():
    limiter = GateLimiter()
    slots = ModelSlots(limiter, monotonic=FakeClock())
    run = Harness(slots)
    await run.start("head")
    for n in range(150):
        await run.start(f"w{n}", n % 3)
    for n in range(150):
        if n % 10:
            run.tasks[f"w{n}"].cancel()
    await settle()
    assert slots.waiting == 16
    # The cancelled ones do not pile up in the order either.
    assert len(slots._heap) < 100
    await run.allow_all(limiter, 16)
    kept = [f"w{n}" for n in range(150) if n % 10 == 0]
    assert sorted(run.entered) == sorted(["head", *kept])
    assert slots.in_use == slots.waiting == 0


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        ModelSlots(OpenLimiter(), concurrency=-1)
    with pytest.raises(ValueError):
        ModelSlots(OpenLimiter(), aging_seconds=0)


async def test_a_call_counts_its_worst_case_until_its_reply_settles_it():
    from application.model_slots import admit
    from application.ports import ModelCall, ModelReply
    from tests.unit.fakes import CountingLimiter

    limiter = CountingLimiter()
    slots = ModelSlots(limiter, monotonic=FakeClock())
    call = ModelCall("gpt-4o-mini", [], max_tokens=100, temperature=0.0)
    call.progress.tokens = 150
    async with slots.slot(0, call):
        pass
    await admit(limiter, call)  # a retry: its own admission, the same worst case
    slots.settle(call, ModelReply("hi", "gpt-4o-mini", prompt_tokens=40, completion_tokens=2))
    assert limiter.tokens == [150, 150]
    assert limiter.settled == {1: 42}  # the attempt that answered
