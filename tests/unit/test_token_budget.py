import pytest

from domain.token_budget import BudgetExceeded, TokenBudget, budget_id


def test_reservations_hold_tokens_until_settled_with_the_real_usage():
    budget = TokenBudget("service", "2026-11-25")
    budget.reserve("r1", 600, limit=1000)
    assert budget.remaining(1000) == 400
    budget.settle("r1", 150)
    assert budget.used == 150 and budget.reserved == 0
    assert budget.remaining(1000) == 850


def test_a_reservation_beyond_the_limit_is_refused_and_changes_nothing():
    budget = TokenBudget("service", "2026-11-25")
    budget.reserve("r1", 600, limit=1000)
    with pytest.raises(BudgetExceeded, match="500 tokens requested, 400 of 1000 left"):
        budget.reserve("r2", 500, limit=1000)
    assert budget.reserved == 600
    assert [type(e).__name__ for e in budget.collect_events()] == ["Opened", "TokensReserved"]


def test_released_tokens_can_be_reserved_again():
    budget = TokenBudget("service", "2026-11-25")
    budget.reserve("r1", 1000, limit=1000)
    budget.release("r1")
    budget.reserve("r2", 1000, limit=1000)
    assert budget.reserved == 1000


def test_repeated_commands_are_idempotent():
    budget = TokenBudget("service", "2026-11-25")
    budget.reserve("r1", 100, limit=1000)
    budget.reserve("r1", 100, limit=1000)
    budget.settle("r1", 80)
    budget.settle("r1", 80)
    budget.reserve("r1", 100, limit=1000)  # already settled: a redelivery, not a new request
    budget.release("r1")
    assert budget.used == 80 and budget.reserved == 0


def test_one_budget_per_scope_and_day():
    assert TokenBudget("service", "2026-11-25").id == budget_id("service", "2026-11-25")
    assert budget_id("service", "2026-11-25") != budget_id("service", "2026-11-26")
    assert budget_id("service", "2026-11-25") != budget_id("user:a", "2026-11-25")
