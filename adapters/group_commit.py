"""Group commit: the aggregates of many concurrent requests saved in one transaction.

A transaction costs a disk flush (PostgreSQL) or a lock and a journal write
(SQLite) whatever it holds, so writes that arrive while one is running go
together in the next. A batch that fails on a conflict is retried one request at
a time, so that only the request that collided sees RecordConflictError. While
the store is down, writes wait and are tried again (StoreOutages): their events
were taken from the aggregates, so nobody else could try them again. A write
that must not wait (`wait_out_outages=False`) gets the outage's error instead.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from eventsourcing.application import Application
from eventsourcing.persistence import RecordConflictError

from adapters.store_outages import StoreOutages

log = logging.getLogger(__name__)


@dataclass
class _Write:
    aggregates: tuple[Any, ...]
    events: list[Any]
    done: asyncio.Future[None]
    patient: bool = True
    error: BaseException | None = field(default=None)


class GroupCommitter:
    def __init__(
        self, application: Application, max_batch: int = 500, outages: StoreOutages | None = None
    ) -> None:
        self.application = application
        self.max_batch = max_batch
        self.outages = outages or StoreOutages()
        self._queue: list[_Write] = []
        self._writer: asyncio.Task[None] | None = None
        self.transactions = 0
        self.saves = 0

    async def save(self, *aggregates: Any, wait_out_outages: bool = True) -> None:
        """Save the aggregates' pending events; raises as `Application.save` would."""
        events = [event for aggregate in aggregates for event in aggregate.collect_events()]
        if not events:
            return
        loop = asyncio.get_running_loop()
        write = _Write(aggregates, events, loop.create_future(), wait_out_outages)
        self._queue.append(write)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())
        await write.done

    async def _drain(self) -> None:
        delays = self.outages.delays()
        while self._queue:
            # A writer that gave up (cancelled) does not want its events written.
            self._queue = [w for w in self._queue if not w.done.cancelled()]
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            if not batch:
                break
            try:
                await asyncio.to_thread(self._write, batch)
                delays = self.outages.delays()
            except RecordConflictError as error:
                batch[0].error = error
            except BaseException as error:
                if self.outages.is_outage(error):
                    self._retry_later(batch, error)
                    delay = next(delays)
                    log.warning("event store unavailable (%s); retrying in %.1fs", error, delay)
                    await asyncio.sleep(delay)
                    continue
                # Not a passing outage: tell every writer.
                for write in batch:
                    if not write.done.done():
                        write.done.set_exception(error)
                if isinstance(error, asyncio.CancelledError):
                    raise
                continue
            for write in batch:
                if write.done.done():
                    continue
                if write.error is None:
                    write.done.set_result(None)
                else:
                    write.done.set_exception(write.error)

    def _retry_later(self, batch: list[_Write], error: BaseException) -> None:
        """Put the batch's patient writes back first in line; tell the others."""
        patient = [write for write in batch if write.patient]
        for write in batch:
            if not write.patient and not write.done.done():
                write.done.set_exception(error)
        self._queue[:0] = patient

    def _write(self, batch: list[_Write]) -> None:
        self.transactions += 1
        self.saves += len(batch)
        prepare = getattr(self.application.mapper, "prepare", None)
        if prepare is not None:  # the data keys of the batch's conversations, at once
            try:
                prepare([event for write in batch for event in write.events])
            except Exception as error:  # each event gets its key as it is mapped
                log.debug("data keys not prepared: %s", error)
        try:
            self.application.save(*(event for write in batch for event in write.events))
        except RecordConflictError:
            if len(batch) == 1:
                raise
            log.debug("conflict in a batch of %d; saving one by one", len(batch))
            for write in batch:
                self.transactions += 1
                try:
                    self.application.save(*write.events)
                except RecordConflictError as error:
                    write.error = error
        for write in batch:
            if write.error is None:
                try:
                    self._take_snapshots(write)
                except Exception as error:  # the writes stand; a later save snapshots again
                    log.warning("snapshot failed: %s", error)

    def _take_snapshots(self, write: _Write) -> None:
        """Snapshot when Application.save would, had it been given the aggregates: of
        the aggregate as saved, at its version (the store is not read back)."""
        intervals = self.application.snapshotting_intervals
        for aggregate in write.aggregates:
            interval = intervals.get(type(aggregate))
            if not interval:
                continue
            versions = [e.originator_version for e in write.events if e.originator_id == aggregate.id]
            if any(v % interval == 0 for v in versions):
                snapshot_now = getattr(self.application, "snapshot_now", None)
                if snapshot_now is not None:
                    snapshot_now(aggregate)
                else:
                    self.application.take_snapshot(aggregate.id, version=max(versions))
