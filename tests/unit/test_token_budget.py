import pytest

from domain.token_budget import BudgetBusy, BudgetExceeded, TokenBudget, budget_id


def test_reservations_hold_tokens_until_settled_with_the_real_usage():
    budget = TokenBudget("service", "2026-11-25")
    budget.reserve("r1", 600, limit=1000)
    assert budget.remaining(1000) == 400
    budget.settle("r1", 150)
    assert budget.used == 150 and budget.reserved == 0
    assert budget.remaining(1000) == 850


def test_a_reservation_beyond_what_is_left_today_is_refused_and_changes_nothing():
    budget = TokenBudget("service", "2026-11-25")
    budget.reserve("r1", 700, limit=1000)
    budget.settle("r1", 700)
    with pytest.raises(BudgetExceeded, match="400 tokens requested, 300 of 1000 left"):
        budget.reserve("r2", 400, limit=1000)
    assert budget.reserved == 0
    assert [type(e).__name__ for e in budget.collect_events()] == [
        "Opened", "TokensReserved", "TokensSettled"
    ]


def test_a_reservation_blocked_only_by_requests_in_flight_is_busy_not_refused():
    budget = TokenBudget("service", "2026-11-25")
    budget.reserve("r1", 600, limit=1000)
    with pytest.raises(BudgetBusy):
        budget.reserve("r2", 500, limit=1000)
    budget.settle("r1", 100)
    budget.reserve("r2", 500, limit=1000)
    assert budget.used + budget.reserved == 600


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
    budget.release("r1")
    assert budget.used == 80 and budget.reserved == 0
    assert len(budget.collect_events()) == 3


def test_one_budget_per_scope_and_day():
    assert TokenBudget("service", "2026-11-25").id == budget_id("service", "2026-11-25")
    assert budget_id("service", "2026-11-25") != budget_id("service", "2026-11-26")
    assert budget_id("service", "2026-11-25") != budget_id("user:a", "2026-11-25")


def test_reservations_left_unsettled_too_long_count_as_spent_in_full():
    from datetime import UTC, datetime, timedelta

    opened = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    budget = TokenBudget("service", "2026-11-25")
    budget.reserve("old", 500, limit=1000, at=opened)
    budget.reserve("new", 200, limit=1000, at=opened + timedelta(seconds=50))
    assert budget.expire_reservations(opened + timedelta(seconds=30)) == ["old"]
    assert (budget.used, budget.reservations) == (500, {"new": 200})
    assert [type(e).__name__ for e in budget.collect_events()][-1] == "ReservationExpired"
    budget.settle("old", 20)  # its holder was only slow: the real figure replaces the guess
    assert budget.used == 20
    budget.settle("old", 20)  # once
    assert budget.used == 20
    assert [type(e).__name__ for e in budget.collect_events()] == ["ExpiredReservationSettled"]
