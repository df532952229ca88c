"""RateLimiter port shared by every replica through Redis: REQUESTS_PER_MINUTE and
TOKENS_PER_MINUTE hold for all worker processes together, and the provider's
word that its own limits run low slows every one of them.

One Lua script decides each admission atomically, on Redis's clock (so the
replicas' clocks do not matter):

* ``{prefix}:calls``, a sorted set: one member per call let through in the
  window, scored by its time in ms, named ``replica:sequence:tokens`` (the tokens
  it counts for: its worst case, then what it used, see `settle`);
* ``{prefix}:tokens``: the sum of those tokens, kept as members come and go;
* ``{prefix}:pace``, a hash: the spacing between calls the provider's headers ask
  for, until when, and when the next call may go (`observe`);
* ``{prefix}:replicas``, a sorted set: the processes alive, by their last heartbeat.

The script drops what left the window, and either counts the call (returning 0)
or says how many ms to wait: until enough calls leave the window for one more
(and its tokens), and until the next paced call is due. Callers wait, first come
first served in this process; nothing is refused. Waiting for tokens, the first
waiter asks again every `poll_seconds` (replies elsewhere free tokens as they
settle), and at once when a reply in this process freed some. `settle` replaces a call's
estimate by what it used (another script: the member is renamed, the sum
corrected); it and `observe` run in the background and never hold a call up.

A Redis outage is never an error: each process falls back to its own share of the
limits (the limit divided by the replicas alive when it last saw Redis), logs one
WARNING when that starts and one INFO when it ends, reports it through
`Metrics.shared_limits`, and tries Redis again every `retry_after` seconds (the
heartbeat does too). Calls of this process stay counted in its own window all
along, so the calls it made just before the outage count against its share.
After an outage the calls made meanwhile are not in Redis: for up to a minute
the replicas together may go beyond the limit by what they made during it.
Every Redis call has a short timeout, so a hung server does not hang calls.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from adapters.rate_limiter import Admission, SlidingWindowRateLimiter, pacing_of
from application.ports import Metrics, RateLimitStatus

log = logging.getLogger(__name__)

_FAILURES = (RedisError, OSError)  # OSError covers ConnectionError and TimeoutError

_NOW = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""

_BEAT = """
redis.call('ZADD', KEYS[4], now, ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - tonumber(ARGV[7]))
redis.call('PEXPIRE', KEYS[4], tonumber(ARGV[7]))
local replicas = redis.call('ZCARD', KEYS[4])
"""

# KEYS: calls, tokens, pace, replicas. ARGV: window ms, requests per window, tokens
# per window (0: no limit), member, tokens of the call, replica id, ms a replica
# stays alive after its last beat. Returns {1 admitted | 0, ms to wait, replicas}.
_ACQUIRE = _NOW + _BEAT + """
local window = tonumber(ARGV[1])
local per_window = tonumber(ARGV[2])
local tokens_per_window = tonumber(ARGV[3])
local tokens = tonumber(ARGV[5])
local function weight(member)
  return tonumber(string.match(member, ':(%-?%d+)$')) or 0
end

local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - window)
if #gone > 0 then
  local freed = 0
  for _, member in ipairs(gone) do freed = freed + weight(member) end
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  redis.call('DECRBY', KEYS[2], freed)
end
local count = redis.call('ZCARD', KEYS[1])
local total = 0
if count == 0 then
  redis.call('DEL', KEYS[2])
else
  total = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), 0)
end

local wait = 0
local pace = redis.call('HMGET', KEYS[3], 'spacing', 'until', 'next')
local spacing = tonumber(pace[1]) or 0
local paced = spacing > 0 and now < (tonumber(pace[2]) or 0)
if paced then wait = math.max(wait, (tonumber(pace[3]) or 0) - now) end
if per_window > 0 and count >= per_window then
  local oldest = redis.call('ZRANGE', KEYS[1], count - per_window, count - per_window, 'WITHSCORES')
  wait = math.max(wait, tonumber(oldest[2]) + window - now)
end
if tokens_per_window > 0 and total > 0 and total + tokens > tokens_per_window then
  local left = total
  local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
  for i = 1, #entries, 2 do
    left = left - weight(entries[i])
    if left <= 0 or left + tokens <= tokens_per_window then
      wait = math.max(wait, tonumber(entries[i + 1]) + window - now)
      break
    end
  end
end
if wait > 0 then return {0, math.ceil(wait), replicas} end

redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('INCRBY', KEYS[2], tokens)
redis.call('PEXPIRE', KEYS[1], window * 2)
redis.call('PEXPIRE', KEYS[2], window * 2)
if paced then redis.call('HSET', KEYS[3], 'next', now + spacing) end
return {1, 0, replicas}
"""

# KEYS: calls, tokens, pace, replicas. ARGV: as _ACQUIRE's (only 6 and 7 used).
_HEARTBEAT = _NOW + _BEAT + "return replicas\n"

# KEYS: calls, tokens. ARGV: the member, its new name, the change of its tokens.
_SETTLE = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], score, ARGV[2])
redis.call('INCRBY', KEYS[2], tonumber(ARGV[3]))
return 1
"""

