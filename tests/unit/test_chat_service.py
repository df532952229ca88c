"""The chat use case's orchestration (application/chat.py): a request is answered and
recorded once (a redelivery is replayed), its budget held, settled or released,
its deadline kept, and its cost recorded, whatever the model or the store do.
Its collaborators have their own tests: test_context_window.py,
test_compaction.py, test_reply_sharing.py, test_batch_answers.py and
test_call_masking.py."""

import asyncio
from datetime import UTC, datetime

import pytest
from eventsourcing.application import project_aggregate

from application.batching import BatchCollector
from application.ports import ModelError, ModelReply
from domain.conversation import conversation_id
from domain.parked_batches import parked_batch_id
from domain.token_budget import SERVICE_SCOPE
from tests.unit.fakes import FakeBatchModel, FakeModel, FixedClock, ask, make_service, wire


def budget_of(service):
    return service.records.budget(SERVICE_SCOPE, "2026-11-25")


async def test_a_question_is_answered_and_recorded():
    service, model = make_service()
    payload = await wire(service, ask("r1", "hello there"))
    assert payload["response"] == "answer to hello there"
    assert payload["model"] == "gpt-4o-mini"
    assert payload["usage"]["total_tokens"] == payload["usage"]["prompt_tokens"] + 4
    assert payload["timestamp"] == "2026-11-25T12:00:00.000Z"
    stored = service.records.conversation(conversation_id("ada@example.com"))
    assert [type(e).__name__ for e in service.records.events.get(stored.id)] == [
        "Started", "UserMessageReceived", "ReplyRecorded"
    ]


async def test_a_redelivered_request_is_answered_from_the_record_not_the_model():
    service, model = make_service()
    first = await wire(service, ask("r1", "hello"))
    again = await wire(service, ask("r1", "hello"))
    assert again == first
    assert len(model.calls) == 1
    assert service.rate_limiter.acquired == 1


async def test_tokens_are_leased_before_the_call_and_settled_with_the_real_usage():
    service, model = make_service(daily_token_limit=10_000, max_tokens=100)
    model.script.append(ModelReply("short", "gpt-4o-mini", prompt_tokens=7, completion_tokens=3))
    await wire(service, ask("r1", "hello"))
    # The worker's lease is reserved in the stored budget while it is open ...
    assert budget_of(service).reserved == 5000 and budget_of(service).used == 0
    await service.close()
    # ... and settled with what its requests really used when it closes.
    budget = budget_of(service)
    assert budget.used == 10 and budget.reserved == 0
    events = [type(e).__name__ for e in service.records.events.get(budget.id)]
    assert events == ["Opened", "TokensReserved", "TokensSettled"]


async def test_a_request_beyond_the_daily_budget_is_refused_without_calling_the_model():
    # "hello" costs 1 + 4 overhead + 3 priming + 100 max_tokens = 108 tokens at most;
    # the second also carries the first turn (4 words + 8 overhead): 120.
    service, model = make_service(daily_token_limit=110, max_tokens=100)
    await wire(service, ask("r1", "hello"))
    refused = await wire(service, ask("r2", "hello"))
    assert refused["error"] == {
        "type": "budget_exceeded",
        "message": "The service's daily token budget is used up; please try again tomorrow.",
    }
    assert len(model.calls) == 1
    assert await wire(service, ask("r2", "hello")) == refused  # redelivered: same answer


async def test_a_failed_call_is_recorded_and_its_reservation_released():
    service, model = make_service(daily_token_limit=200, max_tokens=100)
    model.script.append(ModelError("upstream_error", "The model provider failed (HTTP 500)."))
    failed = await wire(service, ask("r1", "hello"))
    assert failed["error"] == {"type": "upstream_error", "message": "The model provider failed (HTTP 500)."}
    await service.close()
    assert budget_of(service).reserved == 0 and budget_of(service).used == 0
    answered = await wire(service, ask("r2", "hello"))
    assert "response" in answered
    conversation = service.records.conversation(conversation_id("ada@example.com"))
    assert [t.request_id for t in conversation.turns] == ["r2"]


async def test_a_request_waits_while_requests_in_flight_hold_the_budget():
    import asyncio

    # Each call reserves 1 + 4 + 3 + 100 = 108 of 200: two cannot be in flight at once.
    service, model = make_service(daily_token_limit=200, max_tokens=100)
    release = asyncio.Event()
    original = model.complete

    async def slow_first(call):
        if len(model.calls) == 0:
            model.calls.append(call)
            await release.wait()
            model.calls.pop()
        return await original(call)

    model.complete = slow_first
    first = asyncio.create_task(wire(service, ask("r1", "one", user_email="a@x.com")))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(wire(service, ask("r2", "two", user_email="b@x.com")))
    await asyncio.sleep(0.2)
    assert not second.done()  # waiting, not refused
    release.set()
    answers = await asyncio.gather(first, second)
    assert all("response" in answer for answer in answers)
    await service.close()
    assert budget_of(service).used == sum(a["usage"]["total_tokens"] for a in answers)


