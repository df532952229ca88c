"""The Conversation aggregate: one user's chat thread, every turn an event."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

CONVERSATION_NAMESPACE = uuid5(NAMESPACE_URL, "chater-gpt/conversation")

# Tokens the chat format spends on each message besides its text (role, separators).
MESSAGE_OVERHEAD_TOKENS = 4


def normalise_email(user_email: str) -> str:
    return user_email.strip().lower()


@dataclass(frozen=True)
class Turn:
    """One answered exchange: what the user said and what the model replied."""

    request_id: str
    user_message: str
    image_count: int
    reply: str
    model: str


class Conversation(Aggregate):
    """A user's conversation (optionally one of several, named by a thread id).

    It remembers which requests it has seen and how each ended, so that a
    redelivered request is answered from the record instead of the model.
    """

    @staticmethod
    def create_id(user_email: str, thread: str | None = None) -> UUID:
        return conversation_id(user_email, thread)

    @event("Started")
    def __init__(self, user_email: str, thread: str | None = None) -> None:
        self.user_email = normalise_email(user_email)
        self.thread = thread
        self.turns: list[Turn] = []
        self.pending: dict[str, dict[str, Any]] = {}
        self.outcomes: dict[str, dict[str, Any]] = {}

    # Commands: each body is both the decision and the state change of its event.

    @event("UserMessageReceived")
    def receive_message(
        self,
        request_id: str,
        message: str,
        image_digests: list[str],
        model: str,
        max_tokens: int,
        temperature: float,
        system_prompt: str | None,
        caller_context: str | None,
        history_turns: int,
    ) -> None:
        """Record the user's message and exactly what will be sent along with it."""
        self.check_not_seen(request_id)
        self.pending[request_id] = {"message": message, "image_count": len(image_digests)}

    class ReplyRecorded(Aggregate.Event):
        """Version 2 added what a reply cost: cached prompt tokens and dollars."""

        class_version = 2

        request_id: str
        reply: str
        model: str
        prompt_tokens: int
        completion_tokens: int
        finish_reason: str
        answered_at: str
        processing_time: float
        cached_tokens: int
        cost: float | None

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            # Replies recorded before prices were kept: their cost was never known.
            state["cached_tokens"] = 0
            state["cost"] = None

    @event(ReplyRecorded)
    def record_reply(
        self,
        request_id: str,
        reply: str,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        finish_reason: str,
        answered_at: str,
        processing_time: float,
        cached_tokens: int,
        cost: float | None,
    ) -> None:
        """Record the model's answer to a pending request and what it cost
        (`cost` in US dollars, None when the model has no price)."""
        self.check_pending(request_id)
        asked = self.pending.pop(request_id)
        self.turns.append(
            Turn(request_id, asked["message"], asked["image_count"], reply, model)
        )
        self.outcomes[request_id] = {
            "response": reply,
            "model": model,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
            "cost_usd": cost,
            "finish_reason": finish_reason,
            "timestamp": answered_at,
            "processing_time": processing_time,
        }

    @event("RequestFailed")
    def record_failure(
        self,
        request_id: str,
        error_type: str,
        error_message: str,
        failed_at: str,
        processing_time: float,
    ) -> None:
        """Record that a request could not be answered, and why."""
        self.check_not_concluded(request_id)
        self.pending.pop(request_id, None)
        self.outcomes[request_id] = {
            "error": {"type": error_type, "message": error_message},
            "timestamp": failed_at,
            "processing_time": processing_time,
        }

    # Queries ------------------------------------------------------------------

    def outcome(self, request_id: str) -> dict[str, Any] | None:
        """How a request ended, or None while it has not ended."""
        return self.outcomes.get(request_id)

    def is_pending(self, request_id: str) -> bool:
        return request_id in self.pending

    def recent_turns(
        self, max_turns: int, max_tokens: int, count_tokens: Callable[[str], int]
    ) -> list[Turn]:
        """The latest turns, oldest first, that fit both bounds.

        Newer turns matter more, so selection walks back from the latest and stops
        at the first turn that no longer fits.
        """
        selected: list[Turn] = []
        room = max_tokens
        for turn in reversed(self.turns[-max_turns:] if max_turns > 0 else []):
            cost = turn_tokens(turn, count_tokens)
            if cost > room:
                break
            selected.append(turn)
            room -= cost
        selected.reverse()
        return selected

    # Invariants ---------------------------------------------------------------

    def check_not_seen(self, request_id: str) -> None:
        if request_id in self.pending or request_id in self.outcomes:
            raise RequestAlreadyReceived(request_id)

    def check_pending(self, request_id: str) -> None:
        if request_id not in self.pending:
            raise RequestNotPending(request_id)

    def check_not_concluded(self, request_id: str) -> None:
        if request_id in self.outcomes:
            raise RequestAlreadyConcluded(request_id)


def conversation_id(user_email: str, thread: str | None = None) -> UUID:
    """Derive the id so that any worker finds a conversation without a lookup."""
    return uuid5(CONVERSATION_NAMESPACE, f"{normalise_email(user_email)}\n{thread or ''}")


def turn_tokens(turn: Turn, count_tokens: Callable[[str], int]) -> int:
    return (
        count_tokens(turn.user_message)
        + count_tokens(turn.reply)
        + 2 * MESSAGE_OVERHEAD_TOKENS
    )


class ConversationError(Exception):
    """Base class of the conversation's domain errors."""


class RequestAlreadyReceived(ConversationError):
    """The request id was already received by this conversation."""


class RequestNotPending(ConversationError):
    """A reply was recorded for a request that is not waiting for one."""


class RequestAlreadyConcluded(ConversationError):
    """The request already has an outcome."""
