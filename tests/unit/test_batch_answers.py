"""Answers through the Batch API (application/batch_answers.py): which requests go by
batch, the call sent once under an id that tells nothing of the user, the request
parked (its batch recorded in the store) instead of held, its budget held apart,
and its answer recorded and delivered exactly once, by whichever replica's poll
records it, at half the price."""

import asyncio

from application.batch_answers import DELIVERY_GRACE, BatchAnswers, _delivered
from application import batching
from application.batching import BatchCollector
from application.chat_policy import ChatPolicy
from application.contract import ChatResponse
from application.ports import ModelError
from domain.parked_batches import PARKED_INDEX_ID, ParkedBatch, ParkedBatches, parked_batch_id
from domain.pricing import DEFAULT_PRICES, PriceTable
from domain.token_budget import SERVICE_SCOPE
from tests.unit.fakes import (
    FakeBatchModel,
    FakeModel,
    FixedClock,
    ask,
    event_names,
    make_service,
    used_tokens,
)

DAY = "2026-11-25"


class Delivered:
    """The responses a replica produced, by request id."""

    def __init__(self) -> None:
        self.responses: list[tuple[str, ChatResponse]] = []

    async def __call__(self, request_id: str, response: ChatResponse) -> None:
        self.responses.append((request_id, response))

    @property
    def keys(self) -> list[str]:
        return [key for key, _ in self.responses]


def batch_service(batches: FakeBatchModel, model: FakeModel, records=None, clock=None, **policy):
    collector = BatchCollector(batches, window=0.01, poll_interval=0.01)
    service, _ = make_service(model, service_parts={"batches": collector}, records=records,
                              clock=clock, **policy)
    return service


def budget(service):
    return service.records.budget(SERVICE_SCOPE, DAY)


def parked_index(service) -> ParkedBatches:
    return service.records.repository.get(PARKED_INDEX_ID)


def parked_batch(service, batch_id: str) -> ParkedBatch:
    return service.records.repository.get(parked_batch_id(batch_id))


# Parking ---------------------------------------------------------------------------


async def test_a_batch_request_is_parked_once_its_batch_is_recorded_and_answered_by_a_poll():
    model = FakeModel()
    batches = FakeBatchModel(model)
    service = batch_service(batches, model, prices=PriceTable(DEFAULT_PRICES))

    response = await service.handle(ask("r1", "later is fine", batch=True))

    # Nothing to send now: the request waits in its batch, held by nobody.
    assert response.parked
    assert event_names(service) == ["Started", "UserMessageReceived", "BatchSubmitted"]
    [(custom_id, _)] = batches.batches["batch_1"]
    assert len(custom_id) == 32 and int(custom_id, 16) >= 0  # random: nothing of the user
    entry = parked_batch(service, "batch_1").requests[custom_id]
    assert entry["request_id"] == "r1" and entry["day"] == DAY
    assert parked_index(service).open == {"batch_1": 1}
    # Its worst case is held apart in the day's budget, not in a lease.
    held = budget(service).reservations
    assert held == {entry["hold"]: entry["tokens"]} and entry["hold"].startswith("batch:")
    assert service.ledger.leases_opened == 0

    delivered = Delivered()
    assert await service.batches.poll(delivered) == 0  # not ended yet
    await batches.finish("batch_1")
    assert await service.batches.poll(delivered) == 1

    [(key, answer)] = delivered.responses
    wire = answer.to_json()
    assert key == "r1" and wire["response"] == "answer to later is fine" and wire["batch"] is True
    usage = wire["usage"]
    full = DEFAULT_PRICES["gpt-4o-mini"].cost(usage["prompt_tokens"], 0, usage["completion_tokens"])
    assert abs(wire["cost_usd"] - full / 2) < 1e-12
    assert event_names(service) == [
        "Started", "UserMessageReceived", "BatchSubmitted", "ReplyRecorded"
    ]
    # Settled with the real usage; the batch is done and no longer listed.
    assert budget(service).reservations == {} and used_tokens(service) == usage["total_tokens"]
    assert parked_batch(service, "batch_1").closed and parked_index(service).open == {}
    assert await service.batches.poll(delivered) == 0 and len(delivered.responses) == 1
    await service.close()


