"""The rate limits shared by replicas through a real Redis (adapters/redis_rate_limiter.py):
several limiters on one Redis stand for several worker processes. A window of a
second stands for the minute."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
import redis

from adapters.otel_metrics import OtelMetrics
from adapters.redis_rate_limiter import RedisRateLimiter, share
from application.ports import RateLimitStatus

pytestmark = pytest.mark.integration

WINDOW = 1.0
PREFIX = "test:{limits}"


class Recorded:
    """Metrics: what the limiter reported of the shared limits."""

    def __init__(self) -> None:
        self.shared: list[bool] = []

    def shared_limits(self, *, up: bool) -> None:
        self.shared.append(up)


def limiter(url: str, per_minute: int = 0, tokens_per_minute: int = 0, **options) -> RedisRateLimiter:
    return RedisRateLimiter(
        url, per_minute, tokens_per_minute, prefix=PREFIX, window_seconds=WINDOW,
        **{"retry_after": 0.2, **options},
    )


async def timed(call) -> float:
    started = time.monotonic()
    await call
    return time.monotonic() - started


async def test_the_calls_of_all_replicas_count_against_one_window(redis_url):
    first, second = limiter(redis_url, per_minute=3), limiter(redis_url, per_minute=3)
    try:
        started = time.monotonic()
        await first.acquire()
        await second.acquire()
        await first.acquire()
        assert time.monotonic() - started < 0.3
        # The fourth call of the window, on either replica, waits for the first to leave it.
        assert 0.6 < await timed(second.acquire()) < 1.3
        assert time.monotonic() - started >= WINDOW - 0.02
    finally:
        await first.close()
        await second.close()


async def test_waiters_go_first_come_first_served_and_none_is_dropped(redis_url):
    one = limiter(redis_url, per_minute=2)
    try:
        served: list[int] = []

        async def call(n: int) -> None:
            await one.acquire()
            served.append(n)

        started = time.monotonic()
        await asyncio.gather(*(call(n) for n in range(5)))
        assert served == [0, 1, 2, 3, 4]
        assert 2 * WINDOW - 0.05 <= time.monotonic() - started < 2 * WINDOW + 0.8
    finally:
        await one.close()


async def test_tokens_count_the_estimate_until_the_reply_corrects_it(redis_url):
    first, second = limiter(redis_url, tokens_per_minute=100), limiter(redis_url, tokens_per_minute=100)
    client = redis.Redis.from_url(redis_url)
    try:
        admission = await first.acquire(60)
        assert int(client.get("test:{limits}:tokens")) == 60
        # 60 + 60 would be beyond 100: the other replica waits...
        waiting = asyncio.ensure_future(second.acquire(60))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        # ... until the reply says the call used 10: room now, not a minute later.
        first.settle(admission, 10)
        await first.settled()
        assert [m.decode().rsplit(":", 1)[1] for m in client.zrange("test:{limits}:calls", 0, 0)] == ["10"]
        await asyncio.wait_for(waiting, 0.8)  # it asks again every poll_seconds (0.5)
        assert int(client.get("test:{limits}:tokens")) == 70
        # 70 + 40 is beyond 100: wait until the 10 leave the window (the 60 stay).
        assert 0.3 < await timed(first.acquire(40)) < WINDOW + 0.3
        assert int(client.get("test:{limits}:tokens")) <= 100
    finally:
        client.close()
        await first.close()
        await second.close()


async def test_a_call_larger_than_the_limit_goes_once_the_window_is_empty(redis_url):
    one = limiter(redis_url, tokens_per_minute=100)
    try:
        assert await timed(one.acquire(500)) < 0.2  # nothing else in the window
        assert 0.7 < await timed(one.acquire(1)) < WINDOW + 0.3
    finally:
        await one.close()


async def test_the_providers_word_that_it_runs_low_paces_every_replica(redis_url):
    first, second = limiter(redis_url), limiter(redis_url)
    try:
        # 2 calls left of 100 for 1 s: one call every 0.5 s, whoever makes it.
        first.observe(RateLimitStatus(remaining_requests=2, limit_requests=100, reset_seconds=1.0))
        await first.settled()
        assert await timed(second.acquire()) < 0.2
        assert 0.35 < await timed(first.acquire()) < 0.7
        assert 0.35 < await timed(second.acquire()) < 0.7
        # Plenty left again: no pacing, on either.
        second.observe(RateLimitStatus(remaining_requests=90, limit_requests=100, reset_seconds=1.0))
        await second.settled()
        assert await timed(first.acquire()) < 0.2
    finally:
        await first.close()
        await second.close()


async def test_an_outage_falls_back_to_this_process_share_and_recovers(
    redis_url, redis_server, caplog
):
    caplog.set_level(logging.INFO, logger="adapters.redis_rate_limiter")
    metrics = Recorded()
    replicas = [limiter(redis_url, per_minute=30, metrics=metrics)] + [
        limiter(redis_url, per_minute=30) for _ in range(2)
    ]
    one = replicas[0]
    try:
        for replica in reversed(replicas):  # `one` last: it sees all three
            await replica.acquire()
        assert one.replicas == 3 and one.shared and metrics.shared == [True]
        redis_server.stop_for_outage()
        # Its share: 30 / 3 = 10 calls in the window, the one it made already included.
        started = time.monotonic()
        for _ in range(9):
            await one.acquire()
        assert time.monotonic() - started < 0.5, "an outage must not hang calls"
        assert not one.shared and metrics.shared == [True, False]
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(one.acquire(), 0.3)
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "1/3" in warnings[0].getMessage(), warnings

        redis_server.restart()
        await asyncio.sleep(0.3)  # past retry_after: the next call asks Redis again
        assert await timed(one.acquire()) < 0.3
        assert one.shared and metrics.shared == [True, False, True]
        infos = [r for r in caplog.records if r.levelno == logging.INFO]
        assert len(infos) == 1 and "hold again" in infos[0].getMessage()
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    finally:
        for replica in replicas:
            await replica.close()


async def test_a_hung_redis_costs_a_call_a_short_timeout_once(redis_url, redis_server):
    one = limiter(redis_url, per_minute=100, retry_after=30)
    try:
        await one.acquire()
        redis_server.hang()
        assert await timed(one.acquire()) < 1.5  # the timeout, then its share
        assert not one.shared
        assert await timed(one.acquire()) < 0.1  # not asked again before retry_after
        one.settle(await one.acquire(5), 3)  # nothing sent in an outage, nothing raised
        one.observe(RateLimitStatus(remaining_requests=1, limit_requests=100, reset_seconds=1.0))
        await one.settled()
    finally:
        redis_server.unhang()
        await one.close()


async def test_replicas_alive_are_counted_and_a_closed_one_leaves(redis_url):
    replicas = [limiter(redis_url, per_minute=10) for _ in range(3)]
    idle = limiter(redis_url, per_minute=10)
    idle.keep_alive()  # the worker's housekeeping: alive before any call
    await asyncio.sleep(0.2)
    assert idle.shared and idle.replicas == 1
    for replica in replicas:
        await replica.acquire()
    assert replicas[-1].replicas == 4
    await replicas[0].close()
    await idle.close()
    await replicas[2].acquire()
    assert replicas[2].replicas == 2
    for replica in replicas[1:]:
        await replica.close()
    assert share(10, 3) == 3 and share(2, 3) == 1 and share(0, 3) == 0


def test_the_metrics_say_whether_the_shared_limits_hold():
    metrics = OtelMetrics()
    assert b"chater_gpt_shared_limits_up" not in metrics.prometheus_text()[0]  # none set up
    metrics.shared_limits(up=True)
    metrics.shared_limits(up=False)
    metrics.shared_limits(up=False)
    text = metrics.prometheus_text()[0].decode()
    assert "chater_gpt_shared_limits_up 0.0" in text
    assert "chater_gpt_shared_limits_fallbacks_total 1.0" in text
    metrics.shared_limits(up=True)
    assert "chater_gpt_shared_limits_up 1.0" in metrics.prometheus_text()[0].decode()
    metrics.close()
