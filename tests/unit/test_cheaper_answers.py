"""The use case spends the least for the same answers: the response cache,
single-flight, context compaction and the Batch API (ports faked in memory)."""

import asyncio

from application.batching import BatchCollector
from application.contract import ChatRequest
from application.ports import ModelError, ModelReply
from domain.conversation import conversation_id, data_owner
from domain.pricing import DEFAULT_PRICES, PriceTable
from domain.token_budget import SERVICE_SCOPE
from tests.unit.fakes import FakeBatchModel, FakeModel, MemoryCache, make_service, wire


def ask(request_id: str, message: str, **fields) -> ChatRequest:
    return ChatRequest(request_id, fields.pop("user_email", "ada@example.com"), message, **fields)


def used_tokens(service) -> int:
    return service.records.budget(SERVICE_SCOPE, "2026-11-25").used


def event_names(service, user="ada@example.com", thread=None) -> list[str]:
    return [type(e).__name__ for e in service.records.events.get(conversation_id(user, thread))]


# The response cache ---------------------------------------------------------------


async def test_a_repeated_deterministic_request_is_answered_from_the_cache_for_free():
    cache = MemoryCache()
    service, model = make_service(service_parts={"cache": cache})
    first = await wire(service, ask("r1", "capital of France?", temperature=0.0, conversation_id="a"))
    await service.close()  # settles the budget lease
    spent = used_tokens(service)
    again = await wire(service, ask("r2", "capital of France?", temperature=0.0, conversation_id="b"))
    assert len(model.calls) == 1
    assert again["response"] == first["response"] and again["cached"] is True
    assert "cached" not in first
    assert again["cost_usd"] == 0.0 and again["usage"]["total_tokens"] == 0
    await service.close()
    assert used_tokens(service) == spent  # the budget was not charged
    assert event_names(service, thread="b") == ["Started", "UserMessageReceived", "ReplyRecorded"]
    recorded = service.records.events.get(conversation_id("ada@example.com", "b"))
    assert list(recorded)[-1].source == "cache"


async def test_only_temperature_zero_is_cached_unless_any_temperature_is_allowed():
    cache = MemoryCache()
    service, model = make_service(service_parts={"cache": cache})
    for n in range(2):
        await wire(service, ask(f"r{n}", "tell me a story", temperature=0.7, conversation_id=str(n)))
    assert len(model.calls) == 2 and not cache.entries

    anything, any_model = make_service(service_parts={"cache": MemoryCache()},
                                       cache_any_temperature=True)
    for n in range(2):
        await wire(anything, ask(f"r{n}", "tell me a story", temperature=0.7, conversation_id=str(n)))
    assert len(any_model.calls) == 1


async def test_the_cache_is_per_user_unless_global_and_the_history_must_be_the_same():
    cache = MemoryCache()
    service, model = make_service(service_parts={"cache": cache})
    await wire(service, ask("r1", "2+2?", temperature=0.0))
    await wire(service, ask("r2", "2+2?", temperature=0.0, user_email="bob@example.com"))
    assert len(model.calls) == 2  # another user
    await wire(service, ask("r3", "2+2?", temperature=0.0))
    assert len(model.calls) == 3  # the same user, but the history now differs
    assert {scope for scope, _ in cache.entries} == {
        data_owner("ada@example.com"), data_owner("bob@example.com")
    }

    shared, shared_model = make_service(service_parts={"cache": MemoryCache()}, cache_scope="global")
    await wire(shared, ask("r1", "2+2?", temperature=0.0))
    answer = await wire(shared, ask("r2", "2+2?", temperature=0.0, user_email="bob@example.com"))
    assert len(shared_model.calls) == 1 and answer["cached"] is True


