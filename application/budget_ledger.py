"""This worker's share of the day's TokenBudget, leased in chunks.

Every request of every worker would otherwise write the one TokenBudget
aggregate of the day, which turns it into a lock for the whole service. Instead
a worker reserves a lease (a chunk of tokens) in the TokenBudget, holds each
request's worst case inside it in memory, and settles the lease with the tokens
really used once it is spent. Leases are saved before any of their tokens are
used, so the daily limit holds across workers. A live worker renews its leases
now and then; a lease not renewed for `lease_expiry` seconds (its worker died)
is counted as spent in full by whoever opens the next one: room is lost for a
while, never overspent.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import TypeVar

from application.ports import AggregateStore, Clock
from domain.token_budget import (
    SERVICE_SCOPE,
    BudgetBusy,
    BudgetExceeded,
    TokenBudget,
    unit_of,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
# A hold apart: (the day it is in, whether this write made it), or why not.
_Held = tuple[str, bool] | Exception


@dataclass
class _Lease:
    id: str
    day: str
    size: int
    opened: float = field(default_factory=time.monotonic)
    used: int = 0
    held: dict[str, int] = field(default_factory=dict)
    renewed: datetime | None = None  # when the budget last heard this lease is alive

    @property
    def free(self) -> int:
        return self.size - self.used - sum(self.held.values())


class BudgetLedger:
    """Reserve, settle and release request tokens against leased chunks."""

    def __init__(
        self,
        budgets: AggregateStore[TokenBudget],
        clock: Clock,
        daily_limit: int,
        chunk_tokens: int = 100_000,
        scope: str = SERVICE_SCOPE,
        lease_seconds: float = 10.0,
        max_wait: float = 60.0,
        lease_expiry: float = 60.0,
    ) -> None:
        self.budgets = budgets
        self.clock = clock
        self.daily_limit = daily_limit
        self.chunk_tokens = chunk_tokens
        self.scope = scope
        self.lease_seconds = lease_seconds
        self.max_wait = max_wait
        # Leases older than this are counted as spent in full by whoever opens
        # the next one: a worker that died must not hold room for long.
        self.lease_expiry = lease_expiry
        self.owner = uuid.uuid4().hex[:12]
        # What was left of each day's budget when this worker last saved it.
        self._remaining: dict[str, int] = {}
        self._numbers = itertools.count(1)
        self._current: _Lease | None = None
        self._leases: dict[str, _Lease] = {}  # reservation id -> its lease
        self._spent: list[_Lease] = []  # retired, every request ended, not yet written
        self._lock = asyncio.Lock()
        self._flushing = asyncio.Lock()
        # Holds apart waiting for the next write of their day's budget (None:
        # today's), and that write.
        self._apart: list[tuple[str, int, str | None, asyncio.Future[_Held]]] = []
        self._holding: asyncio.Future[None] | None = None
        self.leases_opened = 0
        self._reserving = 0

    async def reserve(
        self, reservation_id: str, tokens: int, max_wait: float | None = None
    ) -> None:
        """Hold tokens for a request; waits while requests in flight hold the room.

        Raises BudgetExceeded when the day's spending leaves no room at all, or
        when the room stays held for max_wait (by leases of workers that stopped
        without settling, say: those count as spent once they expire).
        """
        self._reserving += 1  # not idle meanwhile, also while it waits for room
        try:
            await self._patiently(
                tokens, max_wait, partial(self._reserve_in_lease, reservation_id, tokens),
                "requests in flight or by stopped workers",
            )
        finally:
            self._reserving -= 1

    async def _reserve_in_lease(self, reservation_id: str, tokens: int) -> bool | None:
        """True once held in this worker's lease; None while the room is held."""
        async with self._lock:
            if reservation_id in self._leases:
                return True
            day = self.clock.now().date().isoformat()
            lease = self._current
            if lease is None or lease.day != day or lease.free < tokens or self._expired(lease):
                if lease is not None:
                    self._retire(lease)
                await self.flush()
                try:
                    lease = await self._open_lease(day, tokens)
                except BudgetBusy:
                    lease = None
                self._current = lease
            if lease is None:
                return None
            lease.held[reservation_id] = tokens
            self._leases[reservation_id] = lease
            return True

    async def _patiently(
        self, tokens: int, max_wait: float | None, attempt: Callable[[], Awaitable[T | None]],
        holders: str,
    ) -> T:
        """`attempt` until it gives a result, waiting (20 ms, doubling to 1 s) while
        the room is held; BudgetExceeded once it has been held for max_wait."""
        wait, waited = 0.02, 0.0
        patience = self.max_wait if max_wait is None else max_wait
        while True:
            outcome = await attempt()
            if outcome is not None:
                return outcome
            if waited >= patience:
                raise BudgetExceeded(
                    f"{tokens} {unit_of(self.scope)} requested; the rest of today's budget has been held "
                    f"for {waited:.0f}s by {holders}", self.scope,
                )
            await asyncio.sleep(wait)
            waited += wait
            wait = min(wait * 2, 1.0)

    def idle(self) -> bool:
        """No reservation under way, no lease open or held, nothing waiting to be
        written: it may be dropped."""
        return (self._reserving == 0 and self._current is None and not self._leases
                and not self._spent and not self._apart)

    def remaining_today(self) -> int | None:
        """What is left of today's budget as this worker last saw it (None: not yet)."""
        remaining = self._remaining.get(self.clock.now().date().isoformat())
        return None if remaining is None else max(remaining, 0)

    def settle(self, reservation_id: str, tokens: int) -> None:
        """Count the tokens a request really used in place of what it held.

        Never fails and never waits: the request has been answered, so writing
        a spent lease to the store is left to flush().
        """
        lease = self._leases.pop(reservation_id, None)
        if lease is None:
            return
        del lease.held[reservation_id]
        lease.used += tokens
        self._retire_if_spent(lease)

    def release(self, reservation_id: str) -> None:
        """Give back what a request held that ended without using the model."""
        self.settle(reservation_id, 0)

    # Holds apart from the leases: a batch request's worst case, for up to a day --

    async def hold_apart(
        self, reservation_id: str, tokens: int, max_wait: float | None = None,
        day: str | None = None,
    ) -> str:
        """Reserve tokens directly in today's TokenBudget (or `day`'s: a hold
        taken again keeps its first day), outside any lease, for a request
        answered hours later (a Batch API request); the day it is held in.

        Such a hold never expires and never keeps a lease open: it is settled or
        released (`conclude_apart`) on its own, by whichever replica concludes the
        request. Holding it again changes nothing (same id). The holds asked for
        while one is being written go together in the next write (one change of
        the budget, not one conflict after another). Waits while holds of
        requests in flight fill the budget, as `reserve`.
        """
        held_in, _ = await self.take_apart(reservation_id, tokens, max_wait, day)
        return held_in

    async def take_apart(
        self, reservation_id: str, tokens: int, max_wait: float | None = None,
        day: str | None = None,
    ) -> tuple[str, bool]:
        """`hold_apart`: the day it is held in, and whether this call made the hold
        (False: it was held already, by another replica for the same request, say)."""
        async def attempt() -> tuple[str, bool] | None:
            outcome = await self._hold_with_others(reservation_id, tokens, day)
            if isinstance(outcome, BudgetExceeded):
                raise outcome
            return outcome if isinstance(outcome, tuple) else None

        return await self._patiently(tokens, max_wait, attempt, "requests in flight")

    async def _hold_with_others(self, reservation_id: str, tokens: int, day: str | None) -> _Held:
        """(the day the hold is in, whether made now), or why not (BudgetBusy,
        BudgetExceeded)."""
        future: asyncio.Future[_Held] = asyncio.get_running_loop().create_future()
        self._apart.append((reservation_id, tokens, day, future))
        if self._holding is None or self._holding.done():
            self._holding = asyncio.ensure_future(self._hold_waiting())
        return await asyncio.shield(future)

    async def _hold_waiting(self) -> None:
        while self._apart:
            taken, self._apart = self._apart, []
            today = self.clock.now().date().isoformat()
            by_day: dict[str, list[tuple[str, int, asyncio.Future[_Held]]]] = {}
            for reservation_id, tokens, day, future in taken:
                by_day.setdefault(day or today, []).append((reservation_id, tokens, future))
            for day, of_day in by_day.items():
                await self._hold_in(day, of_day)

    async def _hold_in(self, day: str, taken: list[tuple[str, int, asyncio.Future[_Held]]]) -> None:
        """One write of a day's budget for the holds apart waiting for it."""
        outcomes: dict[str, _Held] = {}

        def decide(budget: TokenBudget) -> None:
            outcomes.clear()  # decided again after a conflict
            for reservation_id, tokens, _ in taken:
                held = reservation_id in budget.reservations
                try:
                    budget.reserve(reservation_id, tokens, self.daily_limit)
                    outcomes[reservation_id] = (day, not held)
                except (BudgetBusy, BudgetExceeded) as refused:
                    outcomes[reservation_id] = refused

        try:
            await self._change_budget(day, decide)
        except Exception as error:  # the store: each caller's own retries decide
            for _, _, future in taken:
                if not future.done():
                    future.set_exception(error)
            return
        for reservation_id, _, future in taken:
            if not future.done():
                future.set_result(outcomes[reservation_id])

    async def conclude_apart(self, day: str, used: dict[str, int | None]) -> None:
        """Settle holds apart of one day with the tokens their requests used (None:
        released, the request ended without using the model), in one write; a
        hold settled or released already is not touched again."""
        await self._change_budget(day, partial(_conclude_in, used))

    async def settle_apart(self, day: str, reservation_id: str, tokens: int) -> None:
        """Count what a hold apart really used (once; again changes nothing)."""
        await self.conclude_apart(day, {reservation_id: tokens})

    async def release_apart(self, day: str, reservation_id: str) -> None:
        """Give back a hold apart whose request ended without using the model."""
        await self.conclude_apart(day, {reservation_id: None})

    async def housekeeping(self) -> None:
        """Retire a lease held too long, write the spent ones and renew the ones
        still in use; called now and then."""
        async with self._lock:
            lease = self._current
            if lease is not None and self._expired(lease):
                self._retire(lease)
        await self.flush()
        await self.renew()

    async def renew(self) -> None:
        """Tell the budget which leases this worker still uses, well before they
        would expire: only the leases of a worker that stopped ever expire."""
        now = self.clock.now()
        due = [
            lease for lease in self._live_leases()
            if now - (lease.renewed or now) > timedelta(seconds=self.lease_expiry / 3)
        ]
        for day in {lease.day for lease in due}:
            of_day = [lease for lease in due if lease.day == day]
            try:
                await self._change_budget(day, partial(self._renew, of_day, now))
            except Exception as error:  # the store is down: try again next time
                log.warning("could not renew budget leases yet: %s", error)
                return
            for lease in of_day:
                lease.renewed = now

    def _live_leases(self) -> list[_Lease]:
        leases = {id(lease): lease for lease in self._leases.values()}
        if self._current is not None:
            leases[id(self._current)] = self._current
        return list(leases.values())

    async def flush(self) -> None:
        """Settle the spent leases in the store; those that fail stay for the next flush."""
        # One flush at a time: housekeeping and a reservation may both call it.
        async with self._flushing:
            while self._spent:
                lease = self._spent[0]
                try:
                    await self._change_budget(lease.day, partial(self._settle, lease))
                except Exception as error:  # the store is down: the lease stays reserved
                    log.warning("could not settle %s yet: %s", lease.id, error)
                    return
                self._spent.remove(lease)

    async def close(self) -> None:
        """Settle the open lease, so its unused tokens go back to the budget."""
        async with self._lock:
            if self._current is not None:
                self._retire(self._current)
            for lease in {id(lease): lease for lease in self._leases.values()}.values():
                log.warning("closing with %d request(s) still holding %s", len(lease.held), lease.id)
        await self.flush()

    def _expired(self, lease: _Lease) -> bool:
        return time.monotonic() - lease.opened > self.lease_seconds

    def _retire(self, lease: _Lease) -> None:
        """Hand out no more of this lease; it is settled once its last request ends."""
        if lease is self._current:
            self._current = None
        self._retire_if_spent(lease)

    def _retire_if_spent(self, lease: _Lease) -> None:
        if lease is not self._current and not lease.held and lease not in self._spent:
            self._spent.append(lease)

    async def _open_lease(self, day: str, tokens: int) -> _Lease:
        lease = await self._change_budget(day, partial(self._reserve_lease, day, tokens))
        self.leases_opened += 1
        log.debug("opened %s of %d tokens", lease.id, lease.size)
        return lease

    def _reserve_lease(self, day: str, tokens: int, budget: TokenBudget) -> _Lease:
        now = self.clock.now()
        for expired in budget.expire_reservations(now - timedelta(seconds=self.lease_expiry)):
            log.warning("budget lease %s not settled for %.0fs: counted as spent in full",
                        expired, self.lease_expiry)
        room = budget.remaining(self.daily_limit)
        # Half of what is left at most, so that other workers keep some room.
        size = max(tokens, min(self.chunk_tokens, room // 2))
        lease_id = f"lease:{self.owner}:{next(self._numbers)}"
        budget.reserve(lease_id, size, self.daily_limit, at=now)
        return _Lease(lease_id, day, size, renewed=now)

    def _settle(self, lease: _Lease, budget: TokenBudget) -> None:
        budget.settle(lease.id, lease.used)

    @staticmethod
    def _renew(leases: list[_Lease], now: datetime, budget: TokenBudget) -> None:
        for lease in leases:
            budget.renew(lease.id, now)

    async def _change_budget(self, day: str, decide: Callable[[TokenBudget], T]) -> T:
        """Change the day's budget (on its stored state after a conflict). While the
        store is down this fails at once, never waits: a lease being opened holds
        every reservation behind it (the request's own retries decide), and a
        settle or renewal is tried again at the next housekeeping."""
        try:
            return await self.budgets.change(
                TokenBudget.create_id(self.scope, day), partial(self._decide, day, decide),
                create=partial(TokenBudget, self.scope, day), wait_out_outages=False,
            )
        except BaseException:
            # A refusal may have been decided on a copy others had changed since.
            self._remaining.pop(day, None)
            raise

    def _decide(self, day: str, decide: Callable[[TokenBudget], T], budget: TokenBudget) -> T:
        result = decide(budget)
        self._remaining = {day: budget.remaining(self.daily_limit)}  # only the latest day's
        return result


def _conclude_in(used: dict[str, int | None], budget: TokenBudget) -> None:
    for reservation_id, tokens in used.items():
        if tokens is None:
            budget.release(reservation_id)
        else:
            budget.settle(reservation_id, tokens)
