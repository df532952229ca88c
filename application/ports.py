"""The ports the use cases need; adapters implement them, the container wires them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, TypeVar
from uuid import UUID

from application.images import Image

A = TypeVar("A")
T = TypeVar("T")


@dataclass(frozen=True)
class ChatMessage:
    """One message of a model call: a role, its text and any images."""

    role: str  # "system", "user" or "assistant"
    text: str
    images: tuple[Image, ...] = ()


@dataclass
class CallProgress:
    """Whether a model call has been handed to the provider: a call cut short after
    that may be billed, one cut short before (held back at an open circuit, say)
    costs nothing. Shared by the copies of a call (masked, for a fallback model)."""

    sent: bool = False
    # The call's worst case in tokens (prompt + max_tokens), counted by the rate
    # limiter's tokens per minute until the reply says what it used; and the rate
    # limiter's admission of its latest attempt (retries and the fallback take
    # their own), which that reply settles.
    tokens: int = 0
    admission: object = None
    # Awaited just before the call goes again after a wait of its own (a retry, the
    # fallback, an open circuit): the use case records when it goes, so that another
    # worker waits for it from then, or stops it by raising (that worker took it over).
    resending: Callable[[], Awaitable[None]] | None = None

    async def going_again(self) -> None:
        if self.resending is not None:
            await self.resending()


@dataclass(frozen=True)
class ModelCall:
    model: str
    messages: list[ChatMessage]
    max_tokens: int
    temperature: float
    progress: CallProgress = field(default_factory=CallProgress, compare=False, repr=False)


@dataclass(frozen=True)
class RateLimitStatus:
    """What the provider says is left of its limits, and when they reset."""

    remaining_requests: int | None = None
    limit_requests: int | None = None
    remaining_tokens: int | None = None
    limit_tokens: int | None = None
    reset_seconds: float | None = None

    def remaining_fraction(self) -> float | None:
        """The scarcer of requests and tokens left, as a share of the limit."""
        shares = [
            remaining / limit
            for remaining, limit in (
                (self.remaining_requests, self.limit_requests),
                (self.remaining_tokens, self.limit_tokens),
            )
            if remaining is not None and limit
        ]
        return min(shares) if shares else None

    def remaining_calls(self) -> int | None:
        return self.remaining_requests


@dataclass(frozen=True)
class ModelReply:
    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "stop"
    # Prompt tokens the provider served from its prompt cache (billed cheaper).
    cached_tokens: int = 0
    rate_limits: RateLimitStatus | None = None


class LanguageModel(Protocol):
    async def complete(self, call: ModelCall) -> ModelReply:
        """Answer a call, or raise ModelError."""
        ...

    async def close(self) -> None:
        """Release connections; called once when the worker stops."""
        ...


class TokenCounter(Protocol):
    def count(self, text: str) -> int:
        """Tokens the text takes in the model's encoding."""
        ...

    def tail(self, text: str, max_tokens: int) -> str:
        """The end of the text that fits in max_tokens."""
        ...

    def for_model(self, model: str) -> TokenCounter:
        """A counter that counts as `model` does (its tokenizer)."""
        ...


class RateLimiter(Protocol):
    async def acquire(self, tokens: int = 0) -> object:
        """Wait until one more model call is allowed, counting `tokens` (its worst
        case, prompt + completion) against the tokens per minute; its admission."""
        ...

    def settle(self, admission: object, tokens: int) -> None:
        """The admitted call used `tokens` in fact: count them instead of its
        estimate. Never waits, never raises."""
        ...

    def observe(self, status: RateLimitStatus) -> None:
        """Take the provider's own account of its limits into the pacing."""
        ...

    def keep_alive(self) -> None:
        """Called now and then, also while no calls are made: limits shared by
        several replicas count this one among them."""
        ...

    async def close(self) -> None:
        ...


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...


@dataclass
class ModelError(Exception):
    """A model call that failed; error_type is one of the contract's error types."""

    error_type: str
    message: str
    retryable: bool = False
    details: dict[str, str] = field(default_factory=dict)
    # Seconds the provider asked us to wait before trying again, if it said.
    retry_after: float | None = None
    # Set when the provider refuses the whole account, whatever the call: its
    # reason ("insufficient_quota", "api_key_refused", "permission_denied").
    # Waiting fixes it (someone tops up the quota or rotates the key), so the
    # circuit breaker pauses every call instead of failing them.
    pause: str | None = None

    def __str__(self) -> str:
        return f"{self.error_type}: {self.message}"


class AggregateStore(Protocol[A]):
    """Aggregates of one kind in the event store, changed as a unit of work."""

    async def change(
        self,
        aggregate_id: UUID,
        decide: Callable[[A], T | Awaitable[T]],
        create: Callable[[], A] | None = None,
        wait_out_outages: bool = True,
    ) -> T:
        """Load the aggregate (or `create` it), apply `decide`, save what it recorded;
        on a conflict, load again and decide again. Store outages are waited out
        unless `wait_out_outages` is false. Returns what `decide` returned."""
        ...

    async def snapshot(self, aggregate_id: UUID) -> None:
        """Take a snapshot of the aggregate as stored now."""
        ...

    def evict(self, aggregate_ids: Iterable[UUID | str]) -> None:
        """Forget copies kept in memory: the next change reads the store."""
        ...


