"""A request id means one request (application/chat.py, application/request_digest.py,
domain/conversation.py): the digest of what a request asked is recorded with it, so
that its id seen again with other content is refused as invalid_request, unrecorded,
while a true redelivery is still answered from the record."""

from dataclasses import replace

import pytest

from application.images import Image
from application.pii import EMAIL, PiiMasker
from application.request_digest import request_digest
from domain.conversation import ERASED, Conversation, RequestIdReused, conversation_id
from tests.support.conversations import answer, receive
from tests.unit.fakes import (
    ScriptedDetector,
    ask,
    event_names,
    make_service,
    privacy_of,
    records_with_keys,
    wire,
)

REUSED = {"type": "invalid_request", "message": "request id already used for a different request"}


def conversation_of(service) -> Conversation:
    return service.records.conversation(conversation_id("ada@example.com"))


# The digest ---------------------------------------------------------------------------


def test_the_digest_covers_what_a_request_asks_and_nothing_else():
    first = ask("r1", "hello", temperature=0.5, max_tokens=100)
    same = request_digest(first)
    assert same.startswith("request-v1:") and len(same) == len("request-v1:") + 64
    # How it is served, and where it belongs, are not what it asks.
    assert request_digest(replace(first, priority=9, deadline=123.0)) == same
    assert request_digest(replace(first, request_id="r2", user_email="bob@x.com",
                                  conversation_id="t")) == same
    assert request_digest(replace(first, temperature=0.5)) == same
    for changed in (
        replace(first, message="hello!"), replace(first, context="earlier"),
        replace(first, system_prompt="be brief"), replace(first, model="gpt-4o"),
        replace(first, max_tokens=101), replace(first, temperature=0.6),
        replace(first, batch=True), replace(first, temperature=None),
        replace(first, images=(Image("image/png", b"one"),)),
    ):
        assert request_digest(changed) != same, changed
    with_image = replace(first, images=(Image("image/png", b"one"),))
    assert request_digest(replace(with_image, images=(Image("image/png", b"two"),))) != \
        request_digest(with_image)


# Through the service --------------------------------------------------------------------


async def test_an_id_used_again_for_other_content_is_refused_and_the_first_record_stands():
    service, model = make_service()
    first = await wire(service, ask("r1", "what is 2+2?"))
    events = event_names(service)
    refused = await wire(service, ask("r1", "tell me a secret"))
    assert refused["error"] == REUSED
    assert len(model.calls) == 1
    assert event_names(service) == events  # nothing recorded
    assert await wire(service, ask("r1", "what is 2+2?")) == first  # the first still replays
    assert conversation_of(service).outcome("r1").reply == "answer to what is 2+2?"


async def test_a_true_redelivery_is_answered_from_the_record():
    service, model = make_service()
    first = await wire(service, ask("r1", "hello", temperature=0.2))
    again = await wire(service, ask("r1", "hello", temperature=0.2, priority=5))
    assert again == first and len(model.calls) == 1


async def test_any_other_field_asked_differently_is_another_request():
    service, model = make_service()
    await wire(service, ask("r1", "hello"))
    assert (await wire(service, ask("r1", "hello", max_tokens=50)))["error"] == REUSED
    assert (await wire(service, ask("r1", "hello", system_prompt="be kind")))["error"] == REUSED
    assert len(model.calls) == 1


async def test_a_redelivery_of_a_pending_request_is_still_answered():
    service, model = make_service()
    request = ask("r1", "still waiting")
    conversation = Conversation("ada@example.com")
    receive(conversation, "r1", "still waiting")  # as a worker that stopped left it
    conversation.digests["r1"] = request_digest(request)
    service.records.save(conversation)
    answered = await wire(service, request)
    assert answered["response"] == "answer to still waiting"
    assert len(model.calls) == 1


