"""Parked batch requests answered: every BATCH_POLL_INTERVAL, this replica asks the
provider about the open batches recorded in the store and produces the responses
whose outcome its own change recorded (application.batch_answers)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from application.chat import ChatService
from application.contract import ChatResponse
from application.ports import Metrics
from entrypoints.settings import Settings
from entrypoints.worker.held_records import WorkerStats
from entrypoints.worker.responder import Responder

log = logging.getLogger(__name__)


class BatchCompletions:
    """The worker's poller of parked batch requests (one per replica; any of them
    answers a request, exactly one does)."""

    def __init__(
        self,
        service: ChatService,
        settings: Settings,
        responder: Responder,
        stats: WorkerStats,
        stopping: Callable[[], bool],
        metrics: Metrics | None = None,
        model_label: Callable[[str], str] = str,
    ) -> None:
        self.service = service
        self.settings = settings
        self.responder = responder
        self.stats = stats
        self.stopping = stopping
        self.metrics = metrics
        self.model_label = model_label

    @property
    def active(self) -> bool:
        """Whether this worker answers through the Batch API at all."""
        return self.service.batches.collector is not None

    async def serve(self) -> None:
        """Poll until cancelled (at shutdown)."""
        while not self.stopping():
            await self.poll_once()
            await asyncio.sleep(self.settings.BATCH_POLL_INTERVAL)

    async def poll_once(self) -> int:
        """One round; the responses this replica delivered."""
        try:
            delivered = await self.service.batches.poll(self._deliver)
        except asyncio.CancelledError:
            raise
        except Exception:  # the store is down, say: the next round tries again
            log.exception("parked batch requests could not be polled this time")
            return 0
        self.stats.batch_waiting = self.service.batches.parked_seen
        return delivered

    async def _deliver(self, request_id: str, response: ChatResponse) -> None:
        await self.responder.publish(request_id.encode(), response.encode())
        if response.ok:
            self.stats.answered += 1
        else:
            self.stats.errors += 1
        self.stats.batch_answered += 1
        if self.metrics is not None:
            try:
                self.metrics.request_finished(
                    outcome=response.outcome, model=self.model_label(response.model or "none"), kind="text",
                    seconds=response.processing_time,
                )
                if response.ok:
                    self.metrics.reply_served(source="batch")
            except Exception:  # telemetry must never stop a response
                log.exception("could not record metrics for a batch response")
