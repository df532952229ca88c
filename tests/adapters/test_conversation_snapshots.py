"""Conversations in the event store across versions of the aggregate."""

from adapters.event_store import ChatRecords
from domain.conversation import Answer, Conversation, Failure
from tests.support.conversations import answer, receive


def test_a_snapshot_taken_when_outcomes_were_wire_dictionaries_loads_as_typed_outcomes():
    """A version 1 snapshot (outcomes as the response JSON) is upcast on loading."""
    app = ChatRecords(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    conversation = Conversation("old@example.com")
    for request_id in ("r1", "r2", "r3"):
        receive(conversation, request_id, "hello")
    answer(conversation, "r1", "hi")
    conversation.record_failure("r2", "upstream_error", "down", "2026-01-01T00:00:00Z", 1.0)
    app.save(conversation)
    app.take_snapshot(conversation.id)
    recorder = app.snapshots.recorder
    stored = recorder.select_events(conversation.id)[-1]
    state = app.mapper.transcoder.decode(stored.state)
    state["state"]["class_version"] = 1
    state["state"]["outcomes"] = {
        "r1": {"response": "hi", "model": "gpt-4o-mini",
               "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
               "cost_usd": 0.0000045, "finish_reason": "stop",
               "timestamp": "2026-01-01T00:00:00Z", "processing_time": 0.5, "cached": True},
        "r2": {"error": {"type": "upstream_error", "message": "down"},
               "timestamp": "2026-01-01T00:00:00Z", "processing_time": 1.0},
    }
    recorder._stored_events[-1] = type(stored)(
        originator_id=stored.originator_id, originator_version=stored.originator_version,
        topic=stored.topic, state=app.mapper.transcoder.encode(state),
    )
    app.repository.cache = None

    loaded = app.repository.get(conversation.id)
    assert loaded.outcome("r1") == Answer("hi", "gpt-4o-mini", 10, 5, 0.0000045, "stop",
                                          "2026-01-01T00:00:00Z", 0.5, "cache")
    assert loaded.outcome("r2") == Failure("upstream_error", "down", "2026-01-01T00:00:00Z", 1.0)
    assert loaded.is_pending("r3")


def test_a_store_written_by_the_previous_version_loads_with_typed_outcomes(tmp_path):
    """tests/data/conversations_v1.sqlite was written by the version before typed
    outcomes and Shredded (SECRET_KEY "fixture-secret"): encrypted version 1
    snapshots of Ada's conversation (two answers, a failure, a request pending);
    of Bob's, whose erasure came after his snapshot; of Carol's, erased while c1
    was on its way (its reply recorded as the text "[erased]"), then answered
    again; and of Dave's, whose old answer the retention policy expired (the text
    "[expired]")."""
    import shutil
    from pathlib import Path

    from adapters.event_store import event_store_env
    from domain.conversation import ERASED, EXPIRED, conversation_id

    data = Path(__file__).parent.parent / "data" / "conversations_v1.sqlite"
    shutil.copy(data, tmp_path / "events.sqlite")
    records = ChatRecords(env=event_store_env(f"sqlite:///{tmp_path}/events.sqlite", "fixture-secret"))
    try:
        ada = records.conversation(conversation_id("ada@example.com"))
        assert list(records.snapshots.get(ada.id))  # loaded from its snapshot
        assert ada.outcome("a1") == Answer("hello Ada", "gpt-4o-mini", 10, 5, 0.0000045, "stop",
                                           "2026-11-30T10:00:00.000Z", 0.5, "model")
        assert ada.outcome("a2").source == "cache" and ada.outcome("a2").reply == "Ada"
        assert ada.outcome("a3") == Failure("upstream_error", "down", "2026-11-30T10:00:01.000Z", 1.0)
        assert ada.is_pending("a4") and ada.pending_message("a4") == "still waiting"
        assert [(t.user_message, t.reply) for t in ada.turns] == [
            ("my name is Ada", "hello Ada"), ("what is my name?", "Ada")]

        bob = records.conversation(conversation_id("bob@example.com"))
        assert bob.user_email == ERASED and bob.turns == []
        assert bob.outcome("b1").reply == ERASED and bob.outcome("b1").prompt_tokens == 10

        # Shredded content stored as text by that version is Shredded, never context.
        carol = records.conversation(conversation_id("carol@example.com"))
        first, second = carol.turns
        assert (first.user_message, first.reply, first.readable) == (ERASED, ERASED, False)
        assert (second.reply, second.readable) == ("welcome back", True)
        assert carol.outcome("c1").reply == ERASED
        assert [t.request_id for t in carol.recent_turns(10, 10_000, len)] == ["c2"]
        [late] = [e for e in records.events.get(carol.id) if type(e).__name__ == "ReplyRecorded"
                  and e.request_id == "c1"]
        assert late.reply == ERASED and late.prompt_tokens == 10

        dave = records.conversation(conversation_id("dave@example.com"))
        assert dave.outcome("d1").reply == EXPIRED and dave.outcome("d2").reply == "new answer"
        assert [t.request_id for t in dave.turns] == ["d2"]
        # A new snapshot is sealed with the key of the oldest content it still holds.
        from adapters.personal_data import _content_days

        assert _content_days(vars(dave)) == [dave.outcome("d2").answered_at[:10]] * 2
    finally:
        records.close()
