"""The settings the chat use case applies to every request."""

from __future__ import annotations

from dataclasses import dataclass, field

from application.ports import ModelCall
from domain.model_limits import DEFAULT_MODEL_LIMITS, ModelLimitTable
from domain.pricing import DEFAULT_PRICES, PriceTable


@dataclass(frozen=True)
class ChatPolicy:
    model: str = "gpt-4o-mini"
    vision_model: str = "gpt-4o"
    max_tokens: int = 4000
    temperature: float = 0.7
    context_max_tokens: int = 8000
    context_max_turns: int = 10
    retention_days: int = 30  # older turns have expired: never context
    # Personal data in what is sent to the model: "off", "mask" (placeholders the
    # reply's are put back from) or "block" (refused with pii_rejected).
    pii_mode: str = "mask"
    prices: PriceTable = field(default_factory=lambda: PriceTable(DEFAULT_PRICES))
    # Context windows and reply limits of the models the service knows.
    model_limits: ModelLimitTable = field(
        default_factory=lambda: ModelLimitTable(DEFAULT_MODEL_LIMITS)
    )
    # The response cache (when there is one) and single-flight: which calls may
    # share a reply (temperature 0 only, unless any), and whose ("user", "global").
    cache_ttl: float = 3600.0
    cache_any_temperature: bool = False
    cache_scope: str = "user"
    # History that no longer fits the window: "truncate" drops the oldest turns,
    # "summarize" has `summary_model` summarise them into one note.
    context_strategy: str = "summarize"
    summary_model: str = "gpt-4o-mini"
    # Requests below this priority (or asking for it) go through the Batch API.
    batch_priority: int | None = None
    # Seconds a model call may take once out (model_retries.call_budget: every
    # attempt, the backoff, the fallback): a request another worker may have called
    # the model for is not called for again before that call's time is up.
    call_budget: float = 123.5  # TIMEOUT 30, MAX_RETRIES 3, no fallback

    def shareable(self, call: ModelCall) -> bool:
        """Whether identical calls may get one reply: only a deterministic one."""
        return call.temperature == 0 or self.cache_any_temperature
