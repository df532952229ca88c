"""The usage projection against a real SQLite view, fed by real Conversation events
saved through a real, encrypted ChatRecords."""

from __future__ import annotations

import hmac
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from eventsourcing.persistence import InfrastructureFactory, IntegrityError, Tracking
from eventsourcing.utils import Environment

from adapters.event_store import ChatRecords, event_store_env
from adapters.usage_view import SQLiteUsageView, open_usage_view
from application.usage import (
    RequestReceived,
    UsageChanges,
    UsageLine,
    UsageProjection,
    Window,
    catch_up,
    parse_window,
    usage_report,
    user_hash,
)
from domain.conversation import Conversation
from domain.pricing import DEFAULT_PRICES, PriceTable
from domain.token_budget import TokenBudget

SECRET = "usage-secret"
PRICES = PriceTable(DEFAULT_PRICES)
DAY1 = datetime(2026, 3, 1, tzinfo=UTC)


@dataclass
class Store:
    records: ChatRecords
    env: dict[str, str]
    path: str

    def projection(self) -> UsageProjection:
        return UsageProjection(open_usage_view(self.env), SECRET)

    def conversation_notifications(self) -> int:
        return len(self.records.recorder.select_notifications(
            start=None, limit=10**6, topics=UsageProjection.topics
        ))


@pytest.fixture
def store(tmp_path) -> Any:
    path = str(tmp_path / "events.sqlite")
    env = event_store_env(f"sqlite:///{path}", SECRET)
    records = ChatRecords(env=env)
    yield Store(records, env, path)
    records.close()


def at(day: int, hour: int = 0, minute: int = 0) -> datetime:
    return DAY1.replace(day=day, hour=hour, minute=minute)


def asked(conversation: Conversation, request_id: str, when: datetime,
          model: str = "gpt-4o-mini", images: int = 0) -> None:
    """The user's message, received at a chosen time (the event's own timestamp)."""
    conversation.trigger_event(
        Conversation.UserMessageReceived,
        timestamp=when,
        request_id=request_id,
        message="a private question",
        image_digests=[f"sha256:{n}" for n in range(images)],
        model=model,
        max_tokens=500,
        temperature=0.7,
        system_prompt=None,
        caller_context=None,
        history_turns=len(conversation.turns),
        request_digest=None,
    )


def answered(conversation: Conversation, request_id: str, model: str, prompt: int,
             completion: int, cached: int = 0) -> float | None:
    cost = PRICES.cost(model, prompt, cached, completion)
    conversation.record_reply(
        request_id=request_id, reply="a private answer", model=model, prompt_tokens=prompt,
        completion_tokens=completion, finish_reason="stop", answered_at="2026-03-01T00:00:00Z",
        processing_time=0.5, cached_tokens=cached, cost=cost,
    )
    return cost


def failed(conversation: Conversation, request_id: str) -> None:
    conversation.record_failure(request_id, "upstream_error", "The model failed.",
                                "2026-03-01T00:00:00Z", 0.1)


def traffic(records: ChatRecords) -> list[float]:
    """Two users, three conversations, six requests over three days; returns the costs."""
    ada = Conversation("ada@example.com")
    asked(ada, "r1", at(1, 9))
    c1 = answered(ada, "r1", "gpt-4o-mini", 100, 50, cached=20)
    asked(ada, "r2", at(1, 10), model="gpt-4o-latest", images=1)
    assert answered(ada, "r2", "gpt-4o-latest", 900, 30) is None  # no price: unpriced
    asked(ada, "r3", at(2, 8))
    failed(ada, "r3")
    work = Conversation("ada@example.com", "work")
    asked(work, "r4", at(2, 12))
    c4 = answered(work, "r4", "gpt-4o-mini", 40, 10)
    bob = Conversation("bob@example.com")
    asked(bob, "r5", at(2, 13))
    c5 = answered(bob, "r5", "gpt-4o-mini", 60, 20)
    asked(bob, "r6", at(3))  # still pending
    budget = TokenBudget("service", "2026-03-01")  # budget events are skipped
    budget.reserve("x", 100, 1000)
    records.save(ada, work, bob, budget)
    assert c1 and c4 and c5
    return [c1, c4, c5]