async def test_a_cache_outage_is_a_miss_and_erasure_forgets_the_users_entries():
    cache = MemoryCache()
    service, model = make_service(service_parts={"cache": cache})
    cache.down = True
    for n in range(2):
        answer = await wire(service, ask(f"r{n}", "hi", temperature=0.0, conversation_id=str(n)))
        assert "error" not in answer
    assert len(model.calls) == 2
    cache.down = False
    await wire(service, ask("r3", "hi", temperature=0.0, conversation_id="3"))
    assert cache.entries
    assert await service.forget_cached("Ada@Example.com") == 1 and not cache.entries


# Single-flight -------------------------------------------------------------------


async def test_identical_requests_in_flight_at_once_share_one_model_call():
    model = FakeModel(delay=0.05)
    service, _ = make_service(model)
    answers = await asyncio.gather(*(
        wire(service, ask(f"r{n}", "same question", temperature=0.0, conversation_id=str(n)))
        for n in range(5)
    ))
    assert len(model.calls) == 1
    assert {a["response"] for a in answers} == {"answer to same question"}
    assert sorted(a.get("cached", False) for a in answers) == [False, True, True, True, True]
    assert sum(a["usage"]["total_tokens"] for a in answers) == answers[0]["usage"]["total_tokens"] or \
        len([a for a in answers if a["usage"]["total_tokens"]]) == 1
    await service.close()
    assert used_tokens(service) == max(a["usage"]["total_tokens"] for a in answers)


async def test_when_the_shared_call_fails_each_request_asks_on_its_own():
    model = FakeModel(delay=0.05)
    model.script = [ModelError("content_filter", "no")]
    service, _ = make_service(model)
    answers = await asyncio.gather(*(
        wire(service, ask(f"r{n}", "same question", temperature=0.0, conversation_id=str(n)))
        for n in range(3)
    ))
    assert [a.get("error", {}).get("type") for a in answers].count("content_filter") == 1
    assert sum("response" in a for a in answers) == 2
    assert len(model.calls) == 2  # the leader's, then one shared by the other two


# Context compaction ---------------------------------------------------------------


async def test_old_turns_are_summarised_once_and_the_summary_is_reused():
    service, model = make_service(context_max_turns=4, summary_model="cheap-model")
    for n in range(12):
        await wire(service, ask(f"r{n}", f"question {n}"))
    summaries = [c for c in model.calls if c.model == "cheap-model"]
    # Half the window is kept after each summary: one summary per two new turns
    # past the window, never one per request.
    assert 3 <= len(summaries) <= 5, len(summaries)
    last = model.calls[-1]
    assert last.messages[0].role == "system" and last.messages[0].text.startswith(
        "Summary of the earlier conversation:\n"
    )
    users = [m.text for m in last.messages if m.role == "user"]
    assert users[-1] == "question 11" and len(users) <= 5
    # The second summary builds on the first, and covers only turns not yet summarised.
    second = summaries[1].messages[-1].text
    assert second.startswith("Summary so far:\n") and "question 0" not in second.split("\n\n", 1)[1]
    names = event_names(service)
    assert names.count("ContextCompacted") == len(summaries)
    conversation = service.records.conversation(conversation_id("ada@example.com"))
    assert conversation.context_summary() is not None
    compacted = [e for e in service.records.events.get(conversation.id)
                 if type(e).__name__ == "ContextCompacted"]
    assert all(e.prompt_tokens > 0 and e.model == "cheap-model" for e in compacted)


async def test_summaries_are_charged_to_the_budget_and_truncate_never_summarises():
    service, model = make_service(context_max_turns=2)
    answers = [await wire(service, ask(f"r{n}", f"question {n}")) for n in range(6)]
    await service.close()
    summary_tokens = sum(
        e.prompt_tokens + e.completion_tokens
        for e in service.records.events.get(conversation_id("ada@example.com"))
        if type(e).__name__ == "ContextCompacted"
    )
    assert summary_tokens > 0
    assert used_tokens(service) == sum(a["usage"]["total_tokens"] for a in answers) + summary_tokens

    plain, plain_model = make_service(context_max_turns=2, context_strategy="truncate")
    for n in range(6):
        await wire(plain, ask(f"r{n}", f"question {n}"))
    assert len(plain_model.calls) == 6 and "ContextCompacted" not in event_names(plain)