@dataclass(frozen=True)
class Detection:
    """One piece of personal data found in a text: ``text[start:end] == value``."""

    entity_type: str
    start: int
    end: int
    value: str


class PiiDetector(Protocol):
    def detect(self, text: str) -> list[Detection]:
        """The personal data in the text: non-overlapping, in order of position."""
        ...


class Metrics(Protocol):
    def request_finished(self, *, outcome: str, model: str, kind: str, seconds: float) -> None:
        """One response produced: `outcome` is "answered" or the error type."""
        ...

    def reply_served(self, *, source: str) -> None:
        """One answer: "model" (its own call), "cached" (the cache or an identical
        call in flight) or "batch" (the Batch API)."""
        ...

    def model_called(self, *, model: str, outcome: str, seconds: float) -> None:
        """One call to the model provider: `outcome` is "ok" or the error type."""
        ...

    def model_used(
        self, *, model: str, prompt_tokens: int, cached_tokens: int, completion_tokens: int,
        cost: float | None,
    ) -> None:
        """What one answered call used; `cost` in dollars, None when unpriced."""
        ...

    def shared_limits(self, *, up: bool) -> None:
        """Whether the rate limits shared by all replicas (in Redis) hold now; False:
        this process holds its own share of them (an outage)."""
        ...


class DataKeys(Protocol):
    """Data keys per user and day, wrapped at rest by a key derived from SECRET_KEY.
    Destroying a key (crypto-shredding) makes what it encrypted unreadable for good."""

    def owner_of(self, conversation_id: str) -> str | None:
        """The owner (see domain.conversation.data_owner) of a conversation, if known."""
        ...

    def register(self, conversation_id: str, owner: str) -> None:
        """Remember whose a conversation is (idempotent)."""
        ...

    def conversations_of(self, owner: str) -> list[str]:
        ...

    def store_key(self, initial: bytes) -> bytes:
        """The key of the store's outer encryption (`initial` when there is none yet)."""
        ...

    def key_for_writing(
        self, owner: str, day: str, conversation_id: str | None = None
    ) -> tuple[str, bytes]:
        """(key id, 32-byte key) of the owner's live key for the UTC day, issued when
        there is none (a destroyed key is never used again); `conversation_id`, when
        given, is remembered as the owner's."""
        ...

    def issue_for_writing(self, wanted: Sequence[tuple[str, str, str]]) -> None:
        """`key_for_writing` for many (owner, day, conversation id) at once, in one
        round trip to the store."""
        ...

    def refresh_for_writing(self, wanted: Sequence[tuple[str, str]]) -> None:
        """Check at once that the keys cached for many (owner, day) are still live."""
        ...

    def known_owner(self, conversation_id: str) -> str | None:
        """The conversation's owner if known without asking the store."""
        ...

    def key_for_reading(self, key_id: str) -> bytes | str:
        """The key, or why it is gone: "erased" or "expired"."""
        ...

    def shred_owner(self, owner: str) -> int:
        """Destroy every key of the owner (erasure); how many were live."""
        ...

    def erased_since(self, since: str) -> list[str]:
        """Owners erased at or after `since` (ISO UTC), by any process."""
        ...

    def shred_before(self, day: str) -> list[str]:
        """Destroy every key of a day before `day` (retention); the owners concerned."""
        ...

    def forget_unwrapped(self) -> None:
        """Drop every key unwrapped in memory (keys were destroyed, here or elsewhere)."""
        ...

    def wrapped_by(self) -> dict[str, int]:
        """Live keys per id of the master key that wraps them."""
        ...

    def rewrap(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Wrap every live key with the current master key; how many were rewrapped.
        `progress(done, total)` after each key."""
        ...


class ResponseCache(Protocol):
    """Replies kept for a while by what was asked, so that the same call is not paid
    for twice. Entries are grouped by `scope` (a user's data owner id, or "global")
    so that a user's can be forgotten at once. An outage of the cache is a miss,
    never an error: every method swallows its own failures."""

    async def get(self, scope: str, digest: str) -> ModelReply | None:
        """The reply kept for the call hashed to `digest` (hex), or None."""
        ...

    async def put(self, scope: str, digest: str, reply: ModelReply, ttl: float) -> None:
        """Keep a reply for `ttl` seconds."""
        ...

    async def forget(self, scope: str) -> int:
        """Drop every entry of a scope (the user was erased); how many were dropped."""
        ...

    async def close(self) -> None:
        ...


@dataclass(frozen=True)
class BatchState:
    """What the provider says of a submitted batch."""

    batch_id: str
    # The provider's status: validating, in_progress, finalizing, completed, failed,
    # expired, cancelling or cancelled.
    status: str
    # Once the batch has ended: the outcome of every entry by its custom id (an
    # entry the provider gave no outcome for gets an upstream_error ModelError).
    results: dict[str, ModelReply | ModelError] | None = None

    @property
    def ended(self) -> bool:
        return self.results is not None


class BatchModel(Protocol):
    """The provider's Batch API: calls answered within a day at a lower price."""

    async def submit(self, entries: list[tuple[str, ModelCall]]) -> str:
        """Send calls (by custom id, unique within the batch) as one batch; its id.
        Raises ModelError when the batch could not be created."""
        ...

    async def poll(self, batch_id: str) -> BatchState:
        """The batch's state now; raises ModelError when the provider cannot be asked."""
        ...

    async def close(self) -> None:
        ...
