"""Requests answered through the provider's Batch API: collected for a while, sent
as one batch per model, and polled until the batch ends.

The batch's id is recorded on each request's conversation (BatchSubmitted) as
soon as the batch exists, so a worker that takes over a request after a restart
or a rebalance waits for the same batch instead of paying again; polling needs
only the batch id (the adapter reads the custom ids back from the batch's input
file). A request withdrawn before its batch is sent leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from application.ports import BatchModel, BatchState, ModelCall, ModelError, ModelReply

log = logging.getLogger(__name__)

POLL_RETRY_MAX_DELAY = 300.0
ENDED_KEPT_SECONDS = 3600.0  # an ended batch's results stay for redeliveries this long
# OpenAI takes batch input files of up to 200 MB: a batch is sent before it gets near.
MAX_BATCH_BYTES = 150 * 1024 * 1024


@dataclass
class _Entry:
    custom_id: str
    call: ModelCall
    sent: asyncio.Future[str]  # the batch id, once the batch exists


@dataclass
class _Collecting:
    """The entries of one model's next batch."""

    entries: dict[str, _Entry] = field(default_factory=dict)
    size: int = 0
    flush: asyncio.TimerHandle | None = None


def call_size(call: ModelCall) -> int:
    """Roughly the bytes a call takes in the batch's input file (images in base64)."""
    return 512 + sum(
        len(m.text.encode()) + sum(len(image.data) * 4 // 3 + 64 for image in m.images)
        for m in call.messages
    )


class BatchCollector:
    """Collects calls for `window` seconds (or until `max_requests`, or the input
    file's size limit), submits them as one batch per model, and polls each batch
    every `poll_interval` seconds for as long as anyone waits for it."""

    def __init__(
        self,
        model: BatchModel,
        window: float = 10.0,
        max_requests: int = 1000,
        poll_interval: float = 30.0,
        max_bytes: int = MAX_BATCH_BYTES,
    ) -> None:
        self.model = model
        self.window = window
        self.max_requests = max_requests
        self.poll_interval = poll_interval
        self.max_bytes = max_bytes
        self._collecting: dict[str, _Collecting] = {}  # by model: a batch has one model
        self._polls: dict[str, asyncio.Task[BatchState]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, custom_id: str, call: ModelCall) -> str:
        """Add a call to its model's next batch; the batch's id once it was created.
        Raises ModelError when the batch could not be created. Cancelled before the
        batch is sent, the call is taken out of it."""
        loop = asyncio.get_running_loop()
        collecting = self._collecting.get(call.model)
        size = call_size(call)
        if collecting is not None and collecting.size + size > self.max_bytes:
            self._send(call.model)
            collecting = None
        if collecting is None:
            collecting = self._collecting[call.model] = _Collecting()
            collecting.flush = loop.call_later(self.window, self._send, call.model)
        entry = collecting.entries[custom_id] = _Entry(custom_id, call, loop.create_future())
        collecting.size += size
        if len(collecting.entries) >= self.max_requests:
            self._send(call.model)
        try:
            return await asyncio.shield(entry.sent)
        except asyncio.CancelledError:
            self.withdraw(call.model, custom_id)
            raise

    def withdraw(self, model: str, custom_id: str) -> bool:
        """Take a call out of its model's next batch; False if that batch was sent."""
        collecting = self._collecting.get(model)
        if collecting is None or collecting.entries.pop(custom_id, None) is None:
            return False
        log.info("a request left the next batch before it was sent")
        if not collecting.entries:
            self._drop(model)
        return True

    def _drop(self, model: str) -> _Collecting | None:
        collecting = self._collecting.pop(model, None)
        if collecting is not None and collecting.flush is not None:
            collecting.flush.cancel()
        return collecting

    def _send(self, model: str) -> None:
        collecting = self._drop(model)
        if collecting is None or not collecting.entries:
            return
        task = asyncio.ensure_future(self._create(list(collecting.entries.values())))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _create(self, entries: list[_Entry]) -> None:
        try:
            batch_id = await self.model.submit([(e.custom_id, e.call) for e in entries])
        except ModelError as error:
            log.warning("a batch of %d request(s) could not be created: %s",
                        len(entries), error.error_type)
            outcome: str | ModelError = error
        except Exception:  # an adapter bug must not leave callers waiting
            log.exception("a batch of %d request(s) could not be created", len(entries))
            outcome = ModelError(
                "upstream_error", "The batch could not be sent to the model provider."
            )
        else:
            log.info("batch %s created with %d request(s)", batch_id, len(entries))
            outcome = batch_id
        for entry in entries:
            if entry.sent.done():
                continue
            if isinstance(outcome, ModelError):
                entry.sent.set_exception(outcome)
                entry.sent.exception()  # nobody may be waiting: retrieved all the same
            else:
                entry.sent.set_result(outcome)

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
                asyncio.get_running_loop().call_later(
                    ENDED_KEPT_SECONDS, self._polls.pop, batch_id, None
                )
                return state
            await asyncio.sleep(delay)

    async def close(self) -> None:
        """Stop collecting and polling (batches go on at the provider; they are found
        again by id); calls not yet sent are withdrawn."""
        for model in list(self._collecting):
            for entry in self._drop(model).entries.values():  # type: ignore[union-attr]
                entry.sent.cancel()
        for task in [*self._polls.values(), *self._tasks]:
            task.cancel()
        await self.model.close()
