"""MODEL_PRICES: a JSON or YAML file of prices that override or extend the shipped table.

    gpt-4o-mini:
      prompt: 0.15          # dollars per million prompt tokens
      cached_prompt: 0.075  # per million prompt tokens served from the provider's cache
      completion: 0.60      # per million completion tokens

It also reads the table LiteLLM publishes, `model_prices_and_context_window.json`,
so that operators can reuse a maintained table: its entries with a price per
token for input and output (`input_cost_per_token`, `output_cost_per_token` and,
where the provider discounts cached prompt tokens, `cache_read_input_token_cost`)
become prices per million tokens, under the same names; its other entries
(images, audio, per-request prices) and its `sample_spec` are skipped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from adapters.settings_file import read_json_or_yaml
from domain.pricing import DEFAULT_PRICES, Price, PriceTable, price_from


class PriceFileError(ValueError):
    """The price file cannot be used; the message says where and why."""


def read_price_file(path: str | Path) -> dict[str, Price]:
    path = Path(path)
    document = read_json_or_yaml(path, PriceFileError)
    if not isinstance(document, dict) or not document:
        raise PriceFileError(f"{path} must map model names to prices")
    if _is_litellm_table(document):
        return _litellm_prices(path, document)
    prices = {}
    for model, entry in document.items():
        try:
            prices[str(model)] = price_from(entry)
        except (ValueError, TypeError) as error:
            raise PriceFileError(f"{path}: {model}: {error}") from None
    return prices


_LITELLM_FIELDS = ("input_cost_per_token", "output_cost_per_token", "litellm_provider")


def _is_litellm_table(document: Mapping[object, object]) -> bool:
    return "sample_spec" in document or any(
        isinstance(entry, Mapping) and any(name in entry for name in _LITELLM_FIELDS)
        for entry in document.values()
    )


def _litellm_prices(path: Path, document: Mapping[object, object]) -> dict[str, Price]:
    """The token prices of a LiteLLM table, per million tokens."""
    prices = {}
    for model, entry in document.items():
        if model == "sample_spec" or not isinstance(entry, Mapping):
            continue
        if "input_cost_per_token" not in entry or "output_cost_per_token" not in entry:
            continue  # priced per image, second, character or request: not a chat model's price
        per_token = {}
        for field in ("input_cost_per_token", "output_cost_per_token", "cache_read_input_token_cost"):
            value = entry.get(field)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
                or not 0 <= value < math.inf
            ):
                raise PriceFileError(
                    f"{path}: {model}: {field} must be a number of dollars >= 0, not {value!r}"
                )
            # Per million tokens, rounded so that 2.5e-06 reads 2.5, not 2.4999999999999996.
            per_token[field] = None if value is None else round(value * 1_000_000, 9)
        prices[str(model)] = Price(
            per_token["input_cost_per_token"],
            per_token["output_cost_per_token"],
            per_token["cache_read_input_token_cost"],
        )
    if not prices:
        raise PriceFileError(f"{path} is a LiteLLM table without a price per token")
    return prices


def price_table(path: str | None) -> PriceTable:
    """The shipped prices, overridden by the file at `path` when there is one."""
    table = PriceTable(DEFAULT_PRICES)
    return table.overridden(read_price_file(path)) if path else table
