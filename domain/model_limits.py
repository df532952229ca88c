"""What a model can take and give: its context window and its longest reply, in tokens.

A request that cannot fit its model (max_tokens above the model's output limit,
or a prompt plus max_tokens beyond the context window) is a caller's mistake:
the provider would refuse it every time. Models not in the table are not
checked here; the provider decides.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

# A dated snapshot ("gpt-4o-mini-2024-07-18") has its model's limits, unless the
# table names the snapshot itself (as domain.pricing matches names).
_SNAPSHOT = re.compile(r"-\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class ModelLimits:
    """Tokens: the whole window (prompt and reply together) and the longest reply."""

    context_window: int
    max_output_tokens: int

    def __post_init__(self) -> None:
        for name in ("context_window", "max_output_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive number of tokens, not {value!r}")


_GPT_4O = ModelLimits(128_000, 16_384)
_GPT_41 = ModelLimits(1_047_576, 32_768)
_REASONING = ModelLimits(200_000, 100_000)
_GPT_5 = ModelLimits(400_000, 128_000)

# OpenAI's published figures for the chat models the service knows.
DEFAULT_MODEL_LIMITS: dict[str, ModelLimits] = {
    "gpt-5": _GPT_5,
    "gpt-5-mini": _GPT_5,
    "gpt-5-nano": _GPT_5,
    "gpt-4.1": _GPT_41,
    "gpt-4.1-mini": _GPT_41,
    "gpt-4.1-nano": _GPT_41,
    "gpt-4o": _GPT_4O,
    "gpt-4o-2024-05-13": ModelLimits(128_000, 4_096),  # the first gpt-4o snapshot
    "gpt-4o-mini": _GPT_4O,
    "chatgpt-4o-latest": _GPT_4O,
    "gpt-4o-latest": _GPT_4O,  # the platform's name for the vision model
    "gpt-4-turbo": ModelLimits(128_000, 4_096),
    "gpt-4": ModelLimits(8_192, 8_192),
    "gpt-3.5-turbo": ModelLimits(16_385, 4_096),
    "o1": _REASONING,
    "o1-mini": ModelLimits(128_000, 65_536),
    "o3": _REASONING,
    "o3-mini": _REASONING,
    "o4-mini": _REASONING,
}


class ModelLimitTable:
    """Looks a model up by its exact name, then without a snapshot date."""

    def __init__(self, limits: Mapping[str, ModelLimits]) -> None:
        self.limits = dict(limits)

    def limits_of(self, model: str) -> ModelLimits | None:
        """The model's limits, or None for a model the table does not know."""
        found = self.limits.get(model)
        if found is None:
            found = self.limits.get(_SNAPSHOT.sub("", model))
        return found
