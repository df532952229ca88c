"""How this process waits out an event store outage: one policy for every read and
write of the store (the conversation store, its group commit and the budget).

An outage is the store being unreachable, restarting or out of connections. A
conflict (another process wrote first) or a programming error is not one: those
are raised at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

from eventsourcing.persistence import InterfaceError, OperationalError

log = logging.getLogger(__name__)
T = TypeVar("T")

OUTAGE_ERRORS = (OperationalError, InterfaceError)


class StoreOutages:
    """Retry what failed because the store is down, with capped exponential backoff."""

    def __init__(self, first_delay: float = 0.1, max_delay: float = 5.0) -> None:
        self.first_delay = first_delay
        self.max_delay = max_delay

    @staticmethod
    def is_outage(error: BaseException) -> bool:
        return isinstance(error, OUTAGE_ERRORS)

    def delays(self) -> Iterator[float]:
        """Seconds to wait before each next try: doubling up to the cap, jittered so
        that replicas do not come back in step."""
        delay = self.first_delay
        while True:
            yield delay * random.uniform(0.5, 1.0)
            delay = min(delay * 2, self.max_delay)

    async def wait_out(self, operation: Callable[[], Awaitable[T]], doing: str) -> T:
        """`operation`'s result, tried again for as long as the store is down."""
        delays = self.delays()
        while True:
            try:
                return await operation()
            except OUTAGE_ERRORS as error:
                delay = next(delays)
                log.warning("event store unavailable while %s (%s); retrying in %.1fs",
                            doing, error, delay)
                await asyncio.sleep(delay)
