"""Every daily limit a request is held against: the service's tokens
(DAILY_TOKEN_LIMIT), the service's US dollars (DAILY_COST_LIMIT) and its user's tokens
(USER_DAILY_TOKEN_LIMIT, or the user's own limit from USER_TOKEN_LIMITS).

Each limit is a TokenBudget of its own, leased by a BudgetLedger, so each keeps the
guarantee the service's token budget has: never exceeded, whatever the number of
replicas. A request holds its worst case in all of them before the model is called
(dollars at the worst price among the models that may answer it: its own and the
fallback), and settles with what it really used (dollars at the price of the model
that answered). Refused by one, it holds nothing in the others; the refusal names
the limit (`BudgetExceeded.scope`).

Batch API requests hold their budget apart, for hours and across replicas, in the
service's token budget only: with a dollar or a per-user limit set they are answered
live (`allows_batches`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from application.budget_ledger import BudgetLedger
from application.ports import ModelReply
from domain.addresses import InvalidAddress, normalise_email
from domain.conversation import data_owner
from domain.pricing import PER_TOKENS, PriceTable
from domain.token_budget import COST_SCOPE, BudgetExceeded, user_scope

MICRO = 1_000_000  # the dollar budget counts millionths of a US dollar

SERVICE_TOKENS_USED_UP = "The service's daily token budget is used up; please try again tomorrow."
SERVICE_DOLLARS_USED_UP = "The service's daily spending limit is reached; please try again tomorrow."
USER_TOKENS_USED_UP = "Your daily token budget is used up; please try again tomorrow."
UNPRICED = ("The model that would answer has no price, and the service's spending is "
            "limited: it cannot be used.")


def refusal(error: BudgetExceeded) -> str:
    """What a request refused by this limit is told: which limit it hit."""
    if getattr(error, "unpriced", False):
        return UNPRICED
    if error.scope == COST_SCOPE:
        return SERVICE_DOLLARS_USED_UP
    if error.scope.startswith("user:"):
        return USER_TOKENS_USED_UP
    return SERVICE_TOKENS_USED_UP


@dataclass
class _Hold:
    user: BudgetLedger | None
    dollars: int | None  # millionths held in the dollar budget


class Budgets:
    def __init__(
        self,
        tokens: BudgetLedger,
        prices: PriceTable,
        dollars: BudgetLedger | None = None,
        user_ledger: Callable[[str, int], BudgetLedger] | None = None,
        user_limit: int | None = None,
        user_limits: Mapping[str, int] | None = None,
        fallback_model: str | None = None,
    ) -> None:
        """`user_ledger(scope, limit)` makes the ledger of one user's budget;
        `user_limits` maps normalised addresses to their own daily tokens."""
        self.tokens = tokens
        self.prices = prices
        self.dollars = dollars
        self.user_limit = user_limit
        self.user_limits = dict(user_limits or {})
        self._user_ledger = user_ledger
        self.fallback_model = fallback_model
        self._users: dict[str, BudgetLedger] = {}
        self._held: dict[str, _Hold] = {}

    # What the service's token ledger answers, as before.
    @property
    def daily_limit(self) -> int:
        return self.tokens.daily_limit

    @property
    def max_wait(self) -> float:
        return self.tokens.max_wait

    def remaining_today(self) -> int | None:
        return self.tokens.remaining_today()

    @property
    def leases_opened(self) -> int:
        return self.tokens.leases_opened

    @property
    def allows_batches(self) -> bool:
        return self.dollars is None and self.user_limit is None and not self.user_limits

    def limit_of(self, user_email: str) -> int | None:
        """The user's daily tokens, or None when users are not limited."""
        try:
            address = normalise_email(user_email)
        except InvalidAddress:
            address = user_email
        return self.user_limits.get(address, self.user_limit)

    def daily_limit_for(self, user_email: str | None) -> int:
        """The most a request of this user can ever be given in a day."""
        limit = self.user_limit_or_none(user_email)
        return self.daily_limit if limit is None else min(self.daily_limit, limit)

    def user_limit_or_none(self, user_email: str | None) -> int | None:
        return None if user_email is None or self._user_ledger is None else self.limit_of(user_email)

    def remaining_dollars_today(self) -> float | None:
        if self.dollars is None:
            return None
        left = self.dollars.remaining_today()
        return None if left is None else left / MICRO

    # Holding, settling, releasing -----------------------------------------------------

    async def reserve(self, reservation_id: str, tokens: int, max_wait: float | None = None,
                      user: str | None = None, models: Iterable[str] = ()) -> None:
        """Hold `tokens` (the worst case) in every budget that applies; BudgetExceeded
        (naming the limit) when one of them has no room, and nothing held then."""
        dollars = self._worst_dollars(models, tokens) if self.dollars is not None else None
        await self.tokens.reserve(reservation_id, tokens, max_wait)
        user_ledger = None
        try:
            if self.dollars is not None and dollars is not None:
                await self.dollars.reserve(reservation_id, dollars, max_wait)
            limit = self.user_limit_or_none(user)
            if limit is not None and user is not None:
                user_ledger = self._ledger_of(user, limit)
                await user_ledger.reserve(reservation_id, tokens, max_wait)
        except BaseException:
            self.tokens.release(reservation_id)
            if self.dollars is not None:
                self.dollars.release(reservation_id)
            raise
        self._held[reservation_id] = _Hold(user_ledger, dollars)

    def settle(self, reservation_id: str, tokens: int, reply: ModelReply | None = None) -> None:
        """Count what the request used: `tokens`, and in dollars the price of the model
        that answered (`reply`); without a reply, the dollars held (a call cut short)."""
        self.tokens.settle(reservation_id, tokens)
        hold = self._held.pop(reservation_id, None)
        if hold is None:
            return
        if self.dollars is not None and hold.dollars is not None:
            spent = hold.dollars
            if reply is not None:
                cost = self.prices.cost(reply.model, reply.prompt_tokens, reply.cached_tokens,
                                        reply.completion_tokens)
                spent = hold.dollars if cost is None else math.ceil(cost * MICRO)
            self.dollars.settle(reservation_id, spent)
        if hold.user is not None:
            hold.user.settle(reservation_id, tokens)

    def release(self, reservation_id: str) -> None:
        self.tokens.release(reservation_id)
        hold = self._held.pop(reservation_id, None)
        if hold is None:
            return
        if self.dollars is not None and hold.dollars is not None:
            self.dollars.release(reservation_id)
        if hold.user is not None:
            hold.user.release(reservation_id)

    def _worst_dollars(self, models: Iterable[str], tokens: int) -> int:
        """Millionths of a dollar `tokens` cost at the dearest price (prompt or
        completion) of the models that may answer; BudgetExceeded for an unpriced one."""
        candidates = [m for m in [*models, self.fallback_model] if m]
        dearest = 0.0
        for model in candidates:
            price = self.prices.price_of(model)
            if price is None:
                error = BudgetExceeded(f"{model} has no price", COST_SCOPE)
                error.unpriced = True  # type: ignore[attr-defined]
                raise error
            dearest = max(dearest, price.prompt, price.completion)
        return max(math.ceil(tokens * dearest / PER_TOKENS * MICRO), 1)

    @staticmethod
    def scope_of(user_email: str) -> str:
        """The TokenBudget scope of a user's tokens."""
        return user_scope(data_owner(user_email))

    def _ledger_of(self, user_email: str, limit: int) -> BudgetLedger:
        scope = self.scope_of(user_email)
        ledger = self._users.get(scope)
        if ledger is None or ledger.daily_limit != limit:
            assert self._user_ledger is not None
            ledger = self._users[scope] = self._user_ledger(scope, limit)
        return ledger

    # The ledgers' upkeep -----------------------------------------------------------------

    def _ledgers(self) -> list[BudgetLedger]:
        return [self.tokens, *([self.dollars] if self.dollars else []), *self._users.values()]

    async def housekeeping(self) -> None:
        for ledger in self._ledgers():
            await ledger.housekeeping()
        # A user's ledger with nothing open or held is dropped; the next request
        # of that user opens one again (the budget itself is in the store).
        for scope, ledger in list(self._users.items()):
            if ledger.idle():
                del self._users[scope]

    async def close(self) -> None:
        for ledger in self._ledgers():
            await ledger.close()

    # Batch API holds: the service's token budget only (see allows_batches).

    async def take_apart(self, reservation_id: str, tokens: int, max_wait: float | None = None,
                         day: str | None = None) -> tuple[str, bool]:
        return await self.tokens.take_apart(reservation_id, tokens, max_wait, day)

    async def conclude_apart(self, day: str, used: dict[str, int | None]) -> None:
        await self.tokens.conclude_apart(day, used)

    async def release_apart(self, day: str, reservation_id: str) -> None:
        await self.tokens.release_apart(day, reservation_id)
