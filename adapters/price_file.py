"""MODEL_PRICES: a JSON or YAML file of prices that override or extend the shipped table.

    gpt-4o-mini:
      prompt: 0.15          # dollars per million prompt tokens
      cached_prompt: 0.075  # per million prompt tokens served from the provider's cache
      completion: 0.60      # per million completion tokens
"""

from __future__ import annotations

from pathlib import Path

import yaml

from domain.pricing import DEFAULT_PRICES, Price, PriceTable, price_from


class PriceFileError(ValueError):
    """The price file cannot be used; the message says where and why."""


def read_price_file(path: str | Path) -> dict[str, Price]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise PriceFileError(f"cannot read {path}: {error.strerror or error}") from None
    try:
        # YAML is a superset of JSON: one parser reads both.
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise PriceFileError(f"{path} is neither JSON nor YAML: {error}") from None
    if not isinstance(document, dict) or not document:
        raise PriceFileError(f"{path} must map model names to prices")
    prices = {}
    for model, entry in document.items():
        try:
            prices[str(model)] = price_from(entry)
        except (ValueError, TypeError) as error:
            raise PriceFileError(f"{path}: {model}: {error}") from None
    return prices


def price_table(path: str | None) -> PriceTable:
    """The shipped prices, overridden by the file at `path` when there is one."""
    table = PriceTable(DEFAULT_PRICES)
    return table.overridden(read_price_file(path)) if path else table
