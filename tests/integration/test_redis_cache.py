"""The Redis response cache against a real, private redis-server: privacy and outages."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time

import pytest
import redis

from adapters.redis_cache import RedisResponseCache
from application.ports import ModelReply, RateLimitStatus

pytestmark = pytest.mark.integration

SECRET = "cache-test-secret"
SCOPE = "owner-7f3a9c"
DIGEST = "d1g3st" + "ab" * 29
REPLY = ModelReply(
    text="Your appointment with Dr. Quimby is on Tuesday",
    model="gpt-test-model",
    prompt_tokens=123,
    completion_tokens=45,
    finish_reason="length",
    cached_tokens=64,
    rate_limits=RateLimitStatus(remaining_requests=9, limit_requests=10),
)
KEPT = dataclasses.replace(REPLY, rate_limits=None)  # what a hit gives back


@pytest.fixture
async def make_cache(redis_url):
    """Builds caches on the test's Redis (keyword arguments go to the constructor)."""
    caches: list[RedisResponseCache] = []

    def make(**options) -> RedisResponseCache:
        cache = RedisResponseCache(redis_url, **{"secret_key": SECRET, **options})
        caches.append(cache)
        return cache

    yield make
    for cache in caches:
        await cache.close()


@pytest.fixture
def raw(redis_url):
    """A plain client, to see what Redis holds."""
    with redis.Redis.from_url(redis_url, socket_timeout=5) as client:
        yield client


async def test_a_reply_put_is_got_back_without_its_rate_limits(make_cache):
    cache = make_cache()
    assert await cache.get(SCOPE, DIGEST) is None
    await cache.put(SCOPE, DIGEST, REPLY, ttl=60)
    assert await cache.get(SCOPE, DIGEST) == KEPT


async def test_another_digest_or_scope_misses(make_cache):
    cache = make_cache()
    await cache.put(SCOPE, DIGEST, REPLY, ttl=60)
    assert await cache.get(SCOPE, "ff" * 32) is None
    assert await cache.get("global", DIGEST) is None
    assert await cache.get(SCOPE, DIGEST) == KEPT


async def test_an_entry_expires_after_its_ttl(make_cache, raw):
    cache = make_cache()
    await cache.put(SCOPE, DIGEST, REPLY, ttl=0.2)
    assert await cache.get(SCOPE, DIGEST) == KEPT
    await asyncio.sleep(0.4)
    assert await cache.get(SCOPE, DIGEST) is None
    assert raw.dbsize() == 0


async def test_a_tiny_ttl_is_still_a_valid_expiry(make_cache):
    cache = make_cache()
    await cache.put(SCOPE, DIGEST, REPLY, ttl=0.0001)  # below 1 ms: kept 1 ms
    await asyncio.sleep(0.05)
    assert await cache.get(SCOPE, DIGEST) is None
    # Redis took it (an invalid expiry would have been an error, and opened the breaker).
    await cache.put(SCOPE, "ee" * 32, REPLY, ttl=60)
    assert await cache.get(SCOPE, "ee" * 32) == KEPT


async def test_nothing_in_redis_reveals_the_reply_the_scope_or_the_call(make_cache, raw):
    cache = make_cache()
    await cache.put(SCOPE, DIGEST, REPLY, ttl=60)
    await cache.put("global", DIGEST, REPLY, ttl=60)
    keys = list(raw.scan_iter(match="*"))
    assert len(keys) == 2
    values = [raw.get(key) for key in keys]
    assert values[0][:12] != values[1][:12]  # a fresh nonce for each entry
    secrets = [
        REPLY.text, "Dr. Quimby", REPLY.model, SCOPE, "global", DIGEST, DIGEST[:16],
        "prompt_tokens", "length",
    ]
    for blob in keys + values:
        for secret in secrets:
            assert secret.encode() not in blob
    for key in keys:
        assert re.fullmatch(rb"chater-gpt:cache:[0-9a-f]{32}:[0-9a-f]{64}", key)


async def test_another_secret_cannot_read_an_entry(make_cache):
    await make_cache().put(SCOPE, DIGEST, REPLY, ttl=60)
    assert await make_cache(secret_key="another-secret").get(SCOPE, DIGEST) is None
    assert await make_cache().get(SCOPE, DIGEST) == KEPT


async def test_a_corrupted_value_is_a_miss_and_is_dropped(make_cache, raw):
    cache = make_cache()
    await cache.put(SCOPE, DIGEST, REPLY, ttl=60)
    [key] = raw.keys("*")
    value = raw.get(key)
    raw.set(key, value[:-1] + bytes([value[-1] ^ 1]))
    assert await cache.get(SCOPE, DIGEST) is None
    assert raw.exists(key) == 0
    raw.set(key, b"short")
    assert await cache.get(SCOPE, DIGEST) is None
    assert raw.exists(key) == 0