async def test_a_failed_summary_falls_back_to_dropping_the_oldest_turns():
    service, model = make_service(context_max_turns=2)
    for n in range(3):
        await wire(service, ask(f"r{n}", f"question {n}"))
    model.script = [ModelError("upstream_error", "down")]  # the summary call fails
    answer = await wire(service, ask("r3", "question 3"))
    assert answer["response"] == "answer to question 3"
    assert model.calls[-2].model == "gpt-4o-mini" and "Summary" not in model.calls[-1].messages[0].text
    assert [m.text for m in model.calls[-1].messages if m.role == "user"] == [
        "question 1", "question 2", "question 3"
    ]
    assert "ContextCompacted" not in event_names(service)


async def test_an_erased_users_summary_is_gone():
    service, model = make_service(context_max_turns=2)
    for n in range(4):
        await wire(service, ask(f"r{n}", f"question {n}"))
    conversation = service.records.conversation(conversation_id("ada@example.com"))
    assert conversation.context_summary() is not None
    conversation.erase(requested_by="ada", erased_at="2026-11-25T12:00:00Z")
    assert conversation.context_summary() is None and conversation.unsummarised_turns() == []


# The Batch API --------------------------------------------------------------------


async def test_a_batch_request_is_answered_when_its_batch_ends_at_half_the_price():
    model = FakeModel()
    batches = FakeBatchModel(model)
    collector = BatchCollector(batches, window=0.01, poll_interval=0.01)
    service, _ = make_service(model, service_parts={"batches": collector},
                              prices=PriceTable(DEFAULT_PRICES))
    answering = asyncio.ensure_future(wire(service, ask("r1", "later is fine", batch=True)))
    while not batches.batches:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert not answering.done() and event_names(service)[-1] == "BatchSubmitted"
    await batches.finish("batch_1")
    answer = await answering
    assert answer["response"] == "answer to later is fine" and answer["batch"] is True
    usage = answer["usage"]
    full = DEFAULT_PRICES["gpt-4o-mini"].cost(usage["prompt_tokens"], 0, usage["completion_tokens"])
    assert abs(answer["cost_usd"] - full / 2) < 1e-12
    assert event_names(service) == [
        "Started", "UserMessageReceived", "BatchSubmitted", "ReplyRecorded"
    ]


async def test_a_redelivered_batch_request_waits_for_its_batch_instead_of_paying_again():
    model = FakeModel()
    batches = FakeBatchModel(model)
    service, _ = make_service(model, service_parts={
        "batches": BatchCollector(batches, window=0.01, poll_interval=0.01)
    })
    first = asyncio.ensure_future(wire(service, ask("r1", "slow please", batch=True)))
    while "BatchSubmitted" not in event_names(service):
        await asyncio.sleep(0.01)
    first.cancel()  # the worker lost the partition, say
    await asyncio.gather(first, return_exceptions=True)

    # Another worker (a fresh service on the same store) gets the record again.
    other, _ = make_service(model, service_parts={
        "batches": BatchCollector(batches, window=0.01, poll_interval=0.01)
    })
    other.records = service.records
    again = asyncio.ensure_future(wire(other, ask("r1", "slow please", batch=True)))
    await asyncio.sleep(0.05)
    await batches.finish("batch_1")
    answer = await again
    assert answer["response"] == "answer to slow please"
    assert len(batches.batches) == 1 and len(model.calls) == 1


