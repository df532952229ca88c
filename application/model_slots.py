"""Admission to model calls: who goes next when calls have to wait.

Requests wait for two things before calling the model: a free slot among at most
`concurrency` calls at once (0 = no limit), and the rate limiter's leave (its
sliding window of calls per minute). ModelSlots decides the order in which waiting
requests get to ask for them.

Order: the highest *effective* priority first, where

    effective priority = priority + seconds waited / aging_seconds

so a request gains one priority level for every `aging_seconds` it waits, and a
low-priority request that has waited `aging_seconds x (difference in priority)`
longer than a higher one goes first: nothing waits for ever. Equal effective
priorities go first come, first served. Since every waiter ages at the same rate,
comparing p1 + (now - t1) / A with p2 + (now - t2) / A does not depend on `now`:
the order is fixed when a request arrives, and a heap keyed by (t / A - p, arrival)
keeps it without re-sorting. A request's t is when it came: its record's time
when known (so that requests fetched from different partitions go in the order
they were produced), else when it asked for a slot.

Only the request at the head of that order moves: it becomes the head once a
slot is free, then waits for the rate limiter, and only then does the next one
become the head. So a high-priority request arriving while many low ones wait
for a slot or the rate limiter is the next to ask it, not the last.

Per conversation: the worker sends each conversation's requests one at a time
(the next only after the previous has been answered), so at most one request of a
conversation is ever waiting here and reordering waiters never reorders a
conversation.

A waiter that is cancelled (its request was abandoned) leaves the order without
taking a slot or holding up the others, also when it is cancelled at the head,
inside the rate limiter's wait.

Tokens: a call counts its worst case (`call.progress.tokens`, set by whoever
planned it) against the tokens per minute when admitted; `settle` counts what it
used instead once it answered. Retries and the fallback call are admitted by
`admit` (RetryingModel's pace hook), each with the same worst case, and the
attempt that answered is the one settled.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from application.ports import ModelCall, ModelReply, RateLimiter


async def admit(rate_limiter: RateLimiter, call: ModelCall) -> None:
    """One attempt of `call` admitted by the rate limiter (kept on the call, for
    `ModelSlots.settle`)."""
    call.progress.admission = await rate_limiter.acquire(call.progress.tokens)


@dataclass(order=True)
class _Waiter:
    key: float  # arrival / aging_seconds - priority: smaller goes first
    sequence: int  # arrival order, for ties
    turn: asyncio.Future[None] = field(compare=False)
    gone: bool = field(default=False, compare=False)  # cancelled while in the heap


class ModelSlots:
    """At most `concurrency` model calls at once (0 = no limit), admitted through
    the rate limiter one at a time, highest effective priority first (see the
    module's docstring for the aging rule)."""

    def __init__(
        self,
        rate_limiter: RateLimiter,
        concurrency: int = 0,
        aging_seconds: float = 30.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if concurrency < 0:
            raise ValueError("concurrency must be 0 (no limit) or more")
        if not aging_seconds > 0:
            raise ValueError("aging_seconds must be more than 0 (math.inf: no aging)")
        self._rate_limiter = rate_limiter
        self._concurrency = concurrency
        self._aging = aging_seconds
        self._monotonic = monotonic
        self._heap: list[_Waiter] = []
        self._gone_in_heap = 0
        self._arrivals = itertools.count()
        self._head: _Waiter | None = None
        self._waiting = 0
        self._in_use = 0
        self._freed = asyncio.Event()  # set whenever a slot is given back

    @property
    def waiting(self) -> int:
        """Requests that asked for a slot and have not got one yet (the head included)."""
        return self._waiting

    @property
    def in_use(self) -> int:
        """Requests holding a slot: inside the body of `slot()`."""
        return self._in_use

    @asynccontextmanager
    async def slot(
        self, priority: int = 0, call: ModelCall | None = None, since: float | None = None
    ) -> AsyncIterator[None]:
        """Wait for this request's turn, a free slot and the rate limiter's leave
        (for `call`'s worst case in tokens, if given); hold the slot for the body
        (given back on exit, error or cancellation). `since`: when the request came
        (epoch seconds, its record's time): it waits, and ages, from then, so that
        requests fetched from different partitions go in the order they came."""
        arrived = self._monotonic()
        if since is not None:
            arrived -= max(0.0, time.time() - since)
        waiter = _Waiter(
            arrived / self._aging - priority,
            next(self._arrivals),
            asyncio.get_running_loop().create_future(),
        )
        heapq.heappush(self._heap, waiter)
        self._waiting += 1
        try:
            self._advance()
            await waiter.turn
            while self._concurrency and self._in_use >= self._concurrency:
                self._freed.clear()
                await self._freed.wait()
            if call is None:
                await self._rate_limiter.acquire()
            else:
                await admit(self._rate_limiter, call)
        except BaseException:
            self._waiting -= 1
            if self._head is waiter:
                self._head = None
            elif not waiter.gone:  # still in the heap: leave it there, marked
                waiter.gone = True
                self._gone_in_heap += 1
                self._compact()
            self._advance()
            raise
        # Only the head takes slots, so the one it saw free is still free.
        self._waiting -= 1
        self._in_use += 1
        self._head = None
        self._advance()
        try:
            yield
        finally:
            self._in_use -= 1
            self._freed.set()
            self._advance()

    def settle(self, call: ModelCall, reply: ModelReply) -> None:
        """The call answered: the rate limiter counts what it used, not its worst case."""
        if call.progress.admission is not None:
            self._rate_limiter.settle(
                call.progress.admission, reply.prompt_tokens + reply.completion_tokens
            )

    def _advance(self) -> None:
        """Make the first waiter in the order the head, if there is none and a slot
        is free: the order is decided when a slot frees, so that one that came
        earlier (fetched later, from another partition) still goes first."""
        while self._head is None and self._heap and not self._full():
            waiter = heapq.heappop(self._heap)
            if waiter.gone:
                self._gone_in_heap -= 1
                continue
            if waiter.turn.done():
                # Cancelled, and its task has not yet run to take itself out.
                waiter.gone = True
                continue
            self._head = waiter
            waiter.turn.set_result(None)

    def _full(self) -> bool:
        return bool(self._concurrency) and self._in_use >= self._concurrency

    def _compact(self) -> None:
        """Drop cancelled waiters once they are most of the heap."""
        if self._gone_in_heap > 64 and self._gone_in_heap * 2 > len(self._heap):
            self._heap = [waiter for waiter in self._heap if not waiter.gone]
            heapq.heapify(self._heap)
            self._gone_in_heap = 0
