"""The context window: what a request's model call carries, and the most it can cost.

Pure: the policy, a token counter and the conversation in; the call out. The
system prompt, the summary of compacted turns and the new message are always
sent; the stored history, then the caller's context string, fill what is left
of the token window (and of the model's own window, after the reply's room).

A request whose parts that are always sent, with the reply's room, can never fit
its model or the day's whole token budget is a caller's mistake (`misfit`).
"""

from __future__ import annotations

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
from domain.model_limits import ModelLimits

# Tokens the chat format adds once per call to prime the reply.
REPLY_PRIMING_TOKENS = 3
CONTEXT_PREFIX = "Earlier in this conversation:\n"
SUMMARY_PREFIX = "Summary of the earlier conversation:\n"

# A text longer than this (in characters) is counted in pieces of this length:
# the count of a long text stops as soon as it is known not to fit (a run of
# letters megabytes long takes the tokenizer seconds), at the price of about one
# token more per piece than counted whole.
PIECE_CHARS = 256 * 1024

# Why a request can never be answered as asked (numbers only, nothing it says).
ABOVE_MODEL_OUTPUT = "'max_tokens' is {asked}, but {model} writes at most {limit} tokens in a reply."
ABOVE_MODEL_WINDOW = (
    "The request needs {at_least}{needed} tokens ({at_least}{prompt} for the message, its "
    "images and the system prompt, plus {max_tokens} for the reply), but {model}'s context "
    "window holds {window}."
)
ABOVE_DAILY_BUDGET = (
    "The request needs {up_to}{needed} tokens ({at_least}{prompt} for the message, "
    "its images and the system prompt, plus {max_tokens} for the reply), more than the "
    "service's whole daily token budget of {limit}."
)
REPLY_ABOVE_DAILY_BUDGET = (
    "'max_tokens' is {max_tokens}, more than the service's whole daily token budget of {limit}."
)

Count = Callable[[str], int]


class TextCounts:
    """Token counts as one model counts them, each text encoded once (deciding on a
    summary, checking the request fits and building the call count the same texts)."""

    def __init__(self, count: Count) -> None:
        self._count = count
        self._known: dict[str, int] = {}

    def __call__(self, text: str) -> int:
        known = self._known.get(text)
        if known is None:
            known, _ = self._pieces(text, None)
            self._known[text] = known
        return known

    def within(self, text: str, room: int) -> tuple[int, bool]:
        """(the text's count, True); or, when a long text was found not to fit
        before its end, (tokens it has at least, more than `room`; False)."""
        known = self._known.get(text)
        if known is not None:
            return known, True
        counted, whole = self._pieces(text, room)
        if whole:
            self._known[text] = counted
        return counted, whole

    def _pieces(self, text: str, room: int | None) -> tuple[int, bool]:
        if len(text) <= PIECE_CHARS:
            return self._count(text), True
        total = pieces = 0
        for start in range(0, len(text), PIECE_CHARS):
            total += self._count(text[start:start + PIECE_CHARS])
            pieces += 1
            # Less a token a piece (a word cut in two): still more than it may take.
            if room is not None and total - pieces > room and start + PIECE_CHARS < len(text):
                return total - pieces, False
        return total, True


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

    def counting(self, request: ChatRequest) -> TextCounts:
        """Token counts as the request's model counts them, each text encoded once:
        checking it fits, deciding on a summary and building the call count the
        same texts."""
        return TextCounts(self.counter.for_model(self.model_for(request)).count)

    def limits_of(self, model: str) -> ModelLimits | None:
        return self.policy.model_limits.limits_of(model)

    def max_tokens_for(self, request: ChatRequest) -> int:
        """The reply's room: as asked, or the default within the model's limit."""
        if request.max_tokens:
            return request.max_tokens
        limits = self.limits_of(self.model_for(request))
        default = self.policy.max_tokens
        return min(default, limits.max_output_tokens) if limits is not None else default

    def misfit(self, request: ChatRequest, count: TextCounts, daily_limit: int) -> str | None:
        """Why a request can never be answered as asked, or None: a reply longer than
        its model writes, or the parts always sent (message, images, system prompt)
        with the reply's room beyond the model's context window or the day's whole
        budget. Counts only what the call counts anyway (`count` keeps them), and a
        long text only until it is known not to fit."""
        model = self.model_for(request)
        limits = self.limits_of(model)
        max_tokens = self.max_tokens_for(request)
        if limits is not None and max_tokens > limits.max_output_tokens:
            return ABOVE_MODEL_OUTPUT.format(
                asked=max_tokens, model=model, limit=limits.max_output_tokens
            )
        if max_tokens > daily_limit:  # no need to count the prompt
            return REPLY_ABOVE_DAILY_BUDGET.format(max_tokens=max_tokens, limit=daily_limit)
        ceiling = daily_limit if limits is None else min(daily_limit, limits.context_window)
        # The room the parts always sent may take; each text is counted within it.
        room = ceiling - max_tokens - REPLY_PRIMING_TOKENS
        prompt = REPLY_PRIMING_TOKENS + MESSAGE_OVERHEAD_TOKENS + sum(
            image_cost(image, model) for image in request.images
        )
        whole = True
        texts = [request.message]
        if request.system_prompt:
            texts.append(request.system_prompt)
            prompt += MESSAGE_OVERHEAD_TOKENS
        for text in texts:
            if not whole:
                break
            tokens, whole = count.within(text, room - prompt + REPLY_PRIMING_TOKENS)
            prompt += tokens
        needed = prompt + max_tokens
        at_least = "" if whole else "at least "
        if limits is not None and needed > limits.context_window:
            return ABOVE_MODEL_WINDOW.format(
                at_least=at_least, needed=needed, prompt=prompt, max_tokens=max_tokens,
                model=model, window=limits.context_window,
            )
        if needed > daily_limit:
            return ABOVE_DAILY_BUDGET.format(
                up_to=at_least or "up to ", at_least=at_least, needed=needed, prompt=prompt, max_tokens=max_tokens,
                limit=daily_limit,
            )
        return None

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
            max_tokens=self.max_tokens_for(request),
            temperature=(
                request.temperature if request.temperature is not None else policy.temperature
            ),
        )
        return PlannedCall(call, len(history), self.estimate_tokens(call, count))

    def history_room(self, request: ChatRequest, summary: str | None, count: Count) -> int:
        """Tokens of the window left for stored turns once the new message, its
        images, the system prompt and the summary are counted. The window is the
        policy's, and never more than the model's own less the reply's room."""
        model = self.model_for(request)
        window = self.policy.context_max_tokens
        limits = self.limits_of(model)
        if limits is not None:
            window = min(window, limits.context_window - self.max_tokens_for(request)
                         - REPLY_PRIMING_TOKENS)
        room = window - self._always_sent(request, model, count)
        if summary is not None:
            room -= count(SUMMARY_PREFIX + summary) + MESSAGE_OVERHEAD_TOKENS
        return room

    @staticmethod
    def _always_sent(request: ChatRequest, model: str, count: Count) -> int:
        """Tokens of the parts of a call never trimmed: the message, its images and
        the system prompt."""
        tokens = (
            count(request.message)
            + MESSAGE_OVERHEAD_TOKENS
            + sum(image_cost(image, model) for image in request.images)
        )
        if request.system_prompt:
            tokens += count(request.system_prompt) + MESSAGE_OVERHEAD_TOKENS
        return tokens

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
