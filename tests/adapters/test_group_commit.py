import asyncio

import pytest
from eventsourcing.persistence import RecordConflictError

from adapters.event_store import ChatRecords
from adapters.group_commit import GroupCommitter
from domain.conversation import Conversation


def started(email: str) -> Conversation:
    return Conversation(email)


async def test_concurrent_saves_share_transactions():
    records = ChatRecords(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    writer = GroupCommitter(records)
    conversations = [started(f"user{n}@example.com") for n in range(100)]
    await asyncio.gather(*(writer.save(c) for c in conversations))
    assert writer.saves == 100 and writer.transactions < 10
    for c in conversations:
        assert records.conversation(c.id).user_email == c.user_email


async def test_a_conflict_fails_only_the_writer_that_collided():
    records = ChatRecords(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    writer = GroupCommitter(records)
    first = started("ada@example.com")
    records.save(first)
    stale = records.conversation(first.id)
    fresh = records.conversation(first.id)
    fresh.receive_message("r1", "hi", [], "m", 10, 0.5, None, None, 0)
    records.save(fresh)
    stale.receive_message("r2", "hi", [], "m", 10, 0.5, None, None, 0)
    others = [started(f"user{n}@example.com") for n in range(5)]
    results = await asyncio.gather(
        writer.save(stale), *(writer.save(c) for c in others), return_exceptions=True
    )
    assert isinstance(results[0], RecordConflictError)
    assert results[1:] == [None] * 5
    assert records.conversation(first.id).is_pending("r1")
    assert not records.conversation(first.id).is_pending("r2")
    with pytest.raises(RecordConflictError):
        stale2 = records.conversation(first.id)
        racing = records.conversation(first.id)
        racing.receive_message("r3", "hi", [], "m", 10, 0.5, None, None, 0)
        records.save(racing)
        stale2.receive_message("r4", "hi", [], "m", 10, 0.5, None, None, 0)
        await writer.save(stale2)
