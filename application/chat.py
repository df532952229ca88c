"""The chat use case: answer one request with the conversation's history as context."""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import (
    JSONTranscoder,
    PersistenceError,
    RecordConflictError,
    Transcoding,
)

from application.contract import ChatRequest, error_payload
from application.ports import (
    ChatMessage,
    Clock,
    LanguageModel,
    ModelCall,
    ModelError,
    ModelReply,
    RateLimiter,
    TokenCounter,
)
from domain.conversation import (
    MESSAGE_OVERHEAD_TOKENS,
    Conversation,
    Turn,
    conversation_id,
    turn_tokens,
)
from domain.token_budget import SERVICE_SCOPE, BudgetBusy, BudgetExceeded, TokenBudget

log = logging.getLogger(__name__)

# Tokens the chat format adds once per call to prime the reply.
REPLY_PRIMING_TOKENS = 3
CONTEXT_PREFIX = "Earlier in this conversation:\n"
BUDGET_EXHAUSTED = "The service's daily token budget is used up; please try again tomorrow."
STORE_RETRY_MAX_DELAY = 5.0

T = TypeVar("T")


@dataclass(frozen=True)
class ChatPolicy:
    """The settings the use case applies to every request."""

    model: str = "gpt-4o-mini"
    vision_model: str = "gpt-4o-latest"
    max_tokens: int = 4000
    temperature: float = 0.7
    daily_token_limit: int = 1_000_000
    context_max_tokens: int = 8000
    context_max_turns: int = 10
    # Worst case of one high-detail image for the gpt-4o family (8 tiles of 170
    # tokens + 85), reserved per image before the call and settled with the truth.
    image_token_estimate: int = 1445
    conflict_retries: int = 10


class TurnAsDict(Transcoding):
    type = Turn
    name = "turn"

    def encode(self, obj: Turn) -> dict[str, Any]:
        return obj.__dict__

    def decode(self, data: dict[str, Any]) -> Turn:
        return Turn(**data)


class ChatRecords(Application):
    """Conversations and token budgets, stored as events in one notification log."""

    name = "chatergpt"
    # Loading replays from the latest snapshot, so a busy day's budget or a long
    # conversation does not make every request slower than the one before.
    snapshotting_intervals = {Conversation: 50, TokenBudget: 200}

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        transcoder.register(TurnAsDict())

    def conversation(self, conversation_id: UUID) -> Conversation | None:
        try:
            return self.repository.get(conversation_id)
        except AggregateNotFoundError:
            return None

    def budget(self, scope: str, day: str) -> TokenBudget:
        try:
            return self.repository.get(TokenBudget.create_id(scope, day))
        except AggregateNotFoundError:
            return TokenBudget(scope, day)


@dataclass(frozen=True)
class _Prepared:
    call: ModelCall
    reservation_id: str
    day: str


class _BudgetBusy:
    """The budget's free room is held by requests in flight: wait and try again."""


BUSY = _BudgetBusy()


