"""Requests answered through the provider's Batch API: later, at half the price.

A request's call goes into its model's next batch (see BatchCollector) under a
random custom id, so the provider learns nothing of whose it is. As soon as the
batch exists, BatchSubmitted is recorded on the conversation (from a shielded
task, through conflicts and outages: the batch is billed), so whoever answers the
request next, after a restart or a rebalance, waits for that batch instead of
paying again. A request withdrawn before its batch is sent costs nothing.
"""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID, uuid4

from application.batching import BatchCollector
from application.chat_policy import ChatPolicy
from application.contract import ChatRequest, iso_timestamp_of
from application.ports import AggregateStore, Clock, ModelCall, ModelReply
from domain.conversation import Conversation


class BatchAnswers:
    def __init__(
        self,
        collector: BatchCollector | None,
        conversations: AggregateStore[Conversation],
        clock: Clock,
        policy: ChatPolicy,
        recordings: set[asyncio.Future[Any]],
    ) -> None:
        self.collector = collector
        self.conversations = conversations
        self.clock = clock
        self.policy = policy
        # Shielded work that outlives a cancelled request; awaited at close.
        self.recordings = recordings

    def batched(self, request: ChatRequest) -> bool:
        """Whether a request is answered through the Batch API."""
        if self.collector is None:
            return False
        threshold = self.policy.batch_priority
        return request.batch or (threshold is not None and request.priority < threshold)

    async def answer(
        self, cid: UUID, request_id: str, call: ModelCall, sent: tuple[str, str] | None
    ) -> ModelReply:
        """Send the call in the next batch (unless it already was, as (batch id,
        custom id): a redelivery) and wait for the batch to end."""
        assert self.collector is not None
        if sent is None:
            custom_id = uuid4().hex
            submitting = asyncio.ensure_future(self._submit(cid, request_id, custom_id, call))
            self.recordings.add(submitting)
            submitting.add_done_callback(self.recordings.discard)
            try:
                batch_id = await asyncio.shield(submitting)
            except asyncio.CancelledError:
                # Not sent yet: taken out, nothing is paid. Sent: it is billed, and the
                # task records BatchSubmitted, so whoever answers next waits for it.
                if self.collector.withdraw(call.model, custom_id):
                    submitting.cancel()
                raise
            sent = (batch_id, custom_id)
        return await self.collector.result(*sent)

    async def _submit(self, cid: UUID, request_id: str, custom_id: str, call: ModelCall) -> str:
        assert self.collector is not None
        batch_id = await self.collector.submit(custom_id, call)
        submitted_at = iso_timestamp_of(self.clock.now())

        def record(conversation: Conversation) -> None:
            if conversation.is_pending(request_id) and conversation.pending_batch(request_id) is None:
                conversation.submit_to_batch(request_id, batch_id, custom_id, submitted_at)

        await self.conversations.change(cid, record)
        return batch_id

    async def close(self) -> None:
        if self.collector is not None:
            await self.collector.close()
