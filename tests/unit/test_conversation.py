from uuid import UUID

import pytest
from eventsourcing.application import Application

from domain.conversation import (
    Answer,
    Conversation,
    Failure,
    RequestAlreadyReceived,
    RequestNotPending,
    conversation_id,
)
from tests.support.conversations import answer, receive
from tests.unit.fakes import WordCounter


def test_id_is_derived_from_email_and_thread_so_any_worker_finds_it():
    assert conversation_id("Ada@Example.com ") == conversation_id("ada@example.com")
    assert conversation_id("ada@example.com", "t1") != conversation_id("ada@example.com")
    assert Conversation("ada@example.com", "t1").id == conversation_id("ada@example.com", "t1")
    assert isinstance(conversation_id("a@b.c"), UUID)


def test_a_reply_becomes_a_turn_and_the_outcome_of_its_request():
    conversation = Conversation("ada@example.com")
    receive(conversation, "r1", "hello")
    assert conversation.is_pending("r1") and conversation.outcome("r1") is None
    answer(conversation, "r1", "hi there")
    assert [(t.user_message, t.reply) for t in conversation.turns] == [("hello", "hi there")]
    outcome = conversation.outcome("r1")
    assert isinstance(outcome, Answer) and outcome.reply == "hi there"
    assert (outcome.prompt_tokens, outcome.completion_tokens) == (10, 5)


def test_a_request_is_received_once_and_answered_only_when_pending():
    conversation = Conversation("ada@example.com")
    receive(conversation, "r1", "hello")
    with pytest.raises(RequestAlreadyReceived):
        receive(conversation, "r1", "hello")
    with pytest.raises(RequestNotPending):
        answer(conversation, "r2", "nobody asked")
    # A refused command records nothing and leaves the state as it was.
    assert [type(e).__name__ for e in conversation.collect_events()] == [
        "Started", "UserMessageReceived"
    ]
    assert conversation.version == 2 and conversation.turns == []


def test_a_failure_is_an_outcome_but_not_a_turn():
    conversation = Conversation("ada@example.com")
    receive(conversation, "r1", "hello")
    conversation.record_failure("r1", "upstream_error", "down", "2026-01-01T00:00:00Z", 1.0)
    assert conversation.turns == []
    outcome = conversation.outcome("r1")
    assert isinstance(outcome, Failure)
    assert (outcome.error_type, outcome.error_message) == ("upstream_error", "down")
    assert not conversation.is_pending("r1")


def test_recent_turns_keep_the_newest_within_turn_and_token_bounds():
    conversation = Conversation("ada@example.com")
    for n in range(5):
        receive(conversation, f"r{n}", f"question {n}")
        answer(conversation, f"r{n}", f"answer {n}")
    counter = WordCounter().count
    assert [t.request_id for t in conversation.recent_turns(3, 10_000, counter)] == [
        "r2", "r3", "r4"
    ]
    # Each turn costs 2 + 2 words + 8 overhead = 12 tokens: room for two.
    assert [t.request_id for t in conversation.recent_turns(10, 25, counter)] == ["r3", "r4"]
    assert conversation.recent_turns(0, 10_000, counter) == []
    assert conversation.recent_turns(10, 11, counter) == []