def test_the_report_adds_up_requests_tokens_cost_and_ratios(store):
    costs = traffic(store.records)
    projection = store.projection()
    catch_up(store.records, projection)

    [total] = usage_report(projection.view, Window())
    assert total == UsageLine(
        group=None, requests=6, answered=4, failed=1, prompt_tokens=1100, cached_tokens=20,
        completion_tokens=110, cost=pytest.approx(sum(costs)), unpriced=1, vision=1,
        conversations=3, users=2,
    )
    assert total.cost == pytest.approx((80 * 0.15 + 20 * 0.075 + 50 * 0.60 + 100 * 0.15
                                        + 30 * 0.60) / 1e6)
    assert total.vision_share == pytest.approx(100 / 6)
    assert total.turns_per_conversation == pytest.approx(4 / 3)
    assert total.messages_per_user == 3.0


def test_grouped_by_model_day_and_user_with_a_total_last(store):
    traffic(store.records)
    projection = store.projection()
    catch_up(store.records, projection)
    view = projection.view

    by_model = usage_report(view, Window(), "model")
    assert [(line.group, line.requests, line.answered, line.unpriced) for line in by_model] == [
        ("gpt-4o-latest", 1, 1, 1), ("gpt-4o-mini", 5, 3, 0), (None, 6, 4, 1),
    ]
    assert by_model[0].cost is None  # nothing priced: no cost, not zero
    assert by_model[0].vision_share == 100.0

    by_day = usage_report(view, Window(), "day")
    assert [(line.group, line.requests, line.answered, line.failed, line.conversations,
             line.users) for line in by_day] == [
        ("2026-03-01", 2, 2, 0, 1, 1),
        ("2026-03-02", 3, 2, 1, 3, 2),
        ("2026-03-03", 1, 0, 0, 1, 1),
        (None, 6, 4, 1, 3, 2),
    ]

    by_user = {line.group: line for line in usage_report(view, Window(), "user")}
    ada, bob = user_hash(SECRET, "ada@example.com"), user_hash(SECRET, "bob@example.com")
    assert set(by_user) == {ada, bob, None}
    assert (by_user[ada].requests, by_user[ada].conversations) == (4, 2)
    assert (by_user[bob].requests, by_user[bob].answered) == (2, 1)
    assert by_user[ada].turns_per_conversation == 1.5


def test_windows_of_whole_days_and_exact_times(store):
    traffic(store.records)
    projection = store.projection()
    catch_up(store.records, projection)

    def requests(since: str | None, until: str | None) -> int:
        return usage_report(projection.view, parse_window(since, until))[-1].requests

    assert requests("2026-03-02", "2026-03-02") == 3  # one whole day, both ends inclusive
    assert requests("2026-03-02", None) == 4
    assert requests(None, "2026-03-01") == 2
    assert requests("2026-03-01T10:00", "2026-03-02T12:00") == 2  # since in, until out
    assert requests("2026-03-01T11:00+01:00", "2026-03-01T10:00:00.000001Z") == 1
    assert requests("2026-03-04", None) == 0


def test_one_users_requests_by_their_address(store):
    traffic(store.records)
    projection = store.projection()
    catch_up(store.records, projection)
    [total] = usage_report(projection.view, Window(), user=user_hash(SECRET, " Ada@Example.COM"))
    assert (total.requests, total.users, total.conversations) == (4, 1, 2)


def test_the_view_holds_no_text_and_no_address_only_the_worker_s_user_hash(store):
    traffic(store.records)
    catch_up(store.records, store.projection())
    with sqlite3.connect(store.path) as db:
        rows = [row for table in ("usage_requests", "usage_conversations")
                for row in db.execute(f"SELECT * FROM {table}")]
    dump = repr(rows)
    assert "example.com" not in dump and "private" not in dump
    expected = hmac.new(SECRET.encode(), b"ada@example.com", "sha256").hexdigest()[:16]
    assert user_hash(SECRET, "ADA@example.com ") == expected
    assert expected in dump


