"""RateLimiter port in this process: at most N model calls and T tokens (prompt +
completion) in any sliding minute, and slower when the provider says its own
limits are running low. With REDIS_URL set, adapters/redis_rate_limiter.py holds
the same limits for all replicas together (and uses this one for its share
during a Redis outage)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from application.ports import RateLimitStatus

# Below this share of the provider's limit left, calls are spread over the time
# until its reset instead of spending the rest at once and meeting 429s.
LOW_WATER = 0.2
MAX_SPACING = 5.0  # slower, never stopped: the provider's 429s and Retry-After do the rest


def pacing_of(status: RateLimitStatus) -> tuple[float, float] | None:
    """(seconds between calls, for how many seconds) the provider's account of its
    limits asks for: spacing 0 when plenty is left; None when it says nothing usable."""
    share = status.remaining_fraction()
    if share is None or status.reset_seconds is None:
        return None
    if share >= LOW_WATER:
        return 0.0, 0.0
    left = max(status.remaining_calls() or 1, 1)
    return min(status.reset_seconds / left, MAX_SPACING), status.reset_seconds


@dataclass
class Admission:
    """One call let through: when, and the tokens it counts for (its estimate,
    then what it used)."""

    at: float
    tokens: int
    counted: bool = True  # still inside the window


class SlidingWindowRateLimiter:
    """Callers wait (first come, first served) rather than being refused.

    A call counts its worst case in tokens (`acquire(tokens)`) until `settle`
    corrects it to what the call used. A single call larger than the tokens per
    minute is let through once the window holds nothing else (it could never
    fit otherwise)."""

    def __init__(
        self,
        per_minute: int,
        tokens_per_minute: int = 0,
        window_seconds: float = 60.0,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.per_minute = per_minute
        self.tokens_per_minute = tokens_per_minute
        self.window = window_seconds
        self._monotonic = monotonic
        self._sleep = sleep
        self._calls: deque[Admission] = deque()
        self._tokens = 0  # the sum of the tokens of `_calls`
        self._lock = asyncio.Lock()
        self._freed = asyncio.Event()  # a settled call counts for fewer tokens now
        self._spacing = 0.0  # seconds between calls while the provider runs low
        self._spacing_until = 0.0
        self._next_call = 0.0

    @property
    def tokens_in_window(self) -> int:
        self._expire(self._monotonic())
        return self._tokens

    def observe(self, status: RateLimitStatus) -> None:
        pacing = pacing_of(status)
        if pacing is None:
            return
        spacing, lasts = pacing
        self._spacing = spacing
        if spacing:
            self._spacing_until = self._monotonic() + lasts

    async def acquire(self, tokens: int = 0) -> Admission:
        async with self._lock:
            while True:
                admitted = self.try_acquire(tokens)
                if isinstance(admitted, Admission):
                    return admitted
                await self.wait(admitted)

    async def wait(self, seconds: float) -> None:
        """Sleep `seconds`, or less if a call settled meanwhile freed tokens (its
        reply used less than its worst case): those are free at once, not in a minute."""
        if self.tokens_per_minute <= 0:
            await self._sleep(seconds)
            return
        self._freed.clear()
        sleeping = asyncio.ensure_future(self._sleep(seconds))
        freed = asyncio.ensure_future(self._freed.wait())
        try:
            await asyncio.wait({sleeping, freed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeping.cancel()
            freed.cancel()

    def wake(self) -> None:
        """Tokens were freed (here, or in the limits shared with other replicas)."""
        self._freed.set()

    def try_acquire(self, tokens: int = 0) -> Admission | float:
        """Let a call through now, or the seconds to wait before asking again."""
        now = self._monotonic()
        paced = bool(self._spacing) and now < self._spacing_until
        wait = self._next_call - now if paced else 0.0
        wait = max(wait, self._window_wait(now, tokens))
        if wait > 0:
            return wait
        if paced:
            self._next_call = now + self._spacing
        return self.record(tokens, now)

    def record(self, tokens: int = 0, now: float | None = None) -> Admission:
        """Count a call let through (here, or by the limits shared with other replicas)."""
        admission = Admission(self._monotonic() if now is None else now, max(tokens, 0))
        if self.per_minute <= 0 and self.tokens_per_minute <= 0:
            admission.counted = False  # nothing to hold: nothing kept
            return admission
        self._expire(admission.at)  # what left the window goes (only a minute is kept)
        self._calls.append(admission)
        self._tokens += admission.tokens
        return admission

    def settle(self, admission: object, tokens: int) -> None:
        """The call used `tokens` in fact: they count instead of its estimate."""
        if not isinstance(admission, Admission):
            return
        tokens = max(tokens, 0)
        if admission.counted:
            self._tokens += tokens - admission.tokens
            if tokens < admission.tokens:
                self.wake()
        admission.tokens = tokens

    def keep_alive(self) -> None:
        pass  # no one else to tell

    async def close(self) -> None:
        pass

    def _expire(self, now: float) -> None:
        while self._calls and self._calls[0].at <= now - self.window:
            gone = self._calls.popleft()
            gone.counted = False
            self._tokens -= gone.tokens

    def _window_wait(self, now: float, tokens: int) -> float:
        """Seconds until the window has room for one more call of `tokens`."""
        self._expire(now)
        wait = 0.0
        calls = self._calls
        if self.per_minute > 0 and len(calls) >= self.per_minute:
            wait = calls[len(calls) - self.per_minute].at + self.window - now
        limit = self.tokens_per_minute
        if limit > 0 and self._tokens > 0 and self._tokens + tokens > limit:
            left = self._tokens
            for call in calls:  # oldest first: when enough of them have left
                left -= call.tokens
                if left <= 0 or left + tokens <= limit:
                    wait = max(wait, call.at + self.window - now)
                    break
        return wait
