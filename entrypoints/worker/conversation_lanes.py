"""Per-conversation lanes: one conversation's records one after another, in the
order they were produced; different conversations concurrently."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

from opentelemetry import context as otel_context
from opentelemetry import trace

from application.chat import ChatService
from application.contract import ChatRequest, ChatResponse
from entrypoints.worker.held_records import HeldRecord, HeldRecords
from entrypoints.worker.persevere import Stopping, persevere

log = logging.getLogger(__name__)


class ConversationLanes:
    """A queue per conversation and one runner task that answers it, for as long
    as it has records.

    The queue is in the order the records were produced (their timestamps): the
    platform's producers key requests by request id, so two turns of one
    conversation may reach the repartition topic out of order, by way of two
    partitions and two repartitioning replicas. A record waits until
    `order_window` seconds after it was produced before it is answered, so that an
    earlier turn arriving meanwhile goes first; a record already being answered
    is never overtaken.

    `answered` takes each response of a record whose partition is still ours;
    the records of a partition revoked or lost are dropped for their new owner.
    An unexpected error with one record goes to `unanswerable` (that record's
    error response and dead letter) and the lane goes on; one that even that
    cannot handle calls `fail` (the worker stops, not wedges).
    """

    def __init__(
        self,
        service: ChatService,
        held: HeldRecords,
        answered: Callable[[HeldRecord, ChatResponse], None],
        stopping: Callable[[], bool],
        fail: Callable[[BaseException], None],
        unanswerable: Callable[[HeldRecord, Exception], None],
        order_window: float = 0.0,
    ) -> None:
        self.service = service
        self.order_window = order_window
        self.held = held
        self.answered = answered
        self.unanswerable = unanswerable
        self.stopping = stopping
        self.fail = fail
        self._queues: dict[str, deque[HeldRecord]] = {}
        self._runners: set[asyncio.Task[None]] = set()

    def add(self, conversation: str, record: HeldRecord) -> None:
        """Queue the record behind those of its conversation produced before it (its
        lane starts if idle)."""
        queue = self._queues.get(conversation)
        if queue is None:
            queue = self._queues[conversation] = deque()
            runner = asyncio.create_task(self._run(conversation, queue))
            self._runners.add(runner)
            runner.add_done_callback(self._runners.discard)
        place = len(queue)
        while (
            place > 0
            and queue[place - 1].active_since is None  # not started: may be overtaken
            and queue[place - 1].produced > record.produced
        ):
            place -= 1
        queue.insert(place, record)

    async def finish(self, timeout: float) -> None:
        """At shutdown: let the lanes finish within `timeout`, then cancel the rest
        (their records stay uncommitted and are fetched again)."""
        if not self._runners:
            return
        log.info("finishing %d conversations in flight", len(self._runners))
        _, late = await asyncio.wait(set(self._runners), timeout=timeout)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)

    def abandon(self) -> None:
        """Stop answering records whose partition was revoked or lost.

        A record can wait long (an open circuit, the rate limit, the budget); once
        its partition is another worker's, that worker answers it, so going on
        would pay the model twice. A reply already received is still recorded
        (the use case shields it), so the new owner finds it answered. A model
        call already out is left to land and be recorded (cut short, it might be
        paid for and could not be recorded): the new owner waits for its outcome
        (ChatService: a call made elsewhere), and this worker responds to nothing.
        """
        for queue in self._queues.values():
            record = queue[0] if queue else None
            if (
                record is not None
                and record.answering is not None
                and not self.held.is_current(record)
            ):
                assert record.request is not None
                request_id = record.request.request_id
                if self.service.call_sent(request_id):
                    log.info("leaving %s's model call to land: its partition is no longer "
                             "ours, its new owner waits for the outcome", request_id)
                    continue
                log.info("abandoning %s: its partition is no longer ours", request_id)
                record.answering.cancel()

    async def _run(self, conversation: str, queue: deque[HeldRecord]) -> None:
        """Answer one conversation's records one after another, in the order produced."""
        try:
            while queue:
                head = queue[0]
                wait = head.produced + self.order_window - time.time()
                if wait > 0:  # an earlier turn may still be on its way
                    await asyncio.sleep(wait)
                    continue
                await self._take_turn(head)
                queue.popleft()
        except (Stopping, asyncio.CancelledError):
            self._drop_all(queue)
        except Exception as error:  # a bug or a fatal producer error: stop, do not wedge
            log.exception("conversation %s failed; stopping the worker", conversation)
            self._drop_all(queue)
            self.fail(error)
        finally:
            if self._queues.get(conversation) is queue:
                del self._queues[conversation]

    async def _take_turn(self, record: HeldRecord) -> None:
        """Answer the record at the head of its lane, unless its partition is gone."""
        response = None
        record.start()
        if self.held.is_current(record):
            try:
                response = await self._answer_unless_abandoned(record)
            except Stopping:
                raise
            except Exception as error:  # a bug with this record: it ends, the lane goes on
                if self.held.is_current(record):
                    log.exception("record %s[%d]@%d could not be answered",
                                  *record.partition, record.message.offset())
                    self.unanswerable(record, error)
                    return
        if response is not None and self.held.is_current(record):
            self.answered(record, response)
            return
        self.held.drop(record)

    def _drop_all(self, queue: deque[HeldRecord]) -> None:
        for record in queue:
            self.held.drop(record)
        queue.clear()

    async def _answer_unless_abandoned(self, record: HeldRecord) -> ChatResponse | None:
        """The record's response, or None if its partition was taken away
        while it waited (see `abandon`)."""
        assert record.request is not None
        # The use case's spans (store, model) are children of the request's.
        token = otel_context.attach(trace.set_span_in_context(record.span))
        try:
            task = record.answering = asyncio.create_task(self._answer(record.request))
        finally:
            otel_context.detach(token)
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:  # the worker is stopping
            task.cancel()
            await asyncio.wait({task})  # what it holds (budget, say) is given back first
            raise
        finally:
            record.answering = None
        return None if task.cancelled() else task.result()

    async def _answer(self, request: ChatRequest) -> ChatResponse:
        """The response; GaveUp when the use case failed unexpectedly every time."""
        return await persevere(
            f"answering {request.request_id}", self.stopping, self.service.handle, request
        )
