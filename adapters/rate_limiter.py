"""RateLimiter port: at most N model calls in any sliding minute, in this process,
and slower when the provider says its own limits are running low."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable

from application.ports import RateLimitStatus

# Below this share of the provider's limit left, calls are spread over the time
# until its reset instead of spending the rest at once and meeting 429s.
LOW_WATER = 0.2
MAX_SPACING = 5.0  # slower, never stopped: the provider's 429s and Retry-After do the rest


class SlidingWindowRateLimiter:
    """Callers wait (first come, first served) rather than being refused."""

    def __init__(
        self,
        per_minute: int,
        window_seconds: float = 60.0,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.per_minute = per_minute
        self.window = window_seconds
        self._monotonic = monotonic
        self._sleep = sleep
        self._calls: deque[float] = deque()
        self._lock = asyncio.Lock()
        self._spacing = 0.0  # seconds between calls while the provider runs low
        self._spacing_until = 0.0
        self._next_call = 0.0

    def observe(self, status: RateLimitStatus) -> None:
        share = status.remaining_fraction()
        if share is None or status.reset_seconds is None:
            return
        now = self._monotonic()
        if share >= LOW_WATER:
            self._spacing = 0.0
            return
        left = max(status.remaining_calls() or 1, 1)
        self._spacing = min(status.reset_seconds / left, MAX_SPACING)
        self._spacing_until = now + status.reset_seconds

    async def acquire(self) -> None:
        async with self._lock:
            await self._paced()
            if self.per_minute <= 0:
                return
            while True:
                now = self._monotonic()
                while self._calls and self._calls[0] <= now - self.window:
                    self._calls.popleft()
                if len(self._calls) < self.per_minute:
                    self._calls.append(now)
                    return
                await self._sleep(self._calls[0] + self.window - now)

    async def _paced(self) -> None:
        """While the provider runs low, keep `spacing` seconds between calls."""
        now = self._monotonic()
        if self._spacing and now < self._spacing_until:
            if self._next_call > now:
                await self._sleep(self._next_call - now)
                now = self._monotonic()
            self._next_call = now + self._spacing
