"""Work of one record, tried again until it is done, given up or the worker stops.

An event store outage that reaches here (a new budget lease, an erasure, which
do not wait inside the store) is waited out with the store's own policy,
StoreOutages, while the worker runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from adapters.store_outages import StoreOutages

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# Unexpected errors (not the store being down) are retried this often before the
# work is given up, so that one bad record cannot wedge its conversation forever.
UNEXPECTED_ERROR_ATTEMPTS = 3
OUTAGES = StoreOutages()


class Stopping(Exception):
    """The worker is stopping while this work waits for the store."""


class GaveUp(Exception):
    """Work failed unexpectedly too often; the message names the last error's type."""


async def persevere(
    doing: str,
    stopping: Callable[[], bool],
    work: Callable[..., Awaitable[_T]],
    *args: Any,
) -> _T:
    """`await work(*args)`, waiting out a store outage for as long as it lasts; raises
    GaveUp after UNEXPECTED_ERROR_ATTEMPTS unexpected errors, Stopping when the
    worker stops meanwhile. `doing` names the work in the log."""
    attempt = 0
    delays = OUTAGES.delays()
    while True:
        try:
            return await work(*args)
        except Exception as error:
            if OUTAGES.is_outage(error):
                # The store is down: wait for it rather than lose or fail the work.
                log.warning("event store unavailable while %s (%s)", doing, error)
            else:
                attempt += 1
                log.exception("unexpected error %s (attempt %d)", doing, attempt)
                if attempt >= UNEXPECTED_ERROR_ATTEMPTS:
                    raise GaveUp(type(error).__name__) from error
        if stopping():
            raise Stopping
        await asyncio.sleep(next(delays))