def test_catching_up_twice_or_applying_events_again_changes_nothing(store):
    traffic(store.records)
    projection = store.projection()
    assert catch_up(store.records, projection) == store.conversation_notifications() == 14
    report = usage_report(projection.view, Window(), "day")
    assert catch_up(store.records, projection) == 0
    # The same events once more (as a racing catch-up would): set, never added.
    notifications = store.records.recorder.select_notifications(None, 100, topics=projection.topics)
    events = [store.records.mapper.to_domain_event(n) for n in notifications]
    projection.process_events(events, Tracking(store.records.name, notifications[-1].id + 1))
    assert usage_report(projection.view, Window(), "day") == report


def test_a_position_already_recorded_is_refused_and_changes_nothing(store):
    traffic(store.records)
    projection = store.projection()
    catch_up(store.records, projection)
    position = projection.view.max_tracking_id(store.records.name)
    before = usage_report(projection.view, Window())
    late = RequestReceived("another", "r9", "2026-03-01T00:00:00.000000Z", "gpt-4o-mini", "text")
    with pytest.raises(IntegrityError):
        projection.view.record(
            UsageChanges(received=[late]), Tracking(store.records.name, position)
        )
    assert usage_report(projection.view, Window()) == before  # rolled back


def test_a_new_view_resumes_from_the_tracked_position(store):
    traffic(store.records)
    first = store.projection()
    assert catch_up(store.records, first) == 14
    first.view.close()

    carol = Conversation("carol@example.com")
    asked(carol, "r7", at(3, 9))
    answered(carol, "r7", "gpt-4o-mini", 10, 5)
    store.records.save(carol)

    again = store.projection()  # a restart: a new view over the same file
    assert again.view.max_tracking_id(store.records.name) is not None
    assert catch_up(store.records, again, batch_size=2) == 3  # Started, message, reply only
    [total] = usage_report(again.view, Window())
    assert (total.requests, total.answered, total.users) == (7, 5, 3)


class RacingView(SQLiteUsageView):
    """A real view whose first write lets another catch-up finish first."""

    rival: Any = None

    def record(self, changes: UsageChanges, tracking: Tracking) -> None:
        if self.rival is not None:
            rival, self.rival = self.rival, None
            rival()
        super().record(changes, tracking)


def test_a_catch_up_that_lost_the_race_rolls_back_and_counts_nothing_twice(store):
    traffic(store.records)
    view = InfrastructureFactory.construct(
        env=Environment(UsageProjection.name, store.env)
    ).tracking_recorder(RacingView)
    loser = UsageProjection(view, SECRET)
    winner = store.projection()
    won: list[int] = []
    view.rival = lambda: won.append(catch_up(store.records, winner))

    assert catch_up(store.records, loser) == 0  # its batch was rolled back; nothing new after
    assert won == [14]
    [total] = usage_report(view, Window())
    assert (total.requests, total.answered, total.prompt_tokens) == (6, 4, 1100)


def test_concurrent_catch_ups_apply_every_notification_exactly_once(store):
    traffic(store.records)
    for n in range(20):
        extra = Conversation(f"user{n}@example.com")
        asked(extra, f"x{n}", at(4))
        answered(extra, f"x{n}", "gpt-4o-mini", 10, 1)
        store.records.save(extra)
    projections = [store.projection() for _ in range(4)]
    start = threading.Barrier(len(projections))
    applied: list[int] = []

    def run(projection: UsageProjection) -> None:
        start.wait()
        applied.append(catch_up(store.records, projection, batch_size=3))

    threads = [threading.Thread(target=run, args=(p,)) for p in projections]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sum(applied) == store.conversation_notifications() == 14 + 60
    [total] = usage_report(projections[0].view, Window())
    assert (total.requests, total.answered, total.completion_tokens, total.users) == (
        26, 24, 110 + 20, 22
    )


