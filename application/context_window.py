"""The context window: what a request's model call carries, and the most it can cost.

Pure: the policy, a token counter and the conversation in; the call out. The
system prompt, the summary of compacted turns and the new message are always
sent; the stored history, then the caller's context string, fill what is left
of the token window.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from application.chat_policy import ChatPolicy
from application.contract import ChatRequest, iso_timestamp_of
from application.images import Image, image_tokens
from application.ports import ChatMessage, ModelCall, TokenCounter
from domain.conversation import MESSAGE_OVERHEAD_TOKENS, Conversation, turn_tokens

# Tokens the chat format adds once per call to prime the reply.
REPLY_PRIMING_TOKENS = 3
CONTEXT_PREFIX = "Earlier in this conversation:\n"
SUMMARY_PREFIX = "Summary of the earlier conversation:\n"

Count = Callable[[str], int]


@dataclass(frozen=True)
class PlannedCall:
    """A request's model call, how many stored turns it carries, and the most it
    can spend (its prompt as the model counts it, plus max_tokens)."""

    call: ModelCall
    history_turns: int
    estimate: int


class ContextWindow:
    def __init__(self, policy: ChatPolicy, counter: TokenCounter) -> None:
        self.policy = policy
        self.counter = counter

    def model_for(self, request: ChatRequest) -> str:
        """The model a request asks for, or the default for its kind (text, vision)."""
        if request.model:
            return request.model
        return self.policy.vision_model if request.images else self.policy.model

    def counting(self, request: ChatRequest) -> Count:
        """Token counts as the request's model counts them, each text encoded once:
        deciding on a summary and building the call count the same texts."""
        return functools.cache(self.counter.for_model(self.model_for(request)).count)

    def not_before(self, now: datetime) -> str:
        """Turns answered before this have expired (retention): never context."""
        return iso_timestamp_of(now - timedelta(days=self.policy.retention_days))

    def plan(
        self, request: ChatRequest, conversation: Conversation, count: Count, not_before: str
    ) -> PlannedCall:
        """The model call for a request, with as much history as the window holds."""
        policy = self.policy
        model = self.model_for(request)
        messages: list[ChatMessage] = []
        if request.system_prompt:
            messages.append(ChatMessage("system", request.system_prompt))
        summary = conversation.context_summary(not_before)
        if summary is not None:
            messages.append(ChatMessage("system", SUMMARY_PREFIX + summary))
        room = self.history_room(request, summary, count)
        history = conversation.recent_turns(
            policy.context_max_turns, max(room, 0), count, not_before=not_before
        )
        room -= sum(turn_tokens(turn, count) for turn in history)
        if request.context:
            room -= count(CONTEXT_PREFIX) + MESSAGE_OVERHEAD_TOKENS
            if room > 0:
                context = self.counter.for_model(model).tail(request.context, room)
                messages.append(ChatMessage("system", CONTEXT_PREFIX + context))
        for turn in history:
            messages.append(ChatMessage("user", str(turn.user_message)))
            messages.append(ChatMessage("assistant", str(turn.reply)))
        messages.append(ChatMessage("user", request.message, request.images))
        call = ModelCall(
            model=model,
            messages=messages,
            max_tokens=request.max_tokens or policy.max_tokens,
            temperature=(
                request.temperature if request.temperature is not None else policy.temperature
            ),
        )
        return PlannedCall(call, len(history), self.estimate_tokens(call, count))

    def history_room(self, request: ChatRequest, summary: str | None, count: Count) -> int:
        """Tokens of the window left for stored turns once the new message, its
        images, the system prompt and the summary are counted."""
        model = self.model_for(request)
        room = self.policy.context_max_tokens - (
            count(request.message)
            + MESSAGE_OVERHEAD_TOKENS
            + sum(image_cost(image, model) for image in request.images)
        )
        if request.system_prompt:
            room -= count(request.system_prompt) + MESSAGE_OVERHEAD_TOKENS
        if summary is not None:
            room -= count(SUMMARY_PREFIX + summary) + MESSAGE_OVERHEAD_TOKENS
        return room

    def estimate_tokens(self, call: ModelCall, count: Count | None = None) -> int:
        """The most a call can spend: its prompt as the model counts it, plus max_tokens."""
        count = count or self.counter.for_model(call.model).count
        prompt = REPLY_PRIMING_TOKENS + sum(
            count(message.text)
            + MESSAGE_OVERHEAD_TOKENS
            + sum(image_cost(image, call.model) for image in message.images)
            for message in call.messages
        )
        return prompt + call.max_tokens


def image_cost(image: Image, model: str) -> int:
    """What an image costs the model, by OpenAI's published tile rule."""
    return image_tokens(image.width, image.height, model)


def call_digest(call: ModelCall) -> str:
    """What identifies a call's reply: model, parameters and every message (role,
    text, images by digest), hashed."""
    canonical = json.dumps([
        call.model, call.max_tokens, call.temperature,
        [[m.role, m.text, [image.digest for image in m.images]] for m in call.messages],
    ], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
