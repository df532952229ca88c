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
    ) -> None:
        self.records = records
        self.read = read
        self.writer = writer
        self.outages = outages
        self.cache_size = cache_size
        self.kind = kind
        self.tracer = tracer  # spans of loads and saves, when given
        self._cache: dict[UUID, A] = {}  # insertion order = recency

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
            self._cache.pop(UUID(str(aggregate_id)), None)

    async def _load(self, aggregate_id: UUID, wait_out_outages: bool) -> A | None:
        # Taken out while it is being decided on: a concurrent change of the same
        # aggregate reads its own copy, and the second save conflicts.
        aggregate = self._cache.pop(aggregate_id, None)
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
        return aggregate

    async def _save(self, aggregate: A, wait_out_outages: bool) -> None:
        events = len(aggregate.pending_events)
        if not events:
            return
        with self._span("save", {"chater.events": events}):
            await self.writer.save(aggregate, wait_out_outages=wait_out_outages)

    def _keep(self, aggregate: A) -> None:
        self._cache[aggregate.id] = aggregate
        while len(self._cache) > self.cache_size:
            self._cache.pop(next(iter(self._cache)))

    def _span(self, operation: str, attributes: dict[str, Any]) -> Any:
        if self.tracer is None:
            return contextlib.nullcontext()
        return self.tracer.start_as_current_span(f"{operation} {self.kind}", attributes={
            "db.operation.name": operation, "chater.store": self.records.persistence_name,
            **attributes,
        })


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
    ) -> None:
        self.records = records
        self.outages = outages or StoreOutages()
        self.writer = GroupCommitter(records, outages=self.outages)
        self.conversations: EventSourcedStore[Conversation] = EventSourcedStore(
            records, records.conversation, self.writer, self.outages,
            conversation_cache_size, "conversation", tracer or trace.get_tracer(__name__),
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
