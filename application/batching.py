"""Requests answered through the provider's Batch API: collected for a while and
sent as one batch per model.

Once the provider has created a batch, `on_created` records which requests it
holds (the tickets given with each call) before any caller learns the batch's
id; from then on the batch is found in the store and polled by any replica (see
application.batch_answers). A batch that exists is billed: recording it is tried
again until it is, never given up. A request withdrawn before its batch is sent
leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from application.ports import BatchModel, ModelCall, ModelError

log = logging.getLogger(__name__)

# OpenAI takes batch input files of up to 200 MB: a batch is sent before it gets near.
MAX_BATCH_BYTES = 150 * 1024 * 1024
# A created batch that could not be recorded is recorded again after this wait
# (seconds), doubling up to the longest.
RECORD_FIRST_WAIT = 0.5
RECORD_LONGEST_WAIT = 30.0


@dataclass
class _Entry:
    custom_id: str
    call: ModelCall
    sent: asyncio.Future[str]  # the batch id, once the batch exists
    ticket: Any = None  # what on_created records of it


# Called with (batch id, model, [(custom id, ticket)]) once a batch exists and
# before its callers learn its id; called again while it raises (it must be
# idempotent): the batch exists, so its callers wait for it to be recorded.
OnCreated = Callable[[str, str, list[tuple[str, Any]]], Awaitable[None]]


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
    file's size limit) and submits them as one batch per model. `poll_interval`
    is how often the batches' pollers ask the provider about them."""

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
        self._tasks: set[asyncio.Task[None]] = set()
        self.on_created: OnCreated | None = None

    @property
    def collecting(self) -> int:
        """Calls waiting for their batch to be sent."""
        return sum(len(c.entries) for c in self._collecting.values())

    async def submit(self, custom_id: str, call: ModelCall, ticket: Any = None) -> str:
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
        entry = collecting.entries[custom_id] = _Entry(custom_id, call, loop.create_future(), ticket)
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
            outcome = await self._created(batch_id, entries)
        for entry in entries:
            if entry.sent.done():
                continue
            if isinstance(outcome, ModelError):
                entry.sent.set_exception(outcome)
                entry.sent.exception()  # nobody may be waiting: retrieved all the same
            else:
                entry.sent.set_result(outcome)

    async def _created(self, batch_id: str, entries: list[_Entry]) -> str:
        """The batch's id once on_created has recorded it. The batch exists and is
        billed, so its requests never fail for want of its record: recording it is
        tried again (the store's outages are waited out, as everywhere) until it
        is recorded, or until the collector closes."""
        if self.on_created is None:
            return batch_id
        wait = RECORD_FIRST_WAIT
        while True:
            try:
                await self.on_created(batch_id, entries[0].call.model,
                                      [(e.custom_id, e.ticket) for e in entries])
                return batch_id
            except Exception:
                log.exception("batch %s could not be recorded yet; trying again in %.1fs",
                              batch_id, wait)
            await asyncio.sleep(wait)
            wait = min(wait * 2, RECORD_LONGEST_WAIT)

    async def close(self) -> None:
        """Stop collecting (batches go on at the provider; they are found again in
        the store); calls not yet sent are withdrawn."""
        for model in list(self._collecting):
            for entry in self._drop(model).entries.values():  # type: ignore[union-attr]
                entry.sent.cancel()
        for task in self._tasks:
            task.cancel()
        await self.model.close()