async def test_the_same_request_id_from_two_users_is_paid_twice():
    service, model = make_service()
    await wire(service, ask("same-key", "hello", user_email="a@x.com"))
    await wire(service, ask("same-key", "hello", user_email="b@x.com"))
    assert len(model.calls) == 2
    await service.close()
    assert budget_of(service).used == 2 * (1 + 3)  # "hello" in, "answer to hello" out, twice


async def test_an_unexpected_model_failure_is_an_upstream_error_and_frees_the_budget():
    service, model = make_service()

    async def broken(call):
        raise RuntimeError("protocol error with secret details")

    model.complete = broken
    failed = await wire(service, ask("r1", "hello"))
    assert failed["error"] == {"type": "upstream_error", "message": "The model call failed unexpectedly."}
    await service.close()
    assert budget_of(service).reserved == 0 and budget_of(service).used == 0
    assert await wire(service, ask("r1", "hello")) == failed


async def test_long_conversations_and_busy_budgets_load_from_snapshots():
    service, model = make_service(context_strategy="truncate")  # no summaries' tokens
    answers = [await wire(service, ask(f"r{n}", f"question {n}")) for n in range(60)]
    cid = conversation_id("ada@example.com")
    assert list(service.records.snapshots.get(cid)), "no snapshot of the conversation"
    conversation = service.records.conversation(cid)
    # The snapshot holds the newest CONVERSATION_TURNS_KEPT (20) turns; the events
    # after it add theirs; the events hold all 60, for the audit.
    assert 20 < len(conversation.turns) < 60
    assert conversation.turns[-1].reply == "answer to question 59"
    replayed = project_aggregate(None, service.records.events.get(cid))
    assert [turn.request_id for turn in replayed.turns] == [f"r{n}" for n in range(60)]

    await service.close()
    budget = budget_of(service)
    for n in range(100):  # the budget's snapshot comes at event 200
        budget.reserve(f"x{n}", 1, 10**9)
        budget.settle(f"x{n}", 1)
    service.records.save(budget)
    assert list(service.records.snapshots.get(budget.id)), "no snapshot of the budget"
    assert budget_of(service).used == sum(a["usage"]["total_tokens"] for a in answers) + 100


async def test_a_request_cancelled_during_the_model_call_gives_its_hold_back():
    import asyncio

    service, model = make_service(daily_token_limit=100_000)

    async def never(call):
        await asyncio.Event().wait()

    model.complete = never
    task = asyncio.create_task(wire(service, ask("r1", "hello")))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await service.close()
    assert budget_of(service).reserved == 0


async def test_a_failed_write_of_the_reply_leaves_nothing_half_saved_behind():
    service, model = make_service()
    original = service.writer.save
    calls = 0

    async def failing_second_write(*aggregates, **options):
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("disk full")
        await original(*aggregates, **options)

    service.writer.save = failing_second_write
    with pytest.raises(RuntimeError):
        await wire(service, ask("r1", "hello"))
    again = await wire(service, ask("r1", "hello"))  # the redelivery
    assert again["response"] == "answer to hello"
    follow_up = await wire(service, ask("r2", "and then?"))
    assert "response" in follow_up and len(model.calls) == 3


async def test_a_request_past_its_deadline_gets_an_upstream_error_instead_of_waiting():
    import asyncio

    service, model = make_service()

    async def stuck(call):
        await asyncio.Event().wait()

    model.complete = stuck
    deadline = service.clock.now().timestamp() + 0.1
    late = await asyncio.wait_for(wire(service, ask("r1", "hello", deadline=deadline)), 5)
    assert late["error"] == {
        "type": "upstream_error",
        "message": "The model could not answer before the request's deadline.",
    }
    await service.close()
    assert budget_of(service).reserved == 0


async def test_a_call_cut_short_by_the_deadline_is_counted_at_its_estimate():
    import asyncio

    service, model = make_service(daily_token_limit=100_000, max_tokens=100)

    async def slow(call):
        await asyncio.sleep(5)

    model.complete = slow
    deadline = service.clock.now().timestamp() + 0.1
    late = await wire(service, ask("r1", "hello", deadline=deadline))
    assert late["error"]["type"] == "upstream_error"
    await service.close()
    assert budget_of(service).used == 1 + 4 + 3 + 100  # the provider may have billed it


