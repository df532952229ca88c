"""The TokenBudget aggregate: tokens reserved, spent and released in one scope and day."""

from __future__ import annotations

from datetime import datetime
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

BUDGET_NAMESPACE = uuid5(NAMESPACE_URL, "chater-gpt/token-budget")

SERVICE_SCOPE = "service"
COST_SCOPE = "service-usd"  # counted in millionths of a US dollar


def unit_of(scope: str) -> str:
    return "millionths of a dollar" if scope == COST_SCOPE else "tokens"


def user_scope(owner: str) -> str:
    """The scope of one user's tokens, by the owner id of their data (not their address)."""
    return f"user:{owner}"


class TokenBudget(Aggregate):
    """Daily spending of one scope: the service's tokens (SERVICE_SCOPE), its US dollars
    in millionths (COST_SCOPE), or a user's tokens (user_scope).

    A request reserves its worst case before the model is called, then settles
    with what was really used, or releases the reservation when it fails. The
    limit is a policy passed in on each reservation, so that a changed setting
    applies at once; what was spent is the budget's own record.
    """

    @staticmethod
    def create_id(scope: str, day: str) -> UUID:
        return budget_id(scope, day)

    @event("Opened")
    def __init__(self, scope: str, day: str) -> None:
        self.scope = scope
        self.day = day
        self.used = 0
        self.reservations: dict[str, int] = {}
        self.reserved_at: dict[str, str] = {}  # reservation id -> ISO time it was made

    @property
    def reserved(self) -> int:
        return sum(self.reservations.values())

    def remaining(self, limit: int) -> int:
        return limit - self.used - self.reserved

    def reserve(
        self, reservation_id: str, tokens: int, limit: int, at: datetime | None = None
    ) -> None:
        """Hold tokens for a request; a repeated reservation changes nothing.

        Raises BudgetExceeded when the day's spending alone leaves no room, and
        BudgetBusy when only reservations of requests in flight are in the way:
        those end soon, so the caller may wait and try again.
        """
        if reservation_id in self.reservations:
            return
        if self.used + tokens > limit:
            raise BudgetExceeded(
                f"{tokens} {unit_of(self.scope)} requested, {max(limit - self.used, 0)} of "
                f"{limit} left today", self.scope,
            )
        if tokens > self.remaining(limit):
            raise BudgetBusy(f"{self.reserved} tokens are held by requests in flight")
        self._reserve(
            reservation_id=reservation_id, tokens=tokens, at=at.isoformat() if at else None
        )

    @event("TokensReserved")
    def _reserve(self, reservation_id: str, tokens: int, at: str | None = None) -> None:
        self.reservations[reservation_id] = tokens
        if at is not None:
            self._times()[reservation_id] = at

    def renew(self, reservation_id: str, at: datetime) -> None:
        """Its holder is alive and still needs it: it does not expire meanwhile."""
        if reservation_id in self.reservations:
            self._renew(reservation_id=reservation_id, at=at.isoformat())

    @event("ReservationRenewed")
    def _renew(self, reservation_id: str, at: str) -> None:
        self._times()[reservation_id] = at

    def expire_reservations(self, made_before: datetime) -> list[str]:
        """Count reservations made (or last renewed) before `made_before` as spent
        in full; their ids.

        Their holder has stopped (or is stuck) without settling them: what it
        used is unknown, so all of it counts. That can lose room, never overspend,
        and it turns requests waiting for that room into clear refusals.
        """
        stale = [
            reservation_id
            for reservation_id, at in self._times().items()
            if reservation_id in self.reservations and datetime.fromisoformat(at) < made_before
        ]
        for reservation_id in stale:
            self._expire(reservation_id=reservation_id)
        return stale

    @event("ReservationExpired")
    def _expire(self, reservation_id: str) -> None:
        tokens = self.reservations.pop(reservation_id)
        self.used += tokens
        self._times().pop(reservation_id, None)
        self._expired()[reservation_id] = tokens

    # Budgets recorded before reservations could expire have neither map.
    def _times(self) -> dict[str, str]:
        return self.__dict__.setdefault("reserved_at", {})

    def _expired(self) -> dict[str, int]:
        """Expired reservations (counted in full) whose holder may still settle them."""
        return self.__dict__.setdefault("expired", {})

    def settle(self, reservation_id: str, tokens: int) -> None:
        """Replace a reservation by the tokens really used; only once.

        A reservation that expired meanwhile was counted in full: its holder
        coming back with the real figure gives the difference back.
        """
        if reservation_id in self._expired():
            self._settle_expired(reservation_id=reservation_id, tokens=tokens)
            return
        if reservation_id not in self.reservations:
            return
        self._settle(reservation_id=reservation_id, tokens=tokens)

    @event("ExpiredReservationSettled")
    def _settle_expired(self, reservation_id: str, tokens: int) -> None:
        counted = self._expired().pop(reservation_id)
        self.used += tokens - counted

    @event("TokensSettled")
    def _settle(self, reservation_id: str, tokens: int) -> None:
        del self.reservations[reservation_id]
        self._times().pop(reservation_id, None)
        self.used += tokens

    def release(self, reservation_id: str) -> None:
        """Give back a reservation whose request failed."""
        if reservation_id not in self.reservations:
            return
        self._release(reservation_id=reservation_id)

    @event("TokensReleased")
    def _release(self, reservation_id: str) -> None:
        del self.reservations[reservation_id]
        self._times().pop(reservation_id, None)


def budget_id(scope: str, day: str) -> UUID:
    return uuid5(BUDGET_NAMESPACE, f"{scope}\n{day}")


class BudgetExceeded(Exception):
    """The request would take the day's spending past the limit of `scope`."""

    def __init__(self, message: str, scope: str = SERVICE_SCOPE) -> None:
        super().__init__(message)
        self.scope = scope


class BudgetBusy(Exception):
    """Requests in flight hold the room this one needs; it can wait for them."""
