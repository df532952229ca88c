"""Context compaction: when a conversation's stored turns no longer fit the window,
the cheapest model summarises the older ones (with any earlier summary) into one
note, recorded as ContextCompacted. Half the window is kept for recent turns, so
that the next requests fit without a new summary. If the summary cannot be had
(the model fails, the budget is spent, the deadline nears), the oldest turns are
just dropped from the call.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from opentelemetry import trace

from application.budgets import Budgets
from application.call_masking import CallMasking
from application.chat_policy import ChatPolicy
from application.context_window import ContextWindow, Count, call_digest
from application.contract import ChatRequest, iso_timestamp_of
from application.model_slots import ModelSlots
from application.ports import ChatMessage, Clock, LanguageModel, ModelCall, ModelError
from domain.conversation import Conversation, Turn
from domain.token_budget import BudgetExceeded

log = logging.getLogger(__name__)

SUMMARY_INSTRUCTIONS = (
    "You keep the memory of a conversation between a user and an assistant. Summarise "
    "the exchanges below (and the summary so far, if given) into one concise note for "
    "the assistant's own later use: keep facts, names, numbers, decisions, the user's "
    "preferences and open questions; drop pleasantries. Write in the conversation's "
    "language, in plain prose, without a preamble, in at most {words} words."
)
SUMMARY_WINDOW_SHARE = 20  # a summary may take up to this share of the token window
SUMMARIES_KEPT = 1000  # summaries made whose save has not succeeded yet


class Compactor:
    def __init__(
        self,
        policy: ChatPolicy,
        window: ContextWindow,
        ledger: Budgets,
        masking: CallMasking,
        slots: ModelSlots,
        model: LanguageModel,
        clock: Clock,
        tracer: trace.Tracer,
    ) -> None:
        self.policy = policy
        self.window = window
        self.ledger = ledger
        self.masking = masking
        self.slots = slots
        self.model = model
        self.clock = clock
        self.tracer = tracer
        # Summaries made whose save has not succeeded yet, by summary call digest:
        # a save that conflicted reuses its summary instead of paying again.
        self._made: dict[str, dict[str, Any]] = {}

    async def compact_if_needed(
        self,
        request: ChatRequest,
        conversation: Conversation,
        reservation: str,
        count: Count,
        not_before: str,
        time_left: float | None,
    ) -> str | None:
        """Compact the conversation when its turns do not fit; the summary call's
        digest when it did (see `saved`)."""
        policy = self.policy
        turns = conversation.unsummarised_turns(not_before)
        previous = conversation.context_summary(not_before)
        room = max(self.window.history_room(request, previous, count), 0)
        if len(conversation.recent_turns(policy.context_max_turns, room, count, not_before)) == len(turns):
            return None
        keep = conversation.recent_turns(policy.context_max_turns // 2, room // 2, count, not_before)
        older = turns[: len(turns) - len(keep)]
        if not older:
            return None
        call = summary_call(policy.summary_model, previous, older, policy.context_max_tokens)
        digest = call_digest(call)
        made = self._made.get(digest)
        if made is None:
            made = await self._summarise(call, f"{reservation}/summary", request, time_left, len(older))
            if made is None:
                return None
            made.update(
                through_request_id=older[-1].request_id,
                content_from=conversation.summary_from if previous else older[0].answered_at,
                turns_covered=len(older),
            )
            self._made[digest] = made
            while len(self._made) > SUMMARIES_KEPT:
                self._made.pop(next(iter(self._made)))
        conversation.compact(**made, compacted_at=iso_timestamp_of(self.clock.now()))
        return digest

    def saved(self, digest: str) -> None:
        """The save that carried a summary succeeded: no retry needs it any more."""
        self._made.pop(digest, None)

    async def _summarise(
        self, call: ModelCall, hold: str, request: ChatRequest, time_left: float | None,
        turns: int,
    ) -> dict[str, Any] | None:
        """The summary and what it cost, or None when it cannot be had."""
        estimate = self.window.estimate_tokens(call)
        with self.tracer.start_as_current_span("compact context", attributes={
            "chater.turns_summarised": turns, "gen_ai.request.model": call.model,
        }):
            try:
                # Within the request's own deadline: a summary is not worth missing it.
                async with asyncio.timeout(time_left):
                    await self.ledger.reserve(hold, estimate, max_wait=0,
                                              user=request.user_email, models=(call.model,))
                    masked, session = await self.masking.mask(call)
                    call.progress.tokens = estimate  # what the rate limiter counts
                    async with self.slots.slot(request.priority, call, request.produced_at):
                        call.progress.sent = True
                        reply = await self.model.complete(masked)
                    self.slots.settle(call, reply)
            except (BudgetExceeded, ModelError, TimeoutError) as error:
                self._give_back(hold, estimate, call.progress.sent and isinstance(error, TimeoutError))
                log.warning("context not summarised (%s): the oldest turns are dropped",
                            type(error).__name__)
                return None
            except BaseException:
                self._give_back(hold, estimate, call.progress.sent)
                raise
        self.ledger.settle(hold, reply.prompt_tokens + reply.completion_tokens, reply)
        return {
            "summary": session.unmask(reply.text) if session is not None else reply.text,
            "model": reply.model,
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "cost": self.policy.prices.cost(
                reply.model, reply.prompt_tokens, reply.cached_tokens, reply.completion_tokens
            ),
        }

    def _give_back(self, hold: str, estimate: int, billed: bool) -> None:
        """End a hold whose call did not answer: a call cut short may still be billed
        by the provider, and counts as its estimate; any other is released."""
        if billed:
            self.ledger.settle(hold, estimate)
        else:
            self.ledger.release(hold)


def summary_call(model: str, previous: str | None, turns: list[Turn], window: int) -> ModelCall:
    """The call that summarises `turns` (after an earlier summary, if any)."""
    parts = [f"Summary so far:\n{previous}"] if previous else []
    for turn in turns:
        images = f" [{turn.image_count} image(s)]" if turn.image_count else ""
        parts.append(f"User:{images} {turn.user_message}\nAssistant: {turn.reply}")
    max_tokens = max(window // SUMMARY_WINDOW_SHARE, 64)
    return ModelCall(
        model=model,
        messages=[
            ChatMessage("system", SUMMARY_INSTRUCTIONS.format(words=max_tokens * 3 // 4)),
            ChatMessage("user", "\n\n".join(parts)),
        ],
        max_tokens=max_tokens,
        temperature=0.0,
    )