async def test_a_value_moved_to_another_calls_key_does_not_open(make_cache, raw):
    cache = make_cache()
    other = "ee" * 32
    await cache.put(SCOPE, DIGEST, REPLY, ttl=60)
    [first] = raw.keys("*")
    await cache.put(SCOPE, other, dataclasses.replace(REPLY, text="other"), ttl=60)
    [second] = set(raw.keys("*")) - {first}
    first_value, second_value = raw.get(first), raw.get(second)
    raw.set(first, second_value)
    raw.set(second, first_value)
    assert await cache.get(SCOPE, DIGEST) is None
    assert await cache.get(SCOPE, other) is None


async def test_forget_drops_only_that_scopes_entries(make_cache, raw):
    cache = make_cache()
    for n in range(3):
        await cache.put("alice", f"{n:064x}", REPLY, ttl=60)
    for n in range(2):
        await cache.put("bob", f"{n:064x}", REPLY, ttl=60)
    assert await cache.forget("alice") == 3
    assert raw.dbsize() == 2
    for n in range(3):
        assert await cache.get("alice", f"{n:064x}") is None
    for n in range(2):
        assert await cache.get("bob", f"{n:064x}") == KEPT
    assert await cache.forget("alice") == 0
    assert await cache.forget("nobody") == 0


async def test_forget_goes_through_many_batches(make_cache, raw):
    # Generous timeouts: this is about batching, and a put that times out on a loaded
    # machine is (rightly) swallowed as a miss, which would leave fewer keys to forget.
    cache = make_cache(socket_timeout=5.0)
    raw.mset({f"chater-gpt:cache:other:{n}": b"x" for n in range(50)})
    for start in range(0, 1200, 100):  # a hundred at a time, as a busy worker would
        await asyncio.gather(*(
            cache.put("alice", f"{n:064x}", REPLY, ttl=60) for n in range(start, start + 100)
        ))
    assert raw.dbsize() == 1250
    assert await cache.forget("alice") == 1200
    assert raw.dbsize() == 50


async def test_an_outage_is_a_miss_then_skipped_then_over(make_cache, redis_server, caplog):
    caplog.set_level(logging.INFO, logger="adapters.redis_cache")
    cache = make_cache(retry_after=1.0)
    await cache.put(SCOPE, DIGEST, REPLY, ttl=60)
    redis_server.stop_for_outage()

    started = time.monotonic()
    assert await cache.get(SCOPE, DIGEST) is None
    assert time.monotonic() - started < 0.5
    failed_at = time.monotonic()
    fresh = make_cache(retry_after=1.0)  # a cache that has not failed yet: put and forget try
    await fresh.put(SCOPE, DIGEST, REPLY, ttl=60)
    assert await fresh.forget(SCOPE) == 0

    # Redis is back, and holds an entry, but within the window the cache does not even try.
    redis_server.restart()
    healthy = make_cache()
    await healthy.put(SCOPE, DIGEST, REPLY, ttl=60)
    assert await healthy.get(SCOPE, DIGEST) == KEPT
    started = time.monotonic()
    assert await cache.get(SCOPE, DIGEST) is None
    await cache.put(SCOPE, "ee" * 32, REPLY, ttl=60)
    assert await cache.forget(SCOPE) == 0
    assert time.monotonic() - started < 0.05
    assert await healthy.get(SCOPE, "ee" * 32) is None  # that put never reached Redis
    assert time.monotonic() - failed_at < 1.0, "the checks above must run within the window"

    await asyncio.sleep(1.0 - (time.monotonic() - failed_at) + 0.1)
    assert await cache.get(SCOPE, DIGEST) == KEPT
    await cache.put(SCOPE, "ee" * 32, REPLY, ttl=60)
    assert await cache.get(SCOPE, "ee" * 32) == KEPT

    records = [r for r in caplog.records if r.name == "adapters.redis_cache"]
    levels = [r.levelno for r in records]
    # Two caches failed (one warning each, however often they were called); `cache` came back.
    assert levels.count(logging.WARNING) == 2
    assert levels.count(logging.INFO) == 1
    assert all(SCOPE not in r.getMessage() and DIGEST not in r.getMessage() for r in records)


async def test_a_hung_server_costs_one_socket_timeout_then_nothing(make_cache, redis_server):
    cache = make_cache(socket_timeout=0.25, retry_after=1.0)
    await cache.put(SCOPE, DIGEST, REPLY, ttl=60)  # a pooled, open connection
    fresh = make_cache(socket_timeout=0.25, retry_after=1.0)  # none yet
    redis_server.hang()

    for each in (cache, fresh):
        started = time.monotonic()
        assert await each.get(SCOPE, DIGEST) is None
        assert 0.2 < time.monotonic() - started < 0.8

    started = time.monotonic()
    for _ in range(10):
        assert await cache.get(SCOPE, DIGEST) is None
        await cache.put(SCOPE, DIGEST, REPLY, ttl=60)
    assert time.monotonic() - started < 0.05

    redis_server.unhang()
    await asyncio.sleep(1.1)
    assert await cache.get(SCOPE, DIGEST) == KEPT


async def test_close_is_quiet_even_when_redis_is_gone(make_cache, redis_server):
    cache = make_cache()
    await cache.put(SCOPE, DIGEST, REPLY, ttl=60)
    redis_server.stop_for_outage()
    await cache.close()