async def test_a_pending_request_asked_again_with_other_content_is_refused():
    service, model = make_service()
    conversation = Conversation("ada@example.com")
    conversation.receive_message(
        request_id="r1", message="first", image_digests=[], model="gpt-4o-mini", max_tokens=100,
        temperature=0.7, system_prompt=None, caller_context=None, history_turns=0,
        request_digest=request_digest(ask("r1", "first")),
    )
    service.records.save(conversation)
    assert (await wire(service, ask("r1", "second")))["error"] == REUSED
    assert model.calls == [] and conversation_of(service).is_pending("r1")


async def test_a_request_recorded_before_digests_were_kept_replays_as_before():
    service, model = make_service()
    conversation = Conversation("ada@example.com")
    receive(conversation, "r1", "old question")  # no digest
    answer(conversation, "r1", "old answer")
    service.records.save(conversation)
    replayed = await wire(service, ask("r1", "anything else"))
    assert replayed["response"] == "old answer" and model.calls == []


async def test_after_an_erasure_an_id_is_not_checked_and_its_record_replays():
    service, model = make_service(records=records_with_keys())
    await wire(service, ask("r1", "my secret"))
    assert conversation_of(service).digests
    await privacy_of(service, None).erase_user("ada@example.com", "dpo")
    service.conversations.evict([conversation_id("ada@example.com")])
    stored = conversation_of(service)
    assert stored.digests == {}
    # The digest was erased with the words: the id cannot be told apart any more.
    replayed = await wire(service, ask("r1", "other words"))
    assert "error" not in replayed and replayed["response"] == str(ERASED)
    # Read again from the events (the digest field is shredded there too).
    events = [e for e in service.records.events.get(stored.id)
              if type(e).__name__ == "UserMessageReceived"]
    assert events[0].request_digest == ERASED


async def test_a_refusal_of_personal_data_records_the_digest_of_what_it_asked():
    detector = ScriptedDetector({"grace@example.com": EMAIL})
    service, model = make_service(pii_mode="block", service_parts={"pii": PiiMasker(detector)})
    refused = await wire(service, ask("r1", "mail grace@example.com"))
    assert refused["error"]["type"] == "pii_rejected"
    assert conversation_of(service).digests["r1"] == request_digest(ask("r1", "mail grace@example.com"))
    assert await wire(service, ask("r1", "mail grace@example.com")) == refused  # redelivered
    assert (await wire(service, ask("r1", "a clean question")))["error"] == REUSED
    assert model.calls == []


# The aggregate --------------------------------------------------------------------------


def test_the_conversation_checks_only_digests_it_knows_of_the_same_form():
    conversation = Conversation("ada@example.com")
    conversation.receive_message(
        request_id="r1", message="m", image_digests=[], model="gpt-4o-mini", max_tokens=10,
        temperature=0.7, system_prompt=None, caller_context=None, history_turns=0,
        request_digest="request-v1:aaa",
    )
    conversation.check_same_request("r1", "request-v1:aaa")
    with pytest.raises(RequestIdReused):
        conversation.check_same_request("r1", "request-v1:bbb")
    conversation.check_same_request("r1", "request-v2:bbb")  # another form: unknown
    conversation.check_same_request("r2", "request-v1:bbb")  # never seen
    conversation.erase(requested_by="ada", erased_at="2026-11-25T12:00:00Z")
    conversation.check_same_request("r1", "request-v1:bbb")


def test_expired_requests_lose_their_digests_with_their_content():
    conversation = Conversation("ada@example.com")
    for request_id, day in (("old", "2026-01-01"), ("new", "2026-03-01")):
        conversation.receive_message(
            request_id=request_id, message="m", image_digests=[], model="gpt-4o-mini",
            max_tokens=10, temperature=0.7, system_prompt=None, caller_context=None,
            history_turns=0, request_digest=f"request-v1:{request_id}",
        )
        conversation.record_failure(request_id, "upstream_error", "down", f"{day}T00:00:00Z", 0.1)
    conversation.expire(before_day="2026-02-01", expired_at="2026-03-02T00:00:00Z")
    assert conversation.digests == {"new": "request-v1:new"}
