"""Single-flight: identical work in flight at the same moment is done once.

The first caller of a key leads: it does the work and lands the flight with its
result (or its failure). Callers arriving meanwhile follow: they wait for the
leader's result instead of doing the work again. A failed or abandoned flight
gives followers nothing, and they do the work themselves.
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._flights: dict[str, asyncio.Future[T]] = {}

    def lead(self, key: str) -> asyncio.Future[T] | None:
        """Claim the key: a future to land with the result, or None when another
        caller already leads it (follow it then)."""
        if key in self._flights:
            return None
        flight = self._flights[key] = asyncio.get_running_loop().create_future()
        return flight

    async def follow(self, key: str, timeout: float | None = None) -> T | None:
        """The result of the flight leading `key`, or None when there is none, it
        failed, or it did not land within `timeout` seconds."""
        flight = self._flights.get(key)
        if flight is None:
            return None
        await asyncio.wait({flight}, timeout=timeout)
        if not flight.done() or flight.cancelled() or flight.exception() is not None:
            return None
        return flight.result()

    def land(self, key: str, flight: asyncio.Future[T], result: T | None = None) -> None:
        """End a flight this caller leads: with its result, or (None) with nothing."""
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.done():
            if result is None:
                flight.cancel()
            else:
                flight.set_result(result)

    def __len__(self) -> int:
        return len(self._flights)
