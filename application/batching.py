"""Requests answered through the provider's Batch API: collected for a while, sent
as one batch, and polled until the batch ends.

The batch's id is recorded on each request's conversation (BatchSubmitted)
before anyone waits for it, so a worker that takes over a request after a
restart or a rebalance waits for the same batch instead of paying again; polling
needs only the batch id (the adapter reads the custom ids back from the batch's
input file).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from application.ports import BatchModel, BatchState, ModelCall, ModelError, ModelReply

log = logging.getLogger(__name__)

POLL_RETRY_MAX_DELAY = 300.0


@dataclass
class _Waiting:
    entries: list[tuple[str, ModelCall]] = field(default_factory=list)
    submitted: asyncio.Future[str] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class BatchCollector:
    """Collects calls for `window` seconds (or until `max_requests`), submits them
    as one batch, and polls each batch every `poll_interval` seconds for as long
    as anyone waits for it."""

    def __init__(
        self,
        model: BatchModel,
        window: float = 10.0,
        max_requests: int = 1000,
        poll_interval: float = 30.0,
    ) -> None:
        self.model = model
        self.window = window
        self.max_requests = max_requests
        self.poll_interval = poll_interval
        self._waiting: _Waiting | None = None
        self._flush: asyncio.TimerHandle | None = None
        self._polls: dict[str, asyncio.Task[BatchState]] = {}
        self._tasks: set[asyncio.Task[object]] = set()

    async def submit(self, custom_id: str, call: ModelCall) -> str:
        """Add a call to the next batch; the batch's id once it was created.
        Raises ModelError when the batch could not be created."""
        waiting = self._waiting
        if waiting is None:
            waiting = self._waiting = _Waiting()
            self._flush = asyncio.get_running_loop().call_later(self.window, self._send, waiting)
        waiting.entries.append((custom_id, call))
        if len(waiting.entries) >= self.max_requests:
            self._send(waiting)
        return await asyncio.shield(waiting.submitted)

    def _send(self, waiting: _Waiting) -> None:
        if self._waiting is waiting:
            self._waiting = None
            if self._flush is not None:
                self._flush.cancel()
        task = asyncio.ensure_future(self._create(waiting))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _create(self, waiting: _Waiting) -> None:
        try:
            batch_id = await self.model.submit(waiting.entries)
        except ModelError as error:
            log.warning("a batch of %d request(s) could not be created: %s",
                        len(waiting.entries), error.error_type)
            waiting.submitted.set_exception(error)
        except Exception:  # an adapter bug must not leave callers waiting
            log.exception("a batch of %d request(s) could not be created", len(waiting.entries))
            waiting.submitted.set_exception(
                ModelError("upstream_error", "The batch could not be sent to the model provider.")
            )
        else:
            log.info("batch %s created with %d request(s)", batch_id, len(waiting.entries))
            waiting.submitted.set_result(batch_id)
        # Nobody may be waiting (all abandoned): retrieve the exception all the same.
        waiting.submitted.exception()

    async def result(self, batch_id: str, custom_id: str) -> ModelReply:
        """The reply to one call of a batch, once the batch ended; raises its ModelError."""
        poll = self._polls.get(batch_id)
        if poll is None or poll.done() and poll.exception() is not None:
            poll = self._polls[batch_id] = asyncio.ensure_future(self._until_ended(batch_id))
        state = await asyncio.shield(poll)
        assert state.results is not None
        outcome = state.results.get(custom_id) or ModelError(
            "upstream_error", "The batch ended without an answer to this request."
        )
        if isinstance(outcome, ModelError):
            raise outcome
        return outcome

    async def _until_ended(self, batch_id: str) -> BatchState:
        delay = self.poll_interval
        while True:
            try:
                state = await self.model.poll(batch_id)
                delay = self.poll_interval
            except ModelError as error:
                log.warning("batch %s could not be polled (%s); again in %.0fs",
                            batch_id, error.error_type, delay)
                state = None
                delay = min(delay * 2, POLL_RETRY_MAX_DELAY)
            if state is not None and state.ended:
                log.info("batch %s ended: %s", batch_id, state.status)
                # Kept for callers still to come (redeliveries) until forgotten.
                asyncio.get_running_loop().call_later(
                    3600, self._polls.pop, batch_id, None
                )
                return state
            await asyncio.sleep(delay)

    async def close(self) -> None:
        """Stop polling (the batches go on at the provider; they are found again by id)."""
        if self._flush is not None:
            self._flush.cancel()
        for task in [*self._polls.values(), *self._tasks]:
            task.cancel()
        await self.model.close()
