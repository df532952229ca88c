"""Answers through the Batch API (application/batch_answers.py): which requests go by
batch, the call sent once under an id that tells nothing of the user, its batch
recorded so that a redelivery waits for it, at half the price."""

import asyncio
from uuid import uuid4

import pytest

from application.batch_answers import BatchAnswers
from application.batching import BatchCollector
from application.chat_policy import ChatPolicy
from application.ports import ChatMessage, ModelCall, ModelError, ModelReply
from domain.conversation import Conversation
from domain.pricing import DEFAULT_PRICES, PriceTable
from tests.support.conversations import receive
from tests.unit.fakes import (
    FakeBatchModel,
    FakeModel,
    FixedClock,
    ask,
    event_names,
    make_service,
    used_tokens,
    wire,
)

CALL = ModelCall("gpt-4o-mini", [ChatMessage("user", "later is fine")], 100, 0.7)


class Conversations:
    """An AggregateStore of conversations in a dict: no conflicts, no outages."""

    def __init__(self, *conversations: Conversation) -> None:
        self.by_id = {conversation.id: conversation for conversation in conversations}

    async def change(self, aggregate_id, decide, create=None, wait_out_outages=True):
        return decide(self.by_id[aggregate_id])


def answers_with(collector: BatchCollector | None, *conversations: Conversation,
                 **policy) -> BatchAnswers:
    return BatchAnswers(collector, Conversations(*conversations), FixedClock(),
                        ChatPolicy(**policy), set())


# Through the service -----------------------------------------------------------------


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
    }, records=service.records)
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


# Batch answers themselves --------------------------------------------------------------


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


async def test_a_call_goes_in_the_next_batch_which_is_recorded_before_its_reply_comes():
    batches = FakeBatchModel(FakeModel())
    conversation = Conversation("ada@example.com")
    receive(conversation, "r1", "later is fine")
    answers = answers_with(BatchCollector(batches, window=0.01, poll_interval=0.01), conversation)
    answering = asyncio.ensure_future(answers.answer(conversation.id, "r1", CALL, None))
    while conversation.pending_batch("r1") is None:
        await asyncio.sleep(0.01)
    [(custom_id, sent)] = batches.batches["batch_1"]
    assert sent == CALL and len(custom_id) == 32 and int(custom_id, 16) >= 0  # a random id
    assert conversation.pending_batch("r1") == ("batch_1", custom_id)
    assert not answering.done()
    await batches.finish("batch_1")
    assert (await answering).text == "answer to later is fine"
    await answers.close()


async def test_a_call_already_sent_waits_for_its_batch_and_is_not_sent_again():
    model = FakeModel()
    batches = FakeBatchModel(model)
    reply = ModelReply("the answer", "gpt-4o-mini", 5, 2)
    batches.finished["batch_7"] = {"c7": reply, "c8": ModelError("invalid_request", "bad")}
    answers = answers_with(BatchCollector(batches, poll_interval=0.01))
    assert await answers.answer(uuid4(), "r1", CALL, ("batch_7", "c7")) == reply
    with pytest.raises(ModelError) as failed:
        await answers.answer(uuid4(), "r2", CALL, ("batch_7", "c8"))
    assert failed.value.error_type == "invalid_request"
    assert batches.batches == {} and model.calls == []
    await answers.close()
