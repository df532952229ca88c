"""The event store as the use cases see it: change an aggregate by a decision.

`change(id, decide)` loads the aggregate (through a cache of the copies this
process saved last), lets `decide` apply its commands, saves the new events
through group commit and keeps the saved copy for next time. When another
process wrote first (a conflict), the aggregate is read again from the store and
decided again; while the store is down, reads and writes wait for it
(StoreOutages). A decision that raises leaves nothing saved and nothing kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import sys
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Any, Generic, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import RecordConflictError
from opentelemetry import trace

from adapters.event_store import ChatRecords
from adapters.group_commit import GroupCommitter
from adapters.store_outages import StoreOutages
from domain.conversation import Conversation
from domain.token_budget import TokenBudget

A = TypeVar("A", bound=Aggregate)
T = TypeVar("T")


class EventSourcedStore(Generic[A]):
    """One kind of aggregate in ChatRecords (see the module's docstring)."""

    def __init__(
        self,
        records: ChatRecords,
        read: Callable[[UUID], A | None],
        writer: GroupCommitter,
        outages: StoreOutages,
        cache_size: int,
        kind: str,
        tracer: trace.Tracer | None = None,
        bound: Callable[[A], None] | None = None,
        size_of: Callable[[A], int] | None = None,
        cache_bytes: int | None = None,
    ) -> None:
        self.records = records
        self.read = read
        self.writer = writer
        self.outages = outages
        self.cache_size = cache_size
        self.kind = kind
        self.tracer = tracer  # spans of loads and saves, when given
        # What an aggregate forgets of its state after each load and change (see
        # Conversation.keep_within), and the kept copies' bytes bound, by `size_of`.
        self.bound = bound
        self.size_of = size_of
        self.cache_bytes = cache_bytes
        self._cache: dict[UUID, A] = {}  # insertion order = recency
        self._sizes: dict[UUID, int] = {}
        self.cached_bytes = 0

    async def change(
        self,
        aggregate_id: UUID,
        decide: Callable[[A], T | Awaitable[T]],
        create: Callable[[], A] | None = None,
        wait_out_outages: bool = True,
    ) -> T:
        """What `decide` returned, once the changes it made are saved.

        Raises AggregateNotFoundError when there is no such aggregate and no
        `create`; without `wait_out_outages`, the store's outage error."""
        while True:
            aggregate = await self._load(aggregate_id, wait_out_outages)
            if aggregate is None:
                if create is None:
                    raise AggregateNotFoundError(aggregate_id)
                aggregate = create()
            decided = decide(aggregate)
            result: T = await decided if inspect.isawaitable(decided) else decided  # type: ignore[assignment]
            try:
                await self._save(aggregate, wait_out_outages)
            except RecordConflictError:
                continue  # another process wrote first: decide again on what it stored
            self._keep(aggregate)
            return result

    async def snapshot(self, aggregate_id: UUID) -> None:
        """Take a snapshot of the aggregate as stored now."""
        await asyncio.to_thread(self.records.take_snapshot, aggregate_id)

    def evict(self, aggregate_ids: Iterable[UUID | str]) -> None:
        """Drop kept copies (their user was erased, say): the next change reads the store."""
        for aggregate_id in aggregate_ids:
            self._uncache(UUID(str(aggregate_id)))

    async def _load(self, aggregate_id: UUID, wait_out_outages: bool) -> A | None:
        # Taken out while it is being decided on: a concurrent change of the same
        # aggregate reads its own copy, and the second save conflicts.
        aggregate = self._uncache(aggregate_id)
        if aggregate is not None:
            return aggregate
        if not wait_out_outages:
            return await self._read(aggregate_id)
        return await self.outages.wait_out(lambda: self._read(aggregate_id), f"loading a {self.kind}")

    async def _read(self, aggregate_id: UUID) -> A | None:
        with self._span("load", {}) as span:
            if self.records.reads_are_local:
                # Measured: handing a SQLite read to a thread costs more than the read.
                aggregate = self.read(aggregate_id)
            else:
                aggregate = await asyncio.to_thread(self.read, aggregate_id)
            if span is not None:
                span.set_attribute("chater.found", aggregate is not None)
        if aggregate is not None and self.bound is not None:
            self.bound(aggregate)
        return aggregate

    async def _save(self, aggregate: A, wait_out_outages: bool) -> None:
        events = len(aggregate.pending_events)
        if not events:
            return
        with self._span("save", {"chater.events": events}):
            await self.writer.save(aggregate, wait_out_outages=wait_out_outages)

    def _keep(self, aggregate: A) -> None:
        if self.bound is not None:
            self.bound(aggregate)
        size = self.size_of(aggregate) if self.size_of is not None else 0
        if self.cache_bytes is not None and size > self.cache_bytes:
            return  # larger than the whole cache: read from the store next time
        self._cache[aggregate.id] = aggregate
        self._sizes[aggregate.id] = size
        self.cached_bytes += size
        while len(self._cache) > self.cache_size or (
            self.cache_bytes is not None and self.cached_bytes > self.cache_bytes
        ):
            self._uncache(next(iter(self._cache)))

    def _uncache(self, aggregate_id: UUID) -> A | None:
        aggregate = self._cache.pop(aggregate_id, None)
        if aggregate is not None:
            self.cached_bytes -= self._sizes.pop(aggregate_id)
        return aggregate

    def _span(self, operation: str, attributes: dict[str, Any]) -> Any:
        if self.tracer is None:
            return contextlib.nullcontext()
        return self.tracer.start_as_current_span(f"{operation} {self.kind}", attributes={
            "db.operation.name": operation, "chater.store": self.records.persistence_name,
            **attributes,
        })


# What a conversation's parts take in memory besides their text (CPython 3.11,
# measured with tracemalloc by tests/adapters/test_conversation_bounds.py): the
# aggregate with its dicts, a Turn, an outcome with its request id, a pending
# request, a digest.
CONVERSATION_BYTES = 4_000
TURN_BYTES = 200
OUTCOME_BYTES = 250
PENDING_BYTES = 600
DIGEST_BYTES = 150


def conversation_bytes(conversation: Conversation) -> int:
    """About how many bytes a kept conversation holds: the conversation cache's
    measure (CONVERSATION_CACHE_MB). Each text counts once, though a turn and its
    outcome share their reply."""
    size = CONVERSATION_BYTES + _text_bytes(conversation.summary)
    outcomes = conversation.outcomes
    for turn in conversation.turns:
        size += TURN_BYTES + _text_bytes(turn.user_message)
        if turn.request_id not in outcomes:
            size += _text_bytes(turn.reply)
    for outcome in outcomes.values():
        size += OUTCOME_BYTES + _text_bytes(getattr(outcome, "reply", None))
    for asked in conversation.pending.values():
        size += PENDING_BYTES + _text_bytes(asked.get("message"))
    return size + DIGEST_BYTES * len(conversation.digests)


def _text_bytes(text: object) -> int:
    return sys.getsizeof(text) if isinstance(text, str) else 0


def _stored(records: ChatRecords, aggregate_id: UUID) -> Any:
    try:
        return records.repository.get(aggregate_id)
    except AggregateNotFoundError:
        return None


class StoreOfRecords:
    """The stores of one ChatRecords (conversations and the key ledger share a group
    commit, budgets have one of their own), all under the outage policy given."""

    def __init__(
        self,
        records: ChatRecords,
        conversation_cache_size: int = 10_000,
        tracer: trace.Tracer | None = None,
        outages: StoreOutages | None = None,
        conversation_cache_bytes: int | None = None,
        turns_kept: int | None = None,
        outcomes_kept: int | None = None,
    ) -> None:
        """`turns_kept` and `outcomes_kept` bound what a conversation holds (see
        Conversation.keep_within; None: unbounded), and `conversation_cache_bytes`
        the conversations kept between changes (by `conversation_bytes`)."""
        self.records = records
        self.outages = outages or StoreOutages()
        self.writer = GroupCommitter(records, outages=self.outages)
        if turns_kept is not None or outcomes_kept is not None:
            records.bound_conversations(turns_kept, outcomes_kept)
        self.conversations: EventSourcedStore[Conversation] = EventSourcedStore(
            records, records.conversation, self.writer, self.outages,
            conversation_cache_size, "conversation", tracer or trace.get_tracer(__name__),
            bound=records.bound_of(Conversation), size_of=conversation_bytes,
            cache_bytes=conversation_cache_bytes,
        )
        # Only today's budget (and a lease's of yesterday) is worth keeping. Its
        # writes have a queue of their own: every request of the worker waits for a
        # new lease, which must not wait behind a batch of conversations.
        self.budgets: EventSourcedStore[TokenBudget] = EventSourcedStore(
            records, partial(_stored, records), GroupCommitter(records, outages=self.outages),
            self.outages, 2, "budget",
        )
        self.ledgers: EventSourcedStore[Aggregate] = EventSourcedStore(
            records, partial(_stored, records), self.writer, self.outages, 1, "key ledger",
        )
        # Requests parked in the provider's batches (domain.parked_batches): never
        # kept between changes, since every replica's poller changes them.
        self.batches: EventSourcedStore[Aggregate] = EventSourcedStore(
            records, partial(_stored, records), self.writer, self.outages, 0, "parked batch",
        )
