"""What a model call costs: a price table per model, in US dollars per million tokens."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase

# A dated snapshot ("gpt-4o-mini-2024-07-18") costs what its model costs, unless
# the table names the snapshot itself.
_SNAPSHOT = re.compile(r"-\d{4}-\d{2}-\d{2}$")
PER_TOKENS = 1_000_000
# OpenAI's Batch API bills every token of a batched call at half the standard price.
BATCH_DISCOUNT = 0.5


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens. Cached prompt tokens cost `cached_prompt`
    (the prompt price when the provider gives no discount)."""

    prompt: float
    completion: float
    cached_prompt: float | None = None

    def __post_init__(self) -> None:
        for name in ("prompt", "completion", "cached_prompt"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
                or not 0 <= value < math.inf  # NaN and infinity are no price either
            ):
                raise ValueError(f"{name} must be a number of dollars >= 0, not {value!r}")

    def cost(self, prompt_tokens: int, cached_tokens: int, completion_tokens: int) -> float:
        cached = min(cached_tokens, prompt_tokens)
        cached_price = self.prompt if self.cached_prompt is None else self.cached_prompt
        dollars = (
            (prompt_tokens - cached) * self.prompt
            + cached * cached_price
            + completion_tokens * self.completion
        ) / PER_TOKENS
        return round(dollars, 10)


# OpenAI's published standard (not Batch, not Flex) prices, in dollars per million
# tokens. MODEL_PRICES overrides or extends them; a model not found here is
# "unpriced", never free.
DEFAULT_PRICES: dict[str, Price] = {
    "gpt-5": Price(1.25, 10.00, 0.125),
    "gpt-5-mini": Price(0.25, 2.00, 0.025),
    "gpt-5-nano": Price(0.05, 0.40, 0.005),
    "gpt-4.1": Price(2.00, 8.00, 0.50),
    "gpt-4.1-mini": Price(0.40, 1.60, 0.10),
    "gpt-4.1-nano": Price(0.10, 0.40, 0.025),
    "gpt-4o": Price(2.50, 10.00, 1.25),
    "gpt-4o-2024-05-13": Price(5.00, 15.00),
    "gpt-4o-mini": Price(0.15, 0.60, 0.075),
    "chatgpt-4o-latest": Price(5.00, 15.00),
    "gpt-4-turbo": Price(10.00, 30.00),
    "gpt-4": Price(30.00, 60.00),
    "gpt-3.5-turbo": Price(0.50, 1.50),
    "o1": Price(15.00, 60.00, 7.50),
    "o1-mini": Price(1.10, 4.40, 0.55),
    "o3": Price(2.00, 8.00, 0.50),
    "o3-mini": Price(1.10, 4.40, 0.55),
    "o4-mini": Price(1.10, 4.40, 0.275),
    # The offline model of the demo and of tests without a key costs nothing.
    "offline:*": Price(0.0, 0.0, 0.0),
}


class PriceTable:
    """Looks a model up by its exact name, then without a snapshot date, then by
    the most specific pattern (`*` matches anything, e.g. `ft:gpt-4o-mini:*`)."""

    def __init__(self, prices: Mapping[str, Price]) -> None:
        self.prices = dict(prices)
        self._patterns = sorted(
            (name for name in self.prices if "*" in name or "?" in name), key=len, reverse=True
        )

    def names(self, model: str) -> bool:
        """True when the table names the model (or its snapshot's model), not a pattern."""
        return model in self.prices or _SNAPSHOT.sub("", model) in self.prices

    def price_of(self, model: str) -> Price | None:
        for name in (model, _SNAPSHOT.sub("", model)):
            if name in self.prices:
                return self.prices[name]
        for pattern in self._patterns:
            if fnmatchcase(model, pattern):
                return self.prices[pattern]
        return None

    def cost(
        self, model: str, prompt_tokens: int, cached_tokens: int, completion_tokens: int,
        batch: bool = False,
    ) -> float | None:
        """Dollars, or None when the model is not priced; `batch`: at the Batch API's price."""
        price = self.price_of(model)
        if price is None:
            return None
        cost = price.cost(prompt_tokens, cached_tokens, completion_tokens)
        return cost * BATCH_DISCOUNT if batch else cost

    def cheapest(self, models: list[str]) -> str | None:
        """The priced model among `models` whose prompt and completion cost least together."""
        priced = [(p.prompt + p.completion, m) for m in models if (p := self.price_of(m))]
        return min(priced)[1] if priced else None

    def overridden(self, prices: Mapping[str, Price]) -> PriceTable:
        return PriceTable({**self.prices, **prices})


def price_from(entry: object) -> Price:
    """A Price from a mapping such as {"prompt": 0.15, "cached_prompt": 0.075, "completion": 0.6}."""
    if not isinstance(entry, Mapping):
        raise ValueError("each model needs a mapping with prompt, cached_prompt and completion")
    unknown = set(entry) - {"prompt", "cached_prompt", "completion"}
    if unknown:
        raise ValueError(f"unknown field(s) {sorted(unknown)}")
    missing = {"prompt", "completion"} - set(entry)
    if missing:
        raise ValueError(f"missing {' and '.join(sorted(missing))}")
    return Price(entry["prompt"], entry["completion"], entry.get("cached_prompt"))
