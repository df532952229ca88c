"""Budgets: the service's tokens, its dollars and each user's tokens, every one a
TokenBudget leased by a BudgetLedger, held together and refused by name."""

from __future__ import annotations

import pytest

from adapters.aggregate_store import StoreOfRecords
from adapters.event_store import ChatRecords
from application.budget_ledger import BudgetLedger
from application.budgets import (
    SERVICE_DOLLARS_USED_UP,
    SERVICE_TOKENS_USED_UP,
    UNPRICED,
    USER_TOKENS_USED_UP,
    Budgets,
    refusal,
)
from application.ports import ModelReply
from domain.conversation import data_owner
from domain.pricing import DEFAULT_PRICES, PriceTable
from domain.token_budget import COST_SCOPE, SERVICE_SCOPE, BudgetExceeded, user_scope
from tests.unit.fakes import FixedClock

DAY = "2026-11-25"
PRICES = PriceTable(DEFAULT_PRICES)  # gpt-4o-mini: $0.15 / $0.60 per million tokens


@pytest.fixture
def records() -> ChatRecords:
    return ChatRecords(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})


def budgets(records: ChatRecords, tokens: int = 1_000_000, dollars: float | None = None,
            user: int | None = None, own: dict[str, int] | None = None,
            fallback: str | None = None) -> Budgets:
    store, clock = StoreOfRecords(records).budgets, FixedClock()

    def ledger(scope: str, limit: int, chunk: int) -> BudgetLedger:
        return BudgetLedger(store, clock, limit, chunk_tokens=chunk, scope=scope, max_wait=0)

    return Budgets(
        ledger(SERVICE_SCOPE, tokens, 10_000), PRICES,
        dollars=ledger(COST_SCOPE, round(dollars * 1e6), 1) if dollars else None,
        user_ledger=(lambda scope, limit: ledger(scope, limit, 1)) if user or own else None,
        user_limit=user, user_limits=own, fallback_model=fallback,
    )


def reply(prompt: int, completion: int, model: str = "gpt-4o-mini") -> ModelReply:
    return ModelReply("ok", model, prompt, completion)


async def test_a_user_gets_their_daily_tokens_and_no_more_others_are_not_touched(records):
    book = budgets(records, user=1000)
    await book.reserve("a1", 600, user="ada@example.com", models=("gpt-4o-mini",))
    book.settle("a1", 600)
    with pytest.raises(BudgetExceeded) as refused:
        await book.reserve("a2", 600, user="Ada@Example.com", models=("gpt-4o-mini",))
    assert refusal(refused.value) == USER_TOKENS_USED_UP
    assert refused.value.scope == user_scope(data_owner("ada@example.com"))
    # Refused by the user's budget, the request holds nothing in the service's.
    assert "a2" not in book.tokens._leases
    await book.reserve("b1", 600, user="bob@example.com", models=("gpt-4o-mini",))  # his own day
    book.settle("b1", 600)
    await book.close()
    assert records.budget(SERVICE_SCOPE, FixedClock().now().date().isoformat()).used == 1200


async def test_own_limits_from_the_file_win_over_the_default(records):
    book = budgets(records, user=1000, own={"vip@example.com": 5000})
    await book.reserve("v1", 4000, user="VIP@example.com", models=("gpt-4o-mini",))
    assert book.daily_limit_for("vip@example.com") == 5000
    assert book.daily_limit_for("anyone@example.com") == 1000
    assert book.daily_limit_for(None) == 1_000_000
    assert not book.allows_batches


async def test_dollars_are_held_at_the_worst_price_and_settled_at_the_real_one(records):
    book = budgets(records, dollars=0.001, fallback="gpt-4o")  # a tenth of a cent a day
    # 100 tokens at the dearest price among gpt-4o-mini and its fallback gpt-4o ($10 per
    # million completion tokens): 1000 millionths, the whole day.
    await book.reserve("r1", 100, models=("gpt-4o-mini",))
    day = FixedClock().now().date().isoformat()
    with pytest.raises(BudgetExceeded) as refused:
        await book.reserve("r2", 1, models=("gpt-4o-mini",))
    assert refusal(refused.value) == SERVICE_DOLLARS_USED_UP
    # Answered by gpt-4o-mini: 40 + 60 tokens cost 0.000042 dollars, 42 millionths.
    book.settle("r1", 100, reply(40, 60))
    await book.reserve("r2", 50, models=("gpt-4o-mini",))  # room again
    book.settle("r2", 50)  # no reply (a call cut short): its worst case counts
    await book.close()
    assert records.budget(COST_SCOPE, day).used == 42 + 500
    assert records.budget(SERVICE_SCOPE, day).used == 150


async def test_an_unpriced_model_cannot_be_used_under_a_dollar_limit(records):
    book = budgets(records, dollars=5.0)
    with pytest.raises(BudgetExceeded) as refused:
        await book.reserve("r1", 10, models=("acme-llm",))
    assert refusal(refused.value) == UNPRICED
    # Nothing was held anywhere.
    await book.reserve("r2", 10, models=("gpt-4o-mini",))
    book.release("r2")


async def test_the_service_limit_still_names_itself(records):
    book = budgets(records, tokens=100)
    with pytest.raises(BudgetExceeded) as refused:
        await book.reserve("r1", 500, user="ada@example.com", models=("gpt-4o-mini",))
    assert refusal(refused.value) == SERVICE_TOKENS_USED_UP
    assert book.allows_batches


async def test_a_released_request_gives_back_every_budget(records):
    book = budgets(records, dollars=0.001, user=100)
    await book.reserve("r1", 100, user="ada@example.com", models=("gpt-4o-mini",))
    book.release("r1")
    await book.reserve("r2", 100, user="ada@example.com", models=("gpt-4o-mini",))
    book.settle("r2", 100, reply(50, 50))
    await book.housekeeping()
    await book.close()
    day = FixedClock().now().date().isoformat()
    assert records.budget(user_scope(data_owner("ada@example.com")), day).used == 100
    assert records.budget(COST_SCOPE, day).used == 38  # 50 x 0.15 + 50 x 0.60 millionths, rounded up


async def test_a_users_ledger_is_not_dropped_while_a_reservation_waits_for_its_lease(records):
    """Housekeeping drops idle user ledgers; one whose first lease is being opened (a
    store write) is not idle: dropped then, its lease would never be settled."""
    import asyncio

    book = budgets(records, user=10_000)
    reserving = asyncio.ensure_future(
        book.reserve("r1", 100, user="ada@example.com", models=("gpt-4o-mini",)))
    for _ in range(3):  # the reservation under way, housekeeping runs beside it
        await asyncio.sleep(0)
        await book.housekeeping()
    await reserving
    [ledger] = book._users.values()
    assert ledger is book._held["r1"].user  # the one housekeeping keeps up
    book.settle("r1", 100)
