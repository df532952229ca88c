"""The digests of what requests asked, on a real (SQLite) event store: personal data
like the words they are derived from (encrypted with the user's data key, shredded
by erasure and retention, in events and snapshots), and snapshots taken before they
were kept load without them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from adapters.event_store import ChatRecords, event_store_env
from application.contract import ChatRequest
from application.pii import EMAIL, PiiMasker
from application.request_digest import request_digest
from domain.conversation import ERASED, EXPIRED, Conversation, conversation_id
from tests.adapters.test_crypto_shredding import raw_bytes
from tests.support.conversations import answer, expire, privacy_of
from tests.unit.fakes import FixedClock, ScriptedDetector, make_service

SECRET = "digest-secret"
ADA = conversation_id("ada@example.com")


@pytest.fixture
async def service(tmp_path):
    path = tmp_path / "events.sqlite"
    records = ChatRecords(env=event_store_env(f"sqlite:///{path}", SECRET))
    detector = ScriptedDetector({"grace@example.com": EMAIL})
    service, _ = make_service(records=records, clock=FixedClock(datetime.now(UTC)),
                              pii_mode="block", service_parts={"pii": PiiMasker(detector)})
    service.path = path
    yield service
    await service.close()
    records.close()


def digest_of(request_id: str, message: str) -> str:
    return request_digest(ChatRequest(request_id, "ada@example.com", message))


async def test_digests_are_encrypted_at_rest_in_events_and_snapshots(service):
    await service.handle(ChatRequest("r1", "ada@example.com", "a question"))
    refused = await service.handle(ChatRequest("r2", "ada@example.com", "mail grace@example.com"))
    assert refused.error_type == "pii_rejected"
    digests = {"r1": digest_of("r1", "a question"), "r2": digest_of("r2", "mail grace@example.com")}
    records = service.records
    assert records.conversation(ADA).digests == digests
    records.take_snapshot(ADA)
    data = raw_bytes(service.path)
    for digest in digests.values():
        hexdigest = digest.split(":")[1].encode()
        assert hexdigest not in data and hexdigest[:16] not in data
    # Read back in clear through the mapper, from the events and from the snapshot.
    names = {type(e).__name__: e for e in records.events.get(ADA)}
    assert names["UserMessageReceived"].request_digest == digests["r1"]
    assert names["RequestFailed"].request_digest == digests["r2"]
    [snapshot] = list(records.snapshots.get(ADA))
    assert snapshot.state["digests"] == digests


async def test_an_erasure_shreds_the_digests_in_events_and_snapshots(service):
    await service.handle(ChatRequest("r1", "ada@example.com", "a question"))
    await service.handle(ChatRequest("r2", "ada@example.com", "mail grace@example.com"))
    records = service.records
    records.take_snapshot(ADA)
    await privacy_of(records).erase_user("ada@example.com", requested_by="dpo")
    events = {type(e).__name__: e for e in records.events.get(ADA)}
    assert events["UserMessageReceived"].request_digest == ERASED
    assert events["RequestFailed"].request_digest == ERASED
    assert events["RequestFailed"].error_type == "pii_rejected"  # the accounting stays
    [old, *_] = list(records.snapshots.get(ADA))
    assert old.state["digests"] == {}
    assert records.conversation(ADA).digests == {}
    # Nothing is checked any more: the recorded outcome replays.
    service.conversations.evict([ADA])
    again = await service.handle(ChatRequest("r1", "ada@example.com", "other words"))
    assert again.ok and again.withheld


def asked_and_answered(conversation: Conversation, request_id: str, when: datetime) -> None:
    """A request received and answered at `when` (its event sealed with that day's key)."""
    conversation.trigger_event(
        Conversation.UserMessageReceived, timestamp=when, request_id=request_id,
        message=f"{request_id} question", image_digests=[], model="gpt-4o-mini", max_tokens=10,
        temperature=0.7, system_prompt=None, caller_context=None, history_turns=0,
        request_digest=f"request-v1:{request_id}",
    )
    conversation.record_reply(
        request_id=request_id, reply=f"{request_id} reply", model="gpt-4o-mini", prompt_tokens=1,
        completion_tokens=1, finish_reason="stop",
        answered_at=when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        processing_time=0.1, cached_tokens=0, cost=None,
    )


def test_retention_shreds_old_digests_and_keeps_recent_ones(tmp_path):
    records = ChatRecords(env=event_store_env(f"sqlite:///{tmp_path}/events.sqlite", SECRET))
    try:
        now = datetime.now(UTC)
        conversation = Conversation("ada@example.com")
        asked_and_answered(conversation, "old", now - timedelta(days=40))
        asked_and_answered(conversation, "new", now)
        records.save(conversation)
        expire(records, FixedClock(now), retention_days=30)
        loaded = records.conversation(conversation.id)
        assert loaded.digests == {"new": "request-v1:new"}
        assert loaded.outcome("old").reply == EXPIRED
        received = {e.request_id: e.request_digest for e in records.events.get(conversation.id)
                    if type(e).__name__ == "UserMessageReceived"}
        assert received == {"old": EXPIRED, "new": "request-v1:new"}
        # The fresh snapshot taken after the expiry holds only the recent digest (a
        # snapshot sealed with the old day's key would have lost them all).
        assert list(records.snapshots.get(conversation.id))[-1].state["digests"] == {
            "new": "request-v1:new"}
    finally:
        records.close()


def test_a_snapshot_taken_before_digests_were_kept_loads_without_them():
    """A version 2 snapshot has no digests: upcast to none, so nothing is checked."""
    app = ChatRecords(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    conversation = Conversation("old@example.com")
    conversation.receive_message(
        request_id="r1", message="hello", image_digests=[], model="gpt-4o-mini", max_tokens=10,
        temperature=0.7, system_prompt=None, caller_context=None, history_turns=0,
        request_digest="request-v1:abc",
    )
    answer(conversation, "r1", "hi")
    app.save(conversation)
    app.take_snapshot(conversation.id)
    recorder = app.snapshots.recorder
    stored = recorder.select_events(conversation.id)[-1]
    state = app.mapper.transcoder.decode(stored.state)
    assert state["state"]["class_version"] == 4 and state["state"]["digests"] == {"r1": "request-v1:abc"}
    state["state"]["class_version"] = 2
    del state["state"]["digests"]
    recorder._stored_events[-1] = type(stored)(
        originator_id=stored.originator_id, originator_version=stored.originator_version,
        topic=stored.topic, state=app.mapper.transcoder.encode(state),
    )
    app.repository.cache = None

    loaded = app.repository.get(conversation.id)
    assert loaded.digests == {} and loaded.outcome("r1").reply == "hi"
    loaded.check_same_request("r1", "request-v1:other")  # unknown: not checked
