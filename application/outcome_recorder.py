"""How a request ended, recorded on its conversation, and the response that says so.

Each method records at most once (a request another worker concluded meanwhile
keeps its outcome) and answers with what is recorded.
"""

from __future__ import annotations

import time

from application.contract import ChatResponse, iso_timestamp_of
from application.ports import Clock, ModelReply
from domain.conversation import Conversation, Shredded
from domain.pricing import PriceTable


class OutcomeRecorder:
    def __init__(self, clock: Clock, prices: PriceTable) -> None:
        self.clock = clock
        self.prices = prices

    def reply(
        self, request_id: str, started: float, reply: ModelReply, source: str,
        conversation: Conversation,
    ) -> ChatResponse:
        """Record a reply; one this request did not pay for (`source` "cache" or
        "shared") is recorded as using no tokens and costing nothing."""
        if conversation.is_pending(request_id):  # else concluded by another worker meanwhile
            asked = conversation.pending_message(request_id)
            paid = source in ("model", "batch")
            prompt, cached, completion = (
                (reply.prompt_tokens, reply.cached_tokens, reply.completion_tokens)
                if paid else (0, 0, 0)
            )
            conversation.record_reply(
                request_id=request_id,
                # The user was erased while it was on its way: only its accounting is kept.
                reply=asked if isinstance(asked, Shredded) else reply.text,
                model=reply.model,
                prompt_tokens=prompt,
                completion_tokens=completion,
                finish_reason=reply.finish_reason,
                answered_at=iso_timestamp_of(self.clock.now()),
                processing_time=round(time.perf_counter() - started, 3),
                cached_tokens=cached,
                cost=self.prices.cost(
                    reply.model, prompt, cached, completion, batch=source == "batch"
                ) if paid else 0.0,
                source=source,
            )
        response = self.recorded(conversation, request_id)
        if response.ok and response.withheld:
            # The store keeps only the accounting; the caller still gets the answer.
            response = response.with_text(reply.text)
        return response

    def failure(
        self, request_id: str, started: float, error_type: str, message: str,
        conversation: Conversation, request_digest: str | None = None,
    ) -> ChatResponse:
        """Record that a request failed, and how (unless it ended meanwhile); a
        request refused before it was received records `request_digest` with it."""
        if conversation.outcome(request_id) is None:
            conversation.record_failure(
                request_id=request_id,
                error_type=error_type,
                error_message=message,
                failed_at=iso_timestamp_of(self.clock.now()),
                processing_time=round(time.perf_counter() - started, 3),
                request_digest=request_digest,
            )
        return self.recorded(conversation, request_id)

    @staticmethod
    def recorded(conversation: Conversation, request_id: str) -> ChatResponse:
        """The response for what is recorded of a request (it has ended)."""
        outcome = conversation.outcome(request_id)
        assert outcome is not None
        return ChatResponse.of(outcome)