async def test_priority_below_the_batch_threshold_goes_by_batch_and_failures_are_recorded():
    model = FakeModel()
    model.script = [ModelError("invalid_request", "bad")]
    batches = FakeBatchModel(model)
    service, _ = make_service(model, service_parts={
        "batches": BatchCollector(batches, window=0.01, poll_interval=0.01)
    }, batch_priority=0)
    assert service.batched(ask("x", "y", priority=-1)) and not service.batched(ask("x", "y"))
    answering = asyncio.ensure_future(wire(service, ask("r1", "low", priority=-5)))
    while not batches.batches:
        await asyncio.sleep(0.01)
    await batches.finish("batch_1")
    answer = await answering
    assert answer["error"]["type"] == "invalid_request"
    await service.close()
    assert used_tokens(service) == 0


async def test_one_batch_per_model_and_a_call_withdrawn_before_sending_costs_nothing():
    model = FakeModel()
    batches = FakeBatchModel(model)
    service, _ = make_service(model, service_parts={
        "batches": BatchCollector(batches, window=0.2, poll_interval=0.01)
    })
    gone = asyncio.ensure_future(wire(service, ask("g1", "never mind", batch=True,
                                                     user_email="gone@example.com")))
    await asyncio.sleep(0.05)
    gone.cancel()  # still collecting: taken out of the batch
    await asyncio.gather(gone, return_exceptions=True)
    answers = [
        asyncio.ensure_future(wire(service, ask("m1", "mini", batch=True))),
        asyncio.ensure_future(wire(service, ask("m2", "big", batch=True, model="gpt-4.1",
                                                 user_email="bob@example.com"))),
    ]
    while len(batches.batches) < 2:
        await asyncio.sleep(0.01)
    assert sorted(
        [call.model for _, call in entries] for entries in batches.batches.values()
    ) == [["gpt-4.1"], ["gpt-4o-mini"]]
    for batch_id in list(batches.batches):
        await batches.finish(batch_id)
    done = await asyncio.gather(*answers)
    assert {a["response"] for a in done} == {"answer to mini", "answer to big"}
    custom_ids = [cid for entries in batches.batches.values() for cid, _ in entries]
    assert all(len(cid) == 32 and "@" not in cid for cid in custom_ids)  # nothing of the user
    await service.close()
    # The withdrawn request's hold was given back: only the two answers are spent.
    assert used_tokens(service) == sum(a["usage"]["total_tokens"] for a in done)


async def test_a_summary_whose_save_conflicted_is_reused_not_paid_again():
    from eventsourcing.persistence import RecordConflictError

    service, model = make_service(context_max_turns=2, summary_model="cheap-model")
    for n in range(3):
        await wire(service, ask(f"r{n}", f"question {n}"))
    save = service.writer.save
    conflicts = []

    async def conflicting_once(conversation):
        if not conflicts and any(type(e).__name__ == "ContextCompacted"
                                 for e in conversation.pending_events):
            conflicts.append(conversation.id)
            conversation.collect_events()  # what another writer's win leaves unsaved
            service._cache.pop(conversation.id, None)
            raise RecordConflictError("another worker wrote first")
        return await save(conversation)

    service.writer.save = conflicting_once
    answer = await wire(service, ask("r3", "question 3"))
    assert conflicts and answer["response"] == "answer to question 3"
    assert [c.model for c in model.calls].count("cheap-model") == 1
    assert event_names(service).count("ContextCompacted") == 1


async def test_a_follower_does_not_wait_past_its_own_deadline():
    from adapters.system_clock import SystemClock

    model = FakeModel(delay=0.5)
    service, _ = make_service(model)
    service.clock = SystemClock()  # deadlines pass in real time here
    now = service.clock.now().timestamp()
    leader = asyncio.ensure_future(wire(service, 
        ask("slow", "same question", temperature=0.0, conversation_id="a")))
    await asyncio.sleep(0.05)
    follower = await asyncio.wait_for(wire(service, ask(
        "hurried", "same question", temperature=0.0, conversation_id="b", deadline=now + 0.1
    )), timeout=0.4)
    assert follower["error"]["type"] == "upstream_error"
    assert "deadline" in follower["error"]["message"]
    assert (await leader)["response"] == "answer to same question"
    assert len(model.calls) == 1
