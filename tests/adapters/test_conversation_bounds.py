"""A conversation's state, its snapshots and the conversation cache are bounded,
however long the conversation; its events keep everything, for the audit."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from dataclasses import replace

from eventsourcing.application import project_aggregate

from adapters.aggregate_store import StoreOfRecords, conversation_bytes
from adapters.event_store import ChatRecords, event_store_env
from domain.conversation import Conversation
from tests.support.conversations import answer, receive


def _long(turns: int, words: int = 150, user: str = "long@example.com") -> Conversation:
    conversation = Conversation(user)
    for n in range(turns):
        receive(conversation, f"r{n}", f"turn {n}: " + "lorem ipsum " * words)
        answer(conversation, f"r{n}", f"reply {n}: " + "dolor sit " * words)
    return conversation


def test_keep_within_holds_the_newest_turns_and_outcomes_and_their_digests():
    conversation = _long(30, words=2)
    conversation.digests = {f"r{n}": f"sha256:{n}" for n in range(30)}
    receive(conversation, "pending", "still waiting")

    conversation.keep_within(turns=5, outcomes=8)

    assert [turn.request_id for turn in conversation.turns] == [f"r{n}" for n in range(25, 30)]
    assert list(conversation.outcomes) == [f"r{n}" for n in range(22, 30)]
    assert set(conversation.digests) == {f"r{n}" for n in range(22, 30)}
    assert conversation.is_pending("pending")
    # Remembered: answered from the record. Forgotten: received anew.
    assert conversation.outcome("r22") is not None
    receive(conversation, "r3", "turn 3 again")
    assert conversation.is_pending("r3")


def test_turns_a_readable_summary_covers_are_forgotten_and_the_rest_stay_context():
    conversation = _long(12, words=2)
    conversation.compact("the story so far", "r7", "2026-01-01T00:00:00Z", 8, "gpt-4o-mini",
                         10, 5, None, "2026-01-01T00:00:00Z")
    context_before = conversation.unsummarised_turns()

    conversation.keep_within(turns=100, outcomes=100)

    assert [turn.request_id for turn in conversation.turns] == ["r8", "r9", "r10", "r11"]
    assert conversation.unsummarised_turns() == context_before
    assert conversation.context_summary() == "the story so far"


def test_snapshots_do_not_grow_with_the_conversation_and_the_events_keep_every_turn():
    records = ChatRecords(env=event_store_env("memory://", "bounds-secret"))
    records.bound_conversations(turns_kept=20, outcomes_kept=50)
    conversation = Conversation("long@example.com")
    sizes: dict[int, int] = {}  # snapshot's version -> its stored bytes
    for n in range(400):
        receive(conversation, f"r{n}", f"turn {n}: " + "lorem ipsum " * 80)
        answer(conversation, f"r{n}", f"reply {n}: " + "dolor sit " * 80)
        records.save(conversation)
        for stored in records.snapshots.recorder.select_events(conversation.id, desc=True, limit=1):
            sizes[stored.originator_version] = len(stored.state)
    sizes = list(sizes.values())

    assert len(sizes) == 16
    # Every turn (2 events) is compressed and encrypted alike: the last snapshot holds
    # no more than the one after 150 turns (all the outcomes and turns kept by then).
    assert max(sizes[6:]) <= sizes[5] * 1.05, sizes
    assert sizes[-1] < 3 * sizes[0], sizes

    snapshot = next(iter(records.snapshots.get(conversation.id, desc=True, limit=1)))
    assert len(snapshot.state["turns"]) == 20 and len(snapshot.state["outcomes"]) == 50
    replayed = project_aggregate(None, records.events.get(conversation.id))
    assert len(replayed.turns) == 400 and len(replayed.outcomes) == 400


def _not_ascii(conversation: Conversation) -> Conversation:
    conversation.turns = [replace(turn, user_message=f"héllo wörld {n} " * 100)
                          for n, turn in enumerate(conversation.turns)]
    return conversation


def _with_digests(conversation: Conversation) -> Conversation:
    conversation.digests = {rid: f"sha256:{n:064d}" for n, rid in enumerate(conversation.outcomes)}
    return conversation


def test_the_size_measure_follows_what_a_conversation_really_takes_in_memory():
    shapes = {
        "long ascii": lambda: _long(40, words=200),
        "not ascii": lambda: _not_ascii(_long(20, words=100)),
        "many outcomes": lambda: _with_digests(_long(200, words=1)),
    }
    for name, make in shapes.items():
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        conversation = make()  # its texts made anew, under the tracer
        conversation.collect_events()
        gc.collect()
        measured = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        estimated = conversation_bytes(conversation)
        assert 0.6 * measured <= estimated <= 1.6 * measured, (name, estimated, measured)


def test_the_conversation_cache_holds_no_more_bytes_than_its_setting():
    records = ChatRecords(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    stores = StoreOfRecords(records, conversation_cache_bytes=300_000, turns_kept=20,
                            outcomes_kept=50)
    cache = stores.conversations

    async def talk(user: str, turns: int) -> None:
        for n in range(turns):
            def decide(conversation: Conversation, n: int = n) -> None:
                receive(conversation, f"{user}-{n}", "question " * 200)
                answer(conversation, f"{user}-{n}", "answer " * 200)
            await cache.change(Conversation.create_id(f"{user}@example.com"), decide,
                               lambda: Conversation(f"{user}@example.com"))

    async def main() -> None:
        for user in range(30):
            await talk(f"user{user}", 30)
    asyncio.run(main())

    assert 0 < cache.cached_bytes <= 300_000
    assert cache.cached_bytes == sum(conversation_bytes(c) for c in cache._cache.values())
    kept = list(cache._cache.values())
    assert 1 <= len(kept) < 30
    assert all(len(c.turns) <= 20 and len(c.outcomes) <= 50 for c in kept)
    # The worker's saves (group commit) snapshot the bounded conversation too.
    cid = Conversation.create_id("user0@example.com")
    snapshot = next(iter(records.snapshots.get(cid, desc=True, limit=1)))
    assert snapshot.originator_version >= 50
    assert len(snapshot.state["turns"]) == 20
    loaded = records.conversation(cid)
    assert len(loaded.turns) > 20 and loaded.turns[-1].request_id == "user0-29"


def test_the_audit_replays_every_turn_whatever_the_snapshots_hold():
    from entrypoints.audit import audit_report

    records = ChatRecords(env=event_store_env("memory://", "bounds-secret"))
    records.bound_conversations(turns_kept=4, outcomes_kept=4)
    conversation = Conversation("long@example.com")
    for n in range(30):
        receive(conversation, f"r{n}", f"question {n}")
        answer(conversation, f"r{n}", f"reply {n}")
        records.save(conversation)
    assert len(next(iter(records.snapshots.get(conversation.id, desc=True, limit=1))).state["turns"]) == 4

    report = audit_report(records, "long@example.com", as_of=conversation.version)

    assert "30 answered turn(s), 0 pending, 0 failed" in report
    assert "question 0" in report and "reply 29" in report


def test_a_snapshot_seals_a_reply_its_turn_holds_once_and_loads_it_into_both():
    records = ChatRecords(env=event_store_env("memory://", "bounds-secret"))
    conversation = Conversation("long@example.com")
    texts = 0
    for n in range(10):
        message, reply = f"question {n} " + "lorem " * 300, f"reply {n} " + "ipsum " * 300
        receive(conversation, f"r{n}", message)
        answer(conversation, f"r{n}", reply)
        texts += len(message) + len(reply)
    records.save(conversation)
    records.take_snapshot(conversation.id)

    stored = records.snapshots.recorder.select_events(conversation.id, desc=True, limit=1)[0]
    # Each text once (sealed, in base64: 4/3), not each reply twice (1.75 x the texts).
    assert len(stored.state) < 1.5 * texts, (len(stored.state), texts)
    snapshot = next(iter(records.snapshots.get(conversation.id, desc=True, limit=1)))
    loaded = snapshot.mutate(None)
    assert [loaded.outcome(f"r{n}").reply for n in range(10)] == [t.reply for t in conversation.turns]
    assert loaded.turns == conversation.turns