# KEYS: pace. ARGV: ms between calls (0: no pacing), for how many ms, window ms.
_OBSERVE = _NOW + """
local spacing = tonumber(ARGV[1])
if spacing <= 0 then
  if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'spacing', 0) end
  return 0
end
redis.call('HSET', KEYS[1], 'spacing', spacing, 'until', now + tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) + tonumber(ARGV[3]))
return 1
"""


def share(limit: int, replicas: int) -> int:
    """One replica's share of a limit (0: no limit); never 0 for a limit that is set."""
    return 0 if limit <= 0 else max(limit // max(replicas, 1), 1)


@dataclass
class SharedAdmission:
    """A call let through: its member in Redis (None: admitted by this process's
    share during an outage) and its entry in this process's own window."""

    member: str | None
    tokens: int
    local: Admission


class RedisRateLimiter:
    """The limits held for all replicas together (see the module's docstring)."""

    def __init__(
        self,
        url: str,
        per_minute: int,
        tokens_per_minute: int = 0,
        *,
        prefix: str = "chater-gpt:{limits}",
        metrics: Metrics | None = None,
        window_seconds: float = 60.0,
        socket_timeout: float = 0.25,
        retry_after: float = 5.0,
        heartbeat_seconds: float = 10.0,
        poll_seconds: float = 0.5,
        replica_id: str | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.per_minute = per_minute
        self.tokens_per_minute = tokens_per_minute
        self.replica_id = replica_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._window_ms = max(int(window_seconds * 1000), 1)
        self._alive_ms = int(3 * heartbeat_seconds * 1000)  # three beats missed: gone
        self._heartbeat_seconds = heartbeat_seconds
        self._poll_seconds = poll_seconds
        self._retry_after = retry_after
        self._call_timeout = max(4 * socket_timeout, 1.0)
        self._metrics = metrics
        self._monotonic = monotonic
        self._sleep = sleep
        # The keys share a hash tag: one slot, so the scripts also run on a cluster.
        self._keys = [f"{prefix}:{name}" for name in ("calls", "tokens", "pace", "replicas")]
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=16,
            timeout=self._call_timeout,
            socket_connect_timeout=socket_timeout,
            socket_timeout=socket_timeout,
            retry=Retry(NoBackoff(), 0),  # the fallback decides when to try again
        )
        self._redis = aioredis.Redis.from_pool(pool)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._beat = self._redis.register_script(_HEARTBEAT)
        self._settle = self._redis.register_script(_SETTLE)
        self._observe = self._redis.register_script(_OBSERVE)
        # This process's own window: every call it lets through, and its share of
        # the limits during an outage (until Redis says otherwise: all of them).
        self._local = SlidingWindowRateLimiter(
            per_minute, tokens_per_minute, window_seconds, monotonic=monotonic, sleep=sleep
        )
        self.replicas = 1  # alive when Redis last answered, this process included
        self._sequence = itertools.count()
        self._lock = asyncio.Lock()
        self._up: bool | None = None  # None until Redis first answered or failed
        self._retry_at = 0.0  # monotonic time before which Redis is not tried (outage)
        self._heartbeat: asyncio.Task[None] | None = None
        self._background: set[asyncio.Future[Any]] = set()

    @property
    def shared(self) -> bool:
        """Whether the limits shared in Redis hold now (not this process's share)."""
        return self._up is not False

    # The port -------------------------------------------------------------------------

    async def acquire(self, tokens: int = 0) -> SharedAdmission:
        tokens = max(int(tokens), 0)
        async with self._lock:
            self._start_heartbeat()
            while True:
                if self._redis_due():
                    member = f"{self.replica_id}:{next(self._sequence)}:{tokens}"
                    try:
                        async with asyncio.timeout(self._call_timeout):
                            admitted, wait_ms, replicas = await self._acquire(
                                keys=self._keys, args=[*self._limit_args(), member, tokens,
                                                       self.replica_id, self._alive_ms],
                            )
                    except _FAILURES as error:
                        self._went_down(error)
                    else:
                        self._is_up(int(replicas))
                        if int(admitted):
                            return SharedAdmission(member, tokens, self._local.record(tokens))
                        wait = int(wait_ms) / 1000
                        if self.tokens_per_minute > 0:
                            # Replies of other replicas may free tokens any moment.
                            wait = min(wait, self._poll_seconds)
                        await self._local.wait(wait)  # or until a reply here freed tokens
                        continue
                # An outage: this process's share, asking Redis again when it is due.
                local = self._local.try_acquire(tokens)
                if isinstance(local, Admission):
                    return SharedAdmission(None, tokens, local)
                await self._local.wait(min(local, max(self._retry_at - self._monotonic(), 0.01)))

    def settle(self, admission: object, tokens: int) -> None:
        if not isinstance(admission, SharedAdmission):
            return
        tokens = max(int(tokens), 0)
        self._local.settle(admission.local, tokens)
        if admission.member is None or tokens == admission.tokens:
            return
        renamed = f"{admission.member.rsplit(':', 1)[0]}:{tokens}"
        freed = tokens < admission.tokens
        self._in_background(self._settle(
            keys=self._keys[:2], args=[admission.member, renamed, tokens - admission.tokens]
        ), then=self._local.wake if freed else None)
        admission.member, admission.tokens = renamed, tokens

    def observe(self, status: RateLimitStatus) -> None:
        self._local.observe(status)  # paces this process's share in an outage
        pacing = pacing_of(status)
        if pacing is None:
            return
        spacing, lasts = pacing
        self._in_background(self._observe(
            keys=self._keys[2:3],
            args=[round(spacing * 1000), round(lasts * 1000), self._window_ms],
        ))

    def keep_alive(self) -> None:
        """Keep the heartbeat going (from the worker's housekeeping): a replica with no
        calls yet counts among the replicas too."""
        self._start_heartbeat()

    async def settled(self) -> None:
        """Wait for the corrections and pacing sent to Redis in the background."""
        while self._background:
            await asyncio.wait(set(self._background))

    async def close(self) -> None:
        """Stop the heartbeat, leave the replicas, and close the connections."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        if self._background:
            await asyncio.wait(set(self._background), timeout=self._call_timeout)
        if self._up:
            try:
                async with asyncio.timeout(self._call_timeout):
                    await self._redis.zrem(self._keys[3], self.replica_id)
            except _FAILURES:
                pass
        await self._redis.aclose()

    # Outages ---------------------------------------------------------------------------

    def _limit_args(self) -> list[int]:
        window_ms = self._window_ms
        return [window_ms, max(self.per_minute, 0), max(self.tokens_per_minute, 0)]

    def _redis_due(self) -> bool:
        return self._up is not False or self._monotonic() >= self._retry_at

    def _went_down(self, error: BaseException) -> None:
        self._retry_at = self._monotonic() + self._retry_after
        if self._up is False:
            return
        self._up = False
        self._local.per_minute = share(self.per_minute, self.replicas)
        self._local.tokens_per_minute = share(self.tokens_per_minute, self.replicas)
        log.warning(
            "the limits shared by the replicas (Redis) cannot be reached (%s): this process "
            "holds its own share, 1/%d of them (%d requests, %d tokens per minute; 0: none)",
            type(error).__name__, self.replicas, self._local.per_minute,
            self._local.tokens_per_minute,
        )
        if self._metrics is not None:
            self._metrics.shared_limits(up=False)

    def _is_up(self, replicas: int) -> None:
        self.replicas = max(replicas, 1)
        if self._up:
            return
        if self._up is False:
            log.info("the limits shared by the replicas (Redis) hold again")
        self._up = True
        self._local.per_minute = self.per_minute
        self._local.tokens_per_minute = self.tokens_per_minute
        if self._metrics is not None:
            self._metrics.shared_limits(up=True)

    # In the background ---------------------------------------------------------------

    def _in_background(
        self, call: Coroutine[Any, Any, Any], then: Callable[[], None] | None = None
    ) -> None:
        """Send a correction to Redis without holding anyone up (skipped in an outage);
        `then` once it is done."""
        if not self.shared:
            call.close()
            return
        try:
            task = asyncio.ensure_future(self._quietly(call, then))
        except RuntimeError:  # no running loop
            call.close()
            return
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _quietly(
        self, call: Coroutine[Any, Any, Any], then: Callable[[], None] | None
    ) -> None:
        try:
            async with asyncio.timeout(self._call_timeout):
                await call
        except _FAILURES as error:
            self._went_down(error)
        if then is not None:
            then()

    def _start_heartbeat(self) -> None:
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.ensure_future(self._beating())

    async def _beating(self) -> None:
        """Say this process is alive, so that the others count it in their shares;
        in an outage, this is also what notices that Redis is back."""
        while True:
            if not self._redis_due():
                await asyncio.sleep(self._heartbeat_seconds)
                continue
            try:
                async with asyncio.timeout(self._call_timeout):
                    replicas = await self._beat(
                        keys=self._keys, args=[*self._limit_args(), "", 0, self.replica_id,
                                               self._alive_ms],
                    )
            except _FAILURES as error:
                self._went_down(error)
            else:
                self._is_up(int(replicas))
            await asyncio.sleep(self._heartbeat_seconds)