async def test_a_redelivered_parked_request_stays_parked_and_pays_nothing_again():
    model = FakeModel()
    batches = FakeBatchModel(model)
    service = batch_service(batches, model)
    assert (await service.handle(ask("r1", "slow please", batch=True))).parked

    # Another worker (a fresh service on the same store) gets the record again.
    other = batch_service(batches, model, records=service.records)
    again = await other.handle(ask("r1", "slow please", batch=True))

    assert again.parked and len(batches.batches) == 1 and model.calls == []
    assert len(budget(service).reservations) == 1


async def test_one_replica_records_and_delivers_each_answer_the_others_nothing():
    model = FakeModel()
    batches = FakeBatchModel(model)
    first = batch_service(batches, model)
    for n in range(5):
        response = await first.handle(ask(f"r{n}", f"question {n}", batch=True,
                                          user_email=f"u{n}@example.com"))
        assert response.parked
    await asyncio.sleep(0.05)
    second = batch_service(batches, model, records=first.records)
    third = batch_service(batches, model, records=first.records)
    for batch_id in list(batches.batches):
        await batches.finish(batch_id)

    outs = [Delivered(), Delivered(), Delivered()]
    await asyncio.gather(*(
        service.batches.poll(out) for service, out in zip((second, third, first), outs)
    ))
    keys = [key for out in outs for key in out.keys]
    assert sorted(keys) == [f"r{n}" for n in range(5)]  # each exactly once
    for n in range(5):
        assert event_names(first, f"u{n}@example.com").count("ReplyRecorded") == 1
    assert budget(first).reservations == {}


async def test_a_failed_batch_is_each_requests_error_and_its_hold_is_released():
    model = FakeModel()
    model.script = [ModelError("invalid_request", "bad")]
    batches = FakeBatchModel(model)
    service = batch_service(batches, model, batch_priority=0)
    assert service.batched(ask("x", "y", priority=-1)) and not service.batched(ask("x", "y"))
    assert (await service.handle(ask("r1", "low", priority=-5))).parked
    await batches.finish("batch_1")
    delivered = Delivered()
    await service.batches.poll(delivered)
    [(key, response)] = delivered.responses
    assert key == "r1" and response.error_type == "invalid_request"
    assert budget(service).reservations == {} and used_tokens(service) == 0


async def test_a_request_past_its_deadline_ends_as_an_error_counted_in_full():
    model = FakeModel()
    batches = FakeBatchModel(model)
    clock = FixedClock()
    service = batch_service(batches, model, clock=clock)
    deadline = clock.now().timestamp() + 3600
    assert (await service.handle(ask("r1", "whenever", batch=True, deadline=deadline))).parked
    held = next(iter(budget(service).reservations.values()))

    delivered = Delivered()
    clock.advance(hours=2)
    await service.batches.poll(delivered)

    [(key, response)] = delivered.responses
    assert key == "r1" and response.error_type == "upstream_error"
    assert "deadline" in (response.error_message or "")
    # The batch goes on and may bill it: its worst case counts.
    assert used_tokens(service) == held and budget(service).reservations == {}
    await batches.finish("batch_1")  # answered after all: nothing more goes out
    await service.batches.poll(delivered)
    assert len(delivered.responses) == 1


async def recorded_not_delivered():
    """One batch request parked, its batch ended, its answer recorded by a poll
    whose delivery failed: (model, batches, clock, service)."""
    model = FakeModel()
    batches = FakeBatchModel(model)
    clock = FixedClock()
    service = batch_service(batches, model, clock=clock)
    assert (await service.handle(ask("r1", "hello", batch=True))).parked
    await batches.finish("batch_1")

    async def broken(request_id, response):
        raise RuntimeError("the broker went away")

    await service.batches.poll(broken)
    return model, batches, clock, service


async def test_an_outcome_recorded_by_a_replica_that_stopped_is_delivered_by_another_later():
    model, batches, clock, service = await recorded_not_delivered()  # then it stops
    assert event_names(service)[-1] == "ReplyRecorded"

    other = batch_service(batches, model, records=service.records, clock=clock)
    delivered = Delivered()
    polls = batches.polls
    await other.batches.poll(delivered)
    assert delivered.responses == []  # its recorder may still deliver it
    clock.advance(seconds=DELIVERY_GRACE + 1)
    await other.batches.poll(delivered)
    assert delivered.keys == ["r1"] and delivered.responses[0][1].text == "answer to hello"
    assert batches.polls == polls + 1  # an ended batch's outcome is read once