def test_state_is_rebuilt_from_stored_events():
    app = Application(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    conversation = Conversation("ada@example.com")
    receive(conversation, "r1", "hello")
    answer(conversation, "r1", "hi")
    receive(conversation, "r2", "again")
    app.save(conversation)
    copy = app.repository.get(conversation.id)
    assert copy.turns == conversation.turns
    assert copy.outcomes == conversation.outcomes
    assert copy.is_pending("r2")
    before_reply = app.repository.get(conversation.id, version=2)
    assert before_reply.turns == [] and before_reply.is_pending("r1")


def test_replies_recorded_before_prices_were_kept_replay_as_unpriced():
    """A version 1 ReplyRecorded (no cost fields) is upcast, not an exception."""
    app = Application()
    conversation = Conversation("old@example.com")
    receive(conversation, "r1", "hello")
    answer(conversation, "r1", "hi")
    app.save(conversation)
    # Rewrite the stored reply as an older worker wrote it.
    recorder = app.recorder
    stored = recorder.select_events(conversation.id)
    reply = stored[-1]
    state = app.mapper.transcoder.decode(reply.state)
    del state["cached_tokens"], state["cost"]
    state["class_version"] = 1
    old = type(reply)(
        originator_id=reply.originator_id,
        originator_version=reply.originator_version,
        topic=reply.topic,
        state=app.mapper.transcoder.encode(state),
    )
    recorder._stored_events[-1] = old  # the POPO recorder keeps them in a list
    app.repository.cache = None

    replayed = app.repository.get(conversation.id)
    assert replayed.outcome("r1").cost is None
    event = list(app.events.get(conversation.id))[-1]
    assert (event.cached_tokens, event.cost) == (0, None)


def test_a_recorded_reply_carries_its_cost():
    conversation = Conversation("ada@example.com")
    receive(conversation, "r1", "hello")
    answer(conversation, "r1", "hi")
    assert conversation.outcome("r1").cost == 0.0000045



def _receive_by(conversation, request_id, received_at, worker):
    conversation.receive_message(
        request_id=request_id, message="hello", image_digests=[], model="gpt-4o-mini",
        max_tokens=100, temperature=0.7, system_prompt=None, caller_context=None,
        history_turns=0, received_at=received_at, worker=worker,
    )


def test_a_pending_request_says_since_when_and_by_which_worker_its_call_may_be_out():
    conversation = Conversation("ada@example.com")
    _receive_by(conversation, "r1", "2026-01-01T00:00:00+00:00", "worker-a")
    assert conversation.pending_call("r1") == ("2026-01-01T00:00:00+00:00", "worker-a")
    conversation.take_over_call("r1", "2026-01-01T00:02:00+00:00", "worker-b")
    assert conversation.pending_call("r1") == ("2026-01-01T00:02:00+00:00", "worker-b")
    with pytest.raises(RequestNotPending):
        conversation.take_over_call("r2", "2026-01-01T00:02:00+00:00", "worker-b")
    conversation.abandon_call("r1", "2026-01-01T00:02:30+00:00")
    assert conversation.pending_call("r1") is None and conversation.is_pending("r1")
    receive(conversation, "r3", "without saying when")
    assert conversation.pending_call("r3") is None


def test_a_request_received_by_an_earlier_version_says_it_was_received_when_recorded():
    """A version 1 UserMessageReceived (no time, no worker) is upcast: its call may
    have gone out from the moment it was recorded, by a worker no longer known."""
    app = Application(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    conversation = Conversation("old@example.com")
    receive(conversation, "r1", "hello")
    app.save(conversation)
    recorder = app.recorder
    received = recorder.select_events(conversation.id)[-1]
    state = app.mapper.transcoder.decode(received.state)
    del state["received_at"], state["worker"]
    state.pop("class_version", None)
    recorder._stored_events[-1] = type(received)(
        originator_id=received.originator_id, originator_version=received.originator_version,
        topic=received.topic, state=app.mapper.transcoder.encode(state),
    )
    app.repository.cache = None

    replayed = app.repository.get(conversation.id)
    since, worker = replayed.pending_call("r1")
    assert since == state["timestamp"].isoformat() and worker == ""


def test_a_snapshot_taken_before_calls_were_recorded_says_its_last_change_instead():
    from adapters.event_store import ChatRecords

    app = ChatRecords(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    conversation = Conversation("old@example.com")
    _receive_by(conversation, "r1", "2026-01-01T00:00:00+00:00", "worker-a")
    app.save(conversation)
    app.take_snapshot(conversation.id)
    recorder = app.snapshots.recorder
    stored = recorder.select_events(conversation.id)[-1]
    state = app.mapper.transcoder.decode(stored.state)
    assert state["state"]["class_version"] == 4
    state["state"]["class_version"] = 3
    del state["state"]["pending"]["r1"]["call"]
    recorder._stored_events[-1] = type(stored)(
        originator_id=stored.originator_id, originator_version=stored.originator_version,
        topic=stored.topic, state=app.mapper.transcoder.encode(state),
    )
    app.repository.cache = None

    loaded = app.repository.get(conversation.id)
    assert loaded.pending_call("r1") == (state["state"]["_modified_on"].isoformat(), "")