class ChatService:
    """Answers chat requests: context, budget, rate limit, model, record."""

    def __init__(
        self,
        records: ChatRecords,
        model: LanguageModel,
        counter: TokenCounter,
        rate_limiter: RateLimiter,
        clock: Clock,
        policy: ChatPolicy,
    ) -> None:
        self.records = records
        self.model = model
        self.counter = counter
        self.rate_limiter = rate_limiter
        self.clock = clock
        self.policy = policy
        # Every request writes the day's budget: writers of this process take
        # turns instead of colliding; other processes are kept out by optimistic
        # concurrency (a conflict reloads and decides again).
        self._write_lock = threading.Lock()

    async def handle(self, request: ChatRequest) -> dict[str, Any]:
        """The response payload for a request (DESIGN §2), success or error.

        A request that already ended is answered from its recorded outcome, so a
        redelivered record never reaches the model twice.
        """
        started = time.perf_counter()
        wait = 0.02
        while (prepared := await asyncio.to_thread(self._begin, request, started)) is BUSY:
            await asyncio.sleep(wait)
            wait = min(wait * 2, 1.0)
        if isinstance(prepared, dict):
            return prepared
        assert isinstance(prepared, _Prepared)
        try:
            await self.rate_limiter.acquire()
            reply = await self.model.complete(prepared.call)
        except ModelError as error:
            log.warning("model call failed for %s: %s", request.request_id, error.error_type)
            return await self._persist(
                self._fail, request, prepared, error.error_type, error.message, started
            )
        except Exception:
            log.exception("model call failed unexpectedly for %s", request.request_id)
            return await self._persist(
                self._fail, request, prepared, "upstream_error",
                "The model call failed unexpectedly.", started,
            )
        return await self._persist(self._finish, request, prepared, reply, started)

    async def _persist(self, step: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
        """Record how a request ended; the model was paid, so wait out a store outage."""
        delay = 0.1
        while True:
            try:
                return await asyncio.to_thread(step, *args)
            except PersistenceError as error:
                log.warning("could not record an outcome (%s); retrying in %.1fs", error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, STORE_RETRY_MAX_DELAY)

    # Steps, each one transaction, run in a thread because the store is synchronous.

    def _begin(
        self, request: ChatRequest, started: float
    ) -> _Prepared | _BudgetBusy | dict[str, Any]:
        cid = conversation_id(request.user_email, request.conversation_id)
        day = self.clock.now().date().isoformat()
        # Request ids are the producers' keys: scope them so that two users who
        # pick the same key never share a reservation.
        reservation_id = f"{cid}/{request.request_id}"

        def attempt() -> _Prepared | _BudgetBusy | dict[str, Any]:
            conversation = self.records.conversation(cid) or Conversation(
                request.user_email, request.conversation_id
            )
            outcome = conversation.outcome(request.request_id)
            if outcome is not None:
                log.info("request %s already answered; replaying", request.request_id)
                return outcome
            call, history_turns = self.build_call(request, conversation)
            estimate = self.estimate_tokens(call)
            if not conversation.is_pending(request.request_id):
                conversation.receive_message(
                    request_id=request.request_id,
                    message=request.message,
                    image_digests=[image.digest for image in request.images],
                    model=call.model,
                    max_tokens=call.max_tokens,
                    temperature=call.temperature,
                    system_prompt=request.system_prompt,
                    caller_context=request.context,
                    history_turns=history_turns,
                )
            budget = self.records.budget(SERVICE_SCOPE, day)
            try:
                budget.reserve(reservation_id, estimate, self.policy.daily_token_limit)
            except BudgetBusy:
                return BUSY
            except BudgetExceeded as error:
                log.warning("request %s refused: %s", request.request_id, error)
                outcome = self._conclude_failure(
                    conversation, request.request_id, "budget_exceeded", BUDGET_EXHAUSTED, started
                )
                self.records.save(conversation)
                return outcome
            self.records.save(conversation, budget)
            return _Prepared(call, reservation_id, day)

        return self._retrying(attempt)

    def _finish(
        self, request: ChatRequest, prepared: _Prepared, reply: ModelReply, started: float
    ) -> dict[str, Any]:
        cid = conversation_id(request.user_email, request.conversation_id)

        def attempt() -> dict[str, Any]:
            conversation = self._existing(cid)
            budget = self.records.budget(SERVICE_SCOPE, prepared.day)
            budget.settle(prepared.reservation_id, reply.prompt_tokens + reply.completion_tokens)
            outcome = conversation.outcome(request.request_id)
            if outcome is None:
                conversation.record_reply(
                    request_id=request.request_id,
                    reply=reply.text,
                    model=reply.model,
                    prompt_tokens=reply.prompt_tokens,
                    completion_tokens=reply.completion_tokens,
                    finish_reason=reply.finish_reason,
                    answered_at=self._timestamp(),
                    processing_time=round(time.perf_counter() - started, 3),
                )
                outcome = conversation.outcome(request.request_id)
            self.records.save(conversation, budget)
            assert outcome is not None
            return outcome

        return self._retrying(attempt)

    def _fail(
        self,
        request: ChatRequest,
        prepared: _Prepared,
        error_type: str,
        message: str,
        started: float,
    ) -> dict[str, Any]:
        cid = conversation_id(request.user_email, request.conversation_id)

        def attempt() -> dict[str, Any]:
            conversation = self._existing(cid)
            budget = self.records.budget(SERVICE_SCOPE, prepared.day)
            budget.release(prepared.reservation_id)
            outcome = conversation.outcome(request.request_id) or self._conclude_failure(
                conversation, request.request_id, error_type, message, started
            )
            self.records.save(conversation, budget)
            return outcome

        return self._retrying(attempt)

    # Helpers --------------------------------------------------------------------

    def build_call(
        self, request: ChatRequest, conversation: Conversation
    ) -> tuple[ModelCall, int]:
        """The model call for a request, and how many stored turns it carries.

        The system prompt and the new message are always sent; the stored history,
        then the caller's context string, fill what is left of the token window.
        """
        policy = self.policy
        count = self.counter.count
        model = request.model or (policy.vision_model if request.images else policy.model)
        room = policy.context_max_tokens - (
            count(request.message)
            + MESSAGE_OVERHEAD_TOKENS
            + len(request.images) * policy.image_token_estimate
        )
        messages: list[ChatMessage] = []
        if request.system_prompt:
            messages.append(ChatMessage("system", request.system_prompt))
            room -= count(request.system_prompt) + MESSAGE_OVERHEAD_TOKENS
        history = conversation.recent_turns(policy.context_max_turns, max(room, 0), count)
        room -= sum(turn_tokens(turn, count) for turn in history)
        if request.context:
            room -= count(CONTEXT_PREFIX) + MESSAGE_OVERHEAD_TOKENS
            if room > 0:
                context = self.counter.tail(request.context, room)
                messages.append(ChatMessage("system", CONTEXT_PREFIX + context))
        for turn in history:
            messages.append(ChatMessage("user", turn.user_message))
            messages.append(ChatMessage("assistant", turn.reply))
        messages.append(ChatMessage("user", request.message, request.images))
        call = ModelCall(
            model=model,
            messages=messages,
            max_tokens=request.max_tokens or policy.max_tokens,
            temperature=(
                request.temperature if request.temperature is not None else policy.temperature
            ),
        )
        return call, len(history)

    def estimate_tokens(self, call: ModelCall) -> int:
        """The most a call can spend: its prompt as the model counts it, plus max_tokens."""
        prompt = REPLY_PRIMING_TOKENS + sum(
            self.counter.count(message.text)
            + MESSAGE_OVERHEAD_TOKENS
            + len(message.images) * self.policy.image_token_estimate
            for message in call.messages
        )
        return prompt + call.max_tokens

    def _conclude_failure(
        self,
        conversation: Conversation,
        request_id: str,
        error_type: str,
        message: str,
        started: float,
    ) -> dict[str, Any]:
        conversation.record_failure(
            request_id=request_id,
            error_type=error_type,
            error_message=message,
            failed_at=self._timestamp(),
            processing_time=round(time.perf_counter() - started, 3),
        )
        outcome = conversation.outcome(request_id)
        assert outcome is not None
        return outcome

    def _existing(self, cid: UUID) -> Conversation:
        conversation = self.records.conversation(cid)
        if conversation is None:
            raise RuntimeError(f"conversation {cid} vanished from the event store")
        return conversation

    def _timestamp(self) -> str:
        return iso_timestamp(self.clock)

    def _retrying(self, attempt: Callable[[], T]) -> T:
        """Run a load-decide-save step again when another worker saved first."""
        with self._write_lock:
            for tries in range(1, self.policy.conflict_retries + 1):
                try:
                    return attempt()
                except RecordConflictError:
                    log.debug("concurrent write; reloading and trying again")
                    time.sleep(random.uniform(0, 0.01 * tries))  # jitter: let the other finish
            return attempt()


def rejection(error_type: str, message: str, clock: Clock, started: float) -> dict[str, Any]:
    """The payload for a request rejected before it reached the use case."""
    return error_payload(
        error_type,
        message,
        iso_timestamp(clock),
        round(time.perf_counter() - started, 3),
    )


def iso_timestamp(clock: Clock) -> str:
    """UTC time as the contract shows it, e.g. 2024-01-01T00:00:00.000Z."""
    return clock.now().isoformat(timespec="milliseconds").replace("+00:00", "Z")
