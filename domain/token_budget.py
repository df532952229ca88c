"""The TokenBudget aggregate: tokens reserved, spent and released in one scope and day."""

from __future__ import annotations

from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

BUDGET_NAMESPACE = uuid5(NAMESPACE_URL, "chater-gpt/token-budget")

SERVICE_SCOPE = "service"


class TokenBudget(Aggregate):
    """Daily token spending of one scope (the whole service, or one user).

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
        self.settled: set[str] = set()

    @property
    def reserved(self) -> int:
        return sum(self.reservations.values())

    def remaining(self, limit: int) -> int:
        return limit - self.used - self.reserved

    def reserve(self, reservation_id: str, tokens: int, limit: int) -> None:
        """Hold tokens for a request; a repeated reservation changes nothing."""
        if reservation_id in self.reservations or reservation_id in self.settled:
            return
        self.check_affordable(tokens, limit)
        self._reserve(reservation_id=reservation_id, tokens=tokens)

    @event("TokensReserved")
    def _reserve(self, reservation_id: str, tokens: int) -> None:
        self.reservations[reservation_id] = tokens

    def settle(self, reservation_id: str, tokens: int) -> None:
        """Replace a reservation by the tokens really used."""
        if reservation_id in self.settled:
            return
        self._settle(reservation_id=reservation_id, tokens=tokens)

    @event("TokensSettled")
    def _settle(self, reservation_id: str, tokens: int) -> None:
        self.reservations.pop(reservation_id, None)
        self.settled.add(reservation_id)
        self.used += tokens

    def release(self, reservation_id: str) -> None:
        """Give back a reservation whose request failed."""
        if reservation_id not in self.reservations:
            return
        self._release(reservation_id=reservation_id)

    @event("TokensReleased")
    def _release(self, reservation_id: str) -> None:
        del self.reservations[reservation_id]

    def check_affordable(self, tokens: int, limit: int) -> None:
        if tokens > self.remaining(limit):
            raise BudgetExceeded(
                f"{tokens} tokens requested, {max(self.remaining(limit), 0)} of "
                f"{limit} left today"
            )


def budget_id(scope: str, day: str) -> UUID:
    return uuid5(BUDGET_NAMESPACE, f"{scope}\n{day}")


class BudgetExceeded(Exception):
    """The request would take the day's spending past the limit."""
