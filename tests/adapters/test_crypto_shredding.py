"""Crypto-shredding on a real (SQLite) event store: per-user data keys, erasure,
retention and master key rotation, with the accounting kept readable."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta

import pytest

from adapters.data_keys import KeyUnavailable
from adapters.event_store import ChatRecords, event_store_env
from application.privacy import KEY_LEDGER_ID, Privacy
from domain.conversation import ERASED, EXPIRED, Conversation, conversation_id
from tests.support.conversations import REPLY, erase, expire, privacy_of, rotate, say
from tests.unit.fakes import FixedClock

SECRET = "privacy-secret"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.fixture
def store(tmp_path):
    url = f"sqlite:///{tmp_path}/events.sqlite"
    records = ChatRecords(env=event_store_env(url, SECRET))
    yield records, url, tmp_path / "events.sqlite"
    records.close()


def raw_bytes(path) -> bytes:
    connection = sqlite3.connect(path)
    try:
        connection.execute("PRAGMA wal_checkpoint(FULL)")
    finally:
        connection.close()
    return b"".join(p.read_bytes() for p in path.parent.iterdir() if p.name.startswith(path.name))


def test_nothing_personal_is_in_the_raw_store(store):
    records, _, path = store
    say(records, "ada.lovelace@example.com", "r1")
    data = raw_bytes(path)
    for secret in (b"hypertension", b"ada.lovelace", b"7946", b"be kind", b"sha256:abc"):
        assert secret not in data


def test_erasure_leaves_the_accounting_and_starts_afresh(store):
    records, _, _ = store
    say(records, "ada@example.com", "r1")
    say(records, "ada@example.com", "r2", message="second", reply="second reply")
    say(records, "bob@example.com", "b1", message="bob's own", reply="bob's reply")
    erasure = erase(records, "Ada@Example.com", requested_by="dpo")
    assert (erasure.conversation_ids, erasure.keys_destroyed) == ([str(conversation_id("ada@example.com"))], 1)

    cid = conversation_id("ada@example.com")
    events = list(records.events.get(cid))
    names = [type(e).__name__ for e in events]
    assert names == ["Started", "UserMessageReceived", "ReplyRecorded", "UserMessageReceived",
                     "ReplyRecorded", "UserErased"]
    assert events[0].user_email == ERASED
    assert (events[1].message, events[1].image_digests, events[1].system_prompt) == (ERASED, [], ERASED)
    reply = events[2]
    assert reply.reply == ERASED
    assert (reply.model, reply.prompt_tokens, reply.completion_tokens, reply.cost) == (
        "gpt-4o-mini", 12, 3, 0.0000036)
    assert events[-1].requested_by == "dpo"
    conversation = records.conversation(cid)
    assert conversation.turns == [] and conversation.outcome("r1").reply == ERASED
    # Another user is untouched; the same address starts a fresh, readable history.
    assert records.conversation(conversation_id("bob@example.com")).turns[0].reply == "bob's reply"
    say(records, "ada@example.com", "r3", message="hello again", reply="welcome back")
    again = records.conversation(cid)
    assert [(t.user_message, t.reply) for t in again.turns] == [("hello again", "welcome back")]


def test_erased_content_stays_unreadable_from_a_fresh_process(store):
    records, url, _ = store
    say(records, "ada@example.com", "r1")
    erase(records, "ada@example.com", requested_by="ada@example.com")
    reopened = ChatRecords(env=event_store_env(url, SECRET))
    try:
        events = list(reopened.events.get(conversation_id("ada@example.com")))
        assert events[2].reply == ERASED and events[2].completion_tokens == 3
    finally:
        reopened.close()


def test_retention_expires_old_content_and_the_history_forgets_it(store):
    records, _, _ = store
    say(records, "ada@example.com", "r1")
    later = FixedClock(datetime.now(UTC) + timedelta(days=31))
    expired = expire(records, later, retention_days=30)
    cid = conversation_id("ada@example.com")
    assert expired == [str(cid)]
    events = list(records.events.get(cid))
    assert [type(e).__name__ for e in events][-1] == "ContentExpired"
    assert events[1].message == EXPIRED and events[2].reply == EXPIRED
    assert events[2].prompt_tokens == 12
    assert records.conversation(cid).turns == []


def test_a_snapshot_of_erased_content_reads_as_erased(store):
    records, _, _ = store
    for n in range(26):  # 52 events: a snapshot at 50
        say(records, "ada@example.com", f"r{n}")
    cid = conversation_id("ada@example.com")
    assert len(list(records.snapshots.get(cid))) == 1
    erase(records, "ada@example.com", requested_by="dpo")
    conversation = records.conversation(cid)
    assert conversation.turns == [] and conversation.user_email == ERASED


def test_rotating_the_secret_rewraps_every_key(tmp_path):
    url = f"sqlite:///{tmp_path}/events.sqlite"
    old = ChatRecords(env=event_store_env(url, "old-secret"))
    say(old, "ada@example.com", "r1")
    old.close()
    # The new secret alone cannot unwrap the old keys: a clear error at start ...
    with pytest.raises(KeyUnavailable, match="SECRET_KEY_PREVIOUS"):
        ChatRecords(env=event_store_env(url, "new-secret"))
    # ... with the previous one it can, and rotate-keys rewraps them.
    rotating = ChatRecords(env=event_store_env(url, "new-secret", "old-secret"))
    assert rotate(rotating) == 2  # the user's key and the store key
    rotating.close()
    new = ChatRecords(env=event_store_env(url, "new-secret"))
    try:
        assert new.conversation(conversation_id("ada@example.com")).turns[0].reply == REPLY
        rotations = list(new.events.get(KEY_LEDGER_ID))
        assert type(rotations[-1]).__name__ == "KeysRotated" and rotations[-1].keys == 2
    finally:
        new.close()


def test_a_key_wrapped_by_an_unknown_master_is_a_clear_error():
    from adapters.data_keys import MasterKey, SqlDataKeys, _MemorySql

    keys = SqlDataKeys(_MemorySql(), [MasterKey.from_secret("one")])
    key_id, _ = keys.key_for_writing("owner", "2026-11-26")
    other = SqlDataKeys(keys.sql, [MasterKey.from_secret("two")])
    with pytest.raises(KeyUnavailable, match="SECRET_KEY_PREVIOUS"):
        other.key_for_reading(key_id)


def test_a_destroyed_key_leaves_no_copy_in_the_database_files(store):
    records, _, path = store
    say(records, "ada@example.com", "r1")
    connection = sqlite3.connect(path)
    try:
        [(wrapped,)] = connection.execute(
            "SELECT wrapped FROM data_keys WHERE owner != '*store*'").fetchall()
    finally:
        connection.close()
    assert wrapped.encode() in raw_bytes_without_checkpoint(path)
    erase(records, "ada@example.com", requested_by="dpo")
    assert wrapped.encode() not in raw_bytes_without_checkpoint(path)  # file and WAL


def raw_bytes_without_checkpoint(path) -> bytes:
    return b"".join(p.read_bytes() for p in path.parent.iterdir() if p.name.startswith(path.name))


def test_after_an_erasure_the_next_snapshot_stays_the_users_and_is_erased_again(store):
    records, _, _ = store
    say(records, "ada@example.com", "r0")
    erase(records, "ada@example.com", requested_by="dpo")
    for n in range(1, 26):  # past a snapshot (every 50 events) after the erasure
        say(records, "ada@example.com", f"r{n}", message=f"later secret {n}", reply=f"later reply {n}")
    cid = conversation_id("ada@example.com")
    assert len(list(records.snapshots.get(cid))) >= 1
    say(records, "ada@example.com", "last", message="third secret", reply="third reply")
    erase(records, "ada@example.com", requested_by="dpo")
    texts = [str(getattr(e, f, "")) for e in records.events.get(cid) for f in ("message", "reply")]
    assert not any(t and "secret" in t or t and "reply " in t for t in texts)
    assert records.conversation(cid).turns == []


def test_a_conversation_from_before_data_keys_becomes_erasable(tmp_path):
    from adapters.event_store import persistence_env

    url = f"sqlite:///{tmp_path}/legacy.sqlite"
    legacy_env = {
        **persistence_env(url),
        "CIPHER_TOPIC": "eventsourcing.cryptography:AESCipher",
        "CIPHER_KEY": __import__("adapters.event_store").event_store.cipher_key(SECRET),
        "COMPRESSOR_TOPIC": "eventsourcing.compressor:ZlibCompressor",  # everything, at level 6
    }
    old = ChatRecords(env=legacy_env)  # as the previous version stored events
    say(old, "ada@example.com", "r1", message="old secret", reply="old reply")
    old.close()
    records = ChatRecords(env=event_store_env(url, SECRET))
    try:
        say(records, "ada@example.com", "r2", message="new secret", reply="new reply")
        erasure = erase(records, "ada@example.com", requested_by="dpo")
        assert len(erasure.conversation_ids) == 1
        events = list(records.events.get(conversation_id("ada@example.com")))
        # What the old version wrote cannot be shredded; what came after can.
        assert [e.message for e in events if type(e).__name__ == "UserMessageReceived"] == [
            "old secret", ERASED]
    finally:
        records.close()


def test_a_reply_arriving_after_the_erasure_keeps_only_its_accounting(store):
    records, _, _ = store
    conversation = Conversation("ada@example.com")
    conversation.receive_message(
        request_id="r1", message="in flight", image_digests=[], model="gpt-4o-mini",
        max_tokens=10, temperature=0.7, system_prompt=None, caller_context=None, history_turns=0,
    )
    records.save(conversation)
    erase(records, "ada@example.com", requested_by="dpo")
    stored = records.conversation(conversation.id)
    assert stored.is_pending("r1") and stored.pending_message("r1") == ERASED


def test_dead_letters_sealed_before_a_rotation_still_open_with_the_previous_secret():
    from cryptography.exceptions import InvalidTag

    from adapters.dead_letters import DeadLetterSeal

    sealed = DeadLetterSeal("old").seal(b"grace@example.com wrote this")
    assert b"grace" not in sealed
    assert DeadLetterSeal("new", previous="old").open(sealed) == b"grace@example.com wrote this"
    with pytest.raises(InvalidTag):
        DeadLetterSeal("new").open(sealed)


def test_a_snapshot_is_destroyed_no_later_than_the_oldest_content_it_holds(store):
    records, _, _ = store
    now = datetime.now(UTC)
    conversation = Conversation("ada@example.com")
    conversation.receive_message(
        request_id="old", message="old question", image_digests=[], model="gpt-4o-mini",
        max_tokens=10, temperature=0.7, system_prompt=None, caller_context=None, history_turns=0,
    )
    conversation.record_reply(
        request_id="old", reply="OLD SECRET REPLY", model="gpt-4o-mini", prompt_tokens=1,
        completion_tokens=1, finish_reason="stop",
        answered_at=(now - timedelta(days=40)).isoformat().replace("+00:00", "Z"),
        processing_time=0.1, cached_tokens=0, cost=None,
    )
    records.save(conversation)
    records.take_snapshot(conversation.id)
    say(records, "ada@example.com", "new", message="new question", reply="new reply")
    expire(records, FixedClock(now), retention_days=30)
    [old_snapshot, fresh] = list(records.snapshots.get(conversation.id))
    assert old_snapshot.state["outcomes"]["old"].reply == EXPIRED
    assert old_snapshot.state["turns"] == []
    assert "old" in fresh.state["outcomes"]  # the fresh one keeps the accounting ...
    assert fresh.state["outcomes"]["old"].reply == EXPIRED  # ... not the content
    assert [t.reply for t in fresh.state["turns"]] == ["new reply"]
    loaded = records.conversation(conversation.id)
    assert [t.reply for t in loaded.turns] == ["new reply"]


async def test_a_replica_drops_conversations_it_keeps_in_memory_when_another_erases_them(tmp_path):
    from tests.unit.fakes import make_service

    url = f"sqlite:///{tmp_path}/shared.sqlite"
    clock = FixedClock(datetime.now(UTC))
    replica, _ = make_service(records=ChatRecords(env=event_store_env(url, SECRET)), clock=clock)
    replicas_privacy = Privacy(replica.conversations, replica.stores.ledgers,
                               replica.records.data_keys, clock)
    other = ChatRecords(env=event_store_env(url, SECRET))
    try:
        from application.contract import ChatRequest

        await replica.handle(ChatRequest("r1", "ada@example.com", "my secret"))
        cid = conversation_id("ada@example.com")
        assert cid in replica.conversations._cache  # kept for the next turn, in clear
        await privacy_of(other).erase_user("ada@example.com", requested_by="dpo")
        await replicas_privacy.follow_erasures()
        assert cid not in replica.conversations._cache
    finally:
        await replica.close()
        replica.records.close()
        other.close()


def compact(conversation: Conversation, summary: str, through: str, content_from: str) -> None:
    conversation.compact(
        summary=summary, through_request_id=through, content_from=content_from, turns_covered=1,
        model="gpt-4.1-nano", prompt_tokens=40, completion_tokens=8, cost=0.0000072,
        compacted_at=_now(),
    )


def test_a_summary_is_personal_data_encrypted_and_erased_with_its_user(store):
    records, _, path = store
    conversation = say(records, "ada@example.com", "r1")
    compact(conversation, "SUMMARY: ada has hypertension", "r1", _now())
    records.save(conversation)
    records.take_snapshot(conversation.id)
    assert b"SUMMARY" not in raw_bytes(path)
    assert records.conversation(conversation.id).context_summary() == "SUMMARY: ada has hypertension"

    erase(records, "ada@example.com", requested_by="dpo")
    compacted = [e for e in records.events.get(conversation.id) if type(e).__name__ == "ContextCompacted"]
    assert compacted[0].summary == ERASED and compacted[0].prompt_tokens == 40
    [snapshot] = list(records.snapshots.get(conversation.id))
    assert snapshot.state["summary"] == ERASED
    assert records.conversation(conversation.id).context_summary() is None


def test_a_summary_expires_with_the_oldest_turn_it_covers_and_the_rest_is_context_again(store):
    records, _, _ = store
    now = datetime.now(UTC)
    old = (now - timedelta(days=40)).isoformat().replace("+00:00", "Z")
    conversation = say(records, "ada@example.com", "r1")
    say(records, "ada@example.com", "r2", message="recent question", reply="recent reply")
    conversation = records.conversation(conversation.id)
    # Written today, but it covers content from 40 days ago: sealed with that day's key.
    compact(conversation, "SUMMARY of old and recent", "r2", old)
    records.save(conversation)
    assert records.conversation(conversation.id).unsummarised_turns() == []

    expire(records, FixedClock(now), retention_days=30)
    compacted = [e for e in records.events.get(conversation.id) if type(e).__name__ == "ContextCompacted"]
    assert compacted[0].summary == EXPIRED
    loaded = records.conversation(conversation.id)
    assert loaded.context_summary() is None
    # Turns it covered that are still within retention are context again.
    assert [t.reply for t in loaded.unsummarised_turns()] == [REPLY, "recent reply"]


def test_a_group_commit_issues_the_keys_of_its_new_conversations_in_one_round_trip(store):
    import asyncio

    from adapters.group_commit import GroupCommitter
    from tests.support.conversations import answer, receive

    records, _, _ = store
    keys = records.data_keys
    transactions = []
    run_all = keys.sql.run_all
    keys.sql.run_all = lambda statements, *a: transactions.append(len(statements)) or run_all(statements, *a)
    users = [f"user{n}@example.com" for n in range(20)]
    conversations = [Conversation(user) for user in users] + [Conversation(users[0], "work")]
    for n, conversation in enumerate(conversations):
        receive(conversation, f"r{n}", f"secret {n}")
        answer(conversation, f"r{n}", f"reply {n}")

    async def save_together() -> None:
        writer = GroupCommitter(records)
        await asyncio.gather(*(writer.save(c) for c in conversations))
    asyncio.run(save_together())

    assert len(transactions) == 1  # 21 registrations, 20 keys, one SELECT: one transaction
    assert transactions[0] == 21 + 20 + 1
    records.repository.cache = None
    for n, conversation in enumerate(conversations):
        assert records.conversation(conversation.id).turns[0].reply == f"reply {n}"
    # Each user's key is theirs: erasing one leaves the others readable.
    erase(records, users[1], requested_by="dpo")
    assert records.conversation(conversations[1].id).turns == []
    assert records.conversation(conversations[2].id).turns[0].reply == "reply 2"
    assert records.conversation(conversations[20].id).turns[0].reply == "reply 20"


def test_a_group_commit_checks_its_cached_keys_in_one_round_trip_and_a_destroyed_one_is_replaced(
    store,
):
    import asyncio

    import adapters.data_keys
    from adapters.group_commit import GroupCommitter
    from tests.support.conversations import answer, receive

    records, url, _ = store
    users = [f"user{n}@example.com" for n in range(10)]
    conversations = [Conversation(user) for user in users]
    writer = GroupCommitter(records)

    def turn(request_id: str) -> None:
        for n, conversation in enumerate(conversations):
            receive(conversation, f"{request_id}-{n}", f"secret {n}")
            answer(conversation, f"{request_id}-{n}", f"{request_id} reply {n}")

    async def save_together() -> None:
        await asyncio.gather(*(writer.save(c) for c in conversations))

    turn("r1")
    asyncio.run(save_together())
    # Another replica erases user 3: its key is destroyed in the store.
    other = ChatRecords(env=event_store_env(url, SECRET))
    try:
        erase(other, users[3], requested_by="dpo")
    finally:
        other.close()
    conversations[3] = records.conversation(conversations[3].id)  # erased: starts afresh
    keys = records.data_keys
    # Every key is due for its check (cached longer ago than KEY_CACHE_SECONDS).
    past = adapters.data_keys.KEY_CACHE_SECONDS + 1
    keys._writing = {k: (key_id, key, at - past) for k, (key_id, key, at) in keys._writing.items()}
    transactions = []
    run_all = keys.sql.run_all
    keys.sql.run_all = lambda statements, *a: transactions.append(statements[-1][0]) or run_all(statements, *a)
    turn("r2")
    asyncio.run(save_together())

    # One check of all ten keys, then a new key for the erased user alone.
    assert len(transactions) == 2, transactions
    assert transactions[0].startswith("SELECT key_id FROM data_keys WHERE key_id IN")
    records.repository.cache = None
    for n, conversation in enumerate(conversations):
        replies = [t.reply for t in records.conversation(conversation.id).turns]
        assert replies == (["r2 reply 3"] if n == 3 else [f"r1 reply {n}", f"r2 reply {n}"])