async def test_beyond_the_parking_bound_a_batch_request_is_answered_live():
    model = FakeModel()
    batches = FakeBatchModel(model)
    collector = BatchCollector(batches, window=0.01, poll_interval=0.01)
    service, _ = make_service(model, service_parts={"batches": collector, "max_parked": 2})
    assert (await service.handle(ask("r1", "one", batch=True, user_email="a@example.com"))).parked
    assert (await service.handle(ask("r2", "two", batch=True, user_email="b@example.com"))).parked
    live = await service.handle(ask("r3", "three", batch=True, user_email="c@example.com"))
    assert not live.parked and live.text == "answer to three" and live.source == "model"
    assert service.batches.parked_seen == 2


async def test_a_call_withdrawn_before_its_batch_is_sent_costs_nothing_and_holds_nothing():
    model = FakeModel()
    batches = FakeBatchModel(model)
    service, _ = make_service(model, service_parts={
        "batches": BatchCollector(batches, window=0.2, poll_interval=0.01)
    })
    gone = asyncio.ensure_future(service.handle(ask("g1", "never mind", batch=True)))
    await asyncio.sleep(0.05)
    gone.cancel()  # still collecting: taken out of the batch
    await asyncio.gather(gone, return_exceptions=True)
    await asyncio.sleep(0.05)
    assert batches.batches == {} and budget(service).reservations == {}
    await service.close()


async def test_one_batch_per_model():
    model = FakeModel()
    batches = FakeBatchModel(model)
    service = batch_service(batches, model)
    parked = await asyncio.gather(
        service.handle(ask("m1", "mini", batch=True)),
        service.handle(ask("m2", "big", batch=True, model="gpt-4.1", user_email="bob@example.com")),
    )
    assert all(p.parked for p in parked)
    assert sorted(
        [call.model for _, call in entries] for entries in batches.batches.values()
    ) == [["gpt-4.1"], ["gpt-4o-mini"]]


async def test_a_batch_not_created_fails_its_requests_and_releases_their_holds():
    class Refusing(FakeBatchModel):
        async def submit(self, entries):
            raise ModelError("rate_limited", "Enqueued token limit reached.", True)

    model = FakeModel()
    service = batch_service(Refusing(model), model)
    response = await service.handle(ask("r1", "hi", batch=True))
    assert response.error_type == "rate_limited"
    assert budget(service).reservations == {} and parked_index_or_none(service) is None


def parked_index_or_none(service):
    try:
        return parked_index(service)
    except Exception:
        return None


# Which requests ------------------------------------------------------------------------


def answers_with(collector: BatchCollector | None, **policy) -> BatchAnswers:
    return BatchAnswers(collector, None, FixedClock(), ChatPolicy(**policy), set())


def test_a_request_is_batched_when_it_asks_and_there_is_a_batch_model():
    collector = BatchCollector(FakeBatchModel(FakeModel()))
    assert answers_with(collector).batched(ask("r1", "hi", batch=True))
    assert not answers_with(collector).batched(ask("r1", "hi", priority=-5))  # no threshold
    assert not answers_with(None).batched(ask("r1", "hi", batch=True))
    assert not answers_with(None, batch_priority=0).batched(ask("r1", "hi", priority=-5))


def test_a_request_below_the_priority_threshold_is_batched():
    answers = answers_with(BatchCollector(FakeBatchModel(FakeModel())), batch_priority=0)
    assert [answers.batched(ask("r1", "hi", priority=p)) for p in (-5, -1, 0, 3)] == [
        True, True, False, False
    ]
    assert answers.batched(ask("r1", "hi", priority=3, batch=True))


def test_a_hold_id_is_the_same_on_every_replica_and_tells_nothing_of_the_user():
    from uuid import uuid4
    cid = uuid4()
    assert BatchAnswers.hold_id(cid, "r1") == BatchAnswers.hold_id(cid, "r1")
    assert BatchAnswers.hold_id(cid, "r1") != BatchAnswers.hold_id(cid, "r2")
    assert str(cid) not in BatchAnswers.hold_id(cid, "r1")


