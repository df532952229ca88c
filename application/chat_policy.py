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
    # A request another worker may have called the model for is not called for
    # again before that call's time is up: `call_timeout` (TIMEOUT, one attempt;
    # a retry or the fallback is recorded when it goes) plus `call_slack` (the
    # moments before a call goes, an HTTP timeout's overshoot, recording the reply).
    call_timeout: float = 30.0
    call_slack: float = 5.0

    def shareable(self, call: ModelCall) -> bool:
        """Whether identical calls may get one reply: only a deterministic one."""
        return call.temperature == 0 or self.cache_any_temperature