def test_windows_that_make_no_sense_are_refused():
    with pytest.raises(ValueError, match="--since"):
        parse_window("yesterday", None)
    with pytest.raises(ValueError, match="--until"):
        parse_window(None, "2026-13-01")
    with pytest.raises(ValueError, match="before"):
        parse_window("2026-03-02", "2026-03-01")
    window = parse_window("2026-03-01", "2026-03-01")
    assert (window.since, window.until) == (at(1), at(2))


def test_an_erased_users_rows_keep_their_accounting_but_not_whose_they_were(tmp_path):
    from adapters.event_store import ChatRecords, event_store_env
    from adapters.usage_view import open_usage_view
    from application.usage import UsageProjection, Window, catch_up, usage_report, user_hash
    from tests.support.conversations import erase, say

    env = event_store_env(f"sqlite:///{tmp_path}/u.sqlite", "usage-secret")
    records = ChatRecords(env=env)
    view = open_usage_view(env)
    projection = UsageProjection(view, "usage-secret", lambda m: m if m == "gpt-4o-mini" else "other")
    try:
        say(records, "ada@example.com", "r1")
        catch_up(records, projection)
        ada = user_hash("usage-secret", "ada@example.com")
        assert usage_report(view, Window(), user=ada)[-1].requests == 1
        erase(records, "ada@example.com", requested_by="dpo")
        catch_up(records, projection)
        assert usage_report(view, Window(), user=ada)[-1].requests == 0  # no longer linked
        [total] = usage_report(view, Window())
        assert (total.requests, total.prompt_tokens) == (1, 12)  # the accounting stays
    finally:
        view.close()
        records.close()


def test_summaries_of_compacted_context_count_as_spending_not_as_requests(store):
    costs = traffic(store.records)
    bea = Conversation("bea@example.com")
    asked(bea, "b1", at(2, 9))
    costs.append(answered(bea, "b1", "gpt-4o-mini", 10, 10))
    summary_cost = PRICES.cost("gpt-4.1-nano", 400, 0, 60)
    bea.compact(summary="a private summary", through_request_id="b1", content_from="2026-03-02",
                turns_covered=1, model="gpt-4.1-nano", prompt_tokens=400, completion_tokens=60,
                cost=summary_cost, compacted_at="2026-03-02T10:00:00Z")
    store.records.save(bea)
    projection = store.projection()
    catch_up(store.records, projection)

    *groups, total = usage_report(projection.view, Window(), by="model")
    assert total.requests == 7 and total.answered == 5 and total.unpriced == 1
    assert total.prompt_tokens == 1100 + 10 + 400 and total.completion_tokens == 110 + 10 + 60
    assert total.cost == pytest.approx(sum(c for c in costs if c) + summary_cost)
    [nano] = [g for g in groups if g.group == "gpt-4.1-nano"]
    assert nano.requests == 0 and nano.prompt_tokens == 400


def test_the_worker_projects_the_events_it_saved_without_reading_them_back(store, tmp_path):
    store.records.keep_saved_events(UsageProjection.topics)
    traffic(store.records)
    decoded = []
    decode = store.records.mapper.to_domain_event
    store.records.mapper.to_domain_event = lambda n: decoded.append(n.id) or decode(n)
    mine = store.projection()
    catch_up(store.records, mine)
    assert decoded == []  # every conversation event was this process's own
    assert store.records._just_saved == {}  # none kept once applied

    # Another process (the usage command, another replica) decodes them: the same report.
    other_env = {**store.env}
    other = ChatRecords(env=other_env)
    try:
        other_view_env = {**other_env, "SQLITE_DBNAME": str(tmp_path / "other.sqlite")}
        events = other.recorder.select_notifications(start=None, limit=100, topics=UsageProjection.topics)
        theirs = UsageProjection(open_usage_view(other_view_env), SECRET)
        theirs.process_events([other.mapper.to_domain_event(n) for n in events],
                              Tracking(other.name, events[-1].id))
        assert usage_report(theirs.view, Window(), "model") == usage_report(mine.view, Window(), "model")
    finally:
        other.close()