async def test_a_request_an_older_version_left_waiting_in_its_batch_is_adopted_and_answered():
    from application.ports import ChatMessage, ModelCall
    from domain.conversation import Conversation
    from tests.support.conversations import receive

    model = FakeModel()
    batches = FakeBatchModel(model)
    service = batch_service(batches, model)
    # What an older version recorded: BatchSubmitted on the conversation, nothing else.
    conversation = Conversation("ada@example.com")
    receive(conversation, "old-1", "from before")
    conversation.submit_to_batch("old-1", "batch_old", "c" * 32, "2026-11-25T11:00:00.000Z")
    service.records.save(conversation)
    batches.batches["batch_old"] = [
        ("c" * 32, ModelCall("gpt-4o-mini", [ChatMessage("user", "from before")], 100, 0.7))
    ]

    redelivered = await service.handle(ask("old-1", "from before", batch=True))
    assert redelivered.parked and parked_index(service).open == {"batch_old": 1}
    assert await service.handle(ask("old-1", "from before", batch=True))  # adopted once
    assert len(parked_batch(service, "batch_old").requests) == 1

    await batches.finish("batch_old")
    delivered = Delivered()
    await service.batches.poll(delivered)
    assert delivered.keys == ["old-1"] and delivered.responses[0][1].text == "answer to from before"
    assert parked_index(service).open == {}


async def test_a_delivered_answer_whose_mark_failed_is_marked_later_never_delivered_again():
    model = FakeModel()
    batches = FakeBatchModel(model)
    service = batch_service(batches, model)
    assert (await service.handle(ask("r1", "hello", batch=True))).parked
    await batches.finish("batch_1")
    parked = service.batches.parked
    change = parked.change
    failed = []

    async def failing_marks(aggregate_id, decide, *args, **kwargs):
        if getattr(decide, "func", None) is _delivered and not failed:
            failed.append(aggregate_id)
            raise TimeoutError("the store did not answer")
        return await change(aggregate_id, decide, *args, **kwargs)

    parked.change = failing_marks
    delivered = Delivered()
    await service.batches.poll(delivered)
    assert delivered.keys == ["r1"] and failed  # delivered, not marked
    assert await service.batches.poll(delivered) == 0
    assert delivered.keys == ["r1"]
    assert parked_batch(service, "batch_1").closed and parked_index(service).open == {}


async def test_an_answer_recorded_during_a_long_poll_is_not_redelivered_by_that_poll():
    model, batches, clock, service = await recorded_not_delivered()  # its delivery under way
    other = batch_service(batches, model, records=service.records, clock=clock)
    change = other.batches.conversations.change

    async def slow(*args, **kwargs):  # the poll goes on past DELIVERY_GRACE
        clock.advance(seconds=DELIVERY_GRACE + 1)
        return await change(*args, **kwargs)

    other.batches.conversations.change = slow
    delivered = Delivered()
    await other.batches.poll(delivered)
    assert delivered.responses == []  # recorded when this poll started: not old


async def test_a_batch_created_but_not_recorded_at_first_is_recorded_and_keeps_its_hold(monkeypatch):
    monkeypatch.setattr(batching, "RECORD_FIRST_WAIT", 0.01, raising=False)
    model = FakeModel()
    batches = FakeBatchModel(model)
    service = batch_service(batches, model)
    parked = service.batches.parked
    change = parked.change
    failures = []

    async def failing_once(aggregate_id, *args, **kwargs):
        if aggregate_id != PARKED_INDEX_ID and not failures:
            failures.append(aggregate_id)
            raise RuntimeError("the store refused the write")
        return await change(aggregate_id, *args, **kwargs)

    parked.change = failing_once
    response = await service.handle(ask("r1", "later is fine", batch=True))

    # The batch exists and is billed: its request stays parked, its hold held.
    assert failures and response.parked and len(batches.batches) == 1
    [entry] = parked_batch(service, "batch_1").requests.values()
    assert budget(service).reservations == {entry["hold"]: entry["tokens"]}
    assert parked_index(service).open == {"batch_1": 1}
    await batches.finish("batch_1")
    delivered = Delivered()
    assert await service.batches.poll(delivered) == 1 and budget(service).reservations == {}