async def test_a_request_cut_short_while_an_open_circuit_held_it_back_costs_nothing():
    import asyncio

    from application.circuit_breaker import CircuitBreaker
    from application.ports import ModelError

    service, model = make_service(daily_token_limit=100_000, max_tokens=100)
    model.script = [ModelError("upstream_error", "down", True)]
    service.model = CircuitBreaker(model, failure_threshold=1, probe_interval=60)
    failed = await wire(service, ask("r1", "hello"))  # opens the circuit
    assert failed["error"]["type"] == "upstream_error"
    deadline = service.clock.now().timestamp() + 0.1
    late = await asyncio.wait_for(wire(service, ask("r2", "hello", deadline=deadline)), 5)
    assert late["error"]["type"] == "upstream_error" and len(model.calls) == 1
    await service.close()
    assert (budget_of(service).used, budget_of(service).reserved) == (0, 0)


async def test_each_recorded_reply_carries_its_cost_and_unknown_models_are_unpriced():
    service, model = make_service()
    model.script.append(ModelReply(
        "short", "gpt-4o-mini-2024-07-18", prompt_tokens=1000, completion_tokens=100,
        cached_tokens=400,
    ))
    model.script.append(ModelReply("short", "acme-llm", prompt_tokens=10, completion_tokens=1))
    priced = await wire(service, ask("r1", "hello"))
    unpriced = await wire(service, ask("r2", "hello again"))
    expected = (600 * 0.15 + 400 * 0.075 + 100 * 0.60) / 1e6
    assert priced["cost_usd"] == pytest.approx(expected)
    assert unpriced["cost_usd"] is None
    replies = [
        e for e in service.records.events.get(conversation_id("ada@example.com"))
        if type(e).__name__ == "ReplyRecorded"
    ]
    assert [(e.cached_tokens, e.cost) for e in replies] == [(400, priced["cost_usd"]), (0, None)]


async def test_the_rate_limiter_counts_the_calls_worst_case_then_what_it_used():
    service, _ = make_service(max_tokens=100)
    payload = await wire(service, ask("r1", "one"))
    # The same worst case the budget holds (1 + 4 + 3 + 100), then the reply's usage.
    assert service.rate_limiter.tokens == [108]
    assert service.rate_limiter.settled == {0: payload["usage"]["total_tokens"]}


def batch_holds(service, day="2026-11-25"):
    return {r: t for r, t in service.records.budget(SERVICE_SCOPE, day).reservations.items()
            if r.startswith("batch:")}


def parking_service(clock=None):
    model = FakeModel()
    collector = BatchCollector(FakeBatchModel(model), window=0.01, poll_interval=0.01)
    service, _ = make_service(model, service_parts={"batches": collector}, clock=clock)
    return service, model


async def test_a_batch_hold_is_given_back_when_another_replica_answered_the_request_meanwhile():
    service, model = parking_service()
    other, _ = make_service(model, records=service.records)  # no Batch API: answers live
    hold = service.batches.hold
    answered = []

    async def held_then_answered_elsewhere(*args, **kwargs):
        held = await hold(*args, **kwargs)
        if not answered:  # before this replica's change is saved: it conflicts
            answered.append(await other.handle(ask("r1", "now or later", batch=True)))
        return held

    service.batches.hold = held_then_answered_elsewhere
    response = await service.handle(ask("r1", "now or later", batch=True))

    assert answered and response.text == answered[0].text == "answer to now or later"
    await asyncio.gather(*service._recording)
    assert batch_holds(service) == {}  # not held for the rest of the day


async def test_a_batch_hold_taken_again_after_midnight_stays_in_the_day_it_was_first_taken():
    clock = FixedClock(datetime(2026, 11, 25, 23, 59, 59, tzinfo=UTC))
    service, model = parking_service(clock)
    other, _ = make_service(model, records=service.records, clock=clock)
    hold = service.batches.hold
    conflicts = []

    async def held_then_midnight(*args, **kwargs):
        held = await hold(*args, **kwargs)
        if not conflicts:  # another turn of the conversation is recorded meanwhile
            clock.advance(seconds=2)
            conflicts.append(await other.handle(ask("o1", "meanwhile")))
        return held

    service.batches.hold = held_then_midnight
    assert (await service.handle(ask("r1", "later is fine", batch=True))).parked
    [entry] = service.records.repository.get(parked_batch_id("batch_1")).requests.values()
    assert conflicts and entry["day"] == "2026-11-25"
    assert list(batch_holds(service)) == [entry["hold"]]
    assert batch_holds(service, "2026-11-26") == {}
