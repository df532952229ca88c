"""The price table: lookups, cached-prompt discounts and unpriced models (price files:
tests/adapters/test_price_file.py)."""

from __future__ import annotations

import pytest

from domain.pricing import DEFAULT_PRICES, Price, PriceTable


def test_cost_is_tokens_times_price_per_million():
    table = PriceTable(DEFAULT_PRICES)
    # gpt-4o-mini: $0.15 prompt, $0.075 cached prompt, $0.60 completion per million.
    assert table.cost("gpt-4o-mini", 1_000_000, 0, 0) == pytest.approx(0.15)
    assert table.cost("gpt-4o-mini", 1000, 400, 500) == pytest.approx(
        (600 * 0.15 + 400 * 0.075 + 500 * 0.60) / 1e6
    )


def test_a_model_without_a_cache_discount_bills_cached_tokens_at_the_prompt_price():
    assert Price(5.0, 15.0).cost(1000, 1000, 0) == Price(5.0, 15.0).cost(1000, 0, 0)


def test_dated_snapshots_cost_what_their_model_costs_unless_priced_themselves():
    table = PriceTable(DEFAULT_PRICES)
    assert table.price_of("gpt-4o-mini-2024-07-18") == DEFAULT_PRICES["gpt-4o-mini"]
    assert table.price_of("gpt-4o-2024-05-13") == Price(5.0, 15.0)
    assert table.price_of("gpt-4o-2024-08-06") == DEFAULT_PRICES["gpt-4o"]


def test_unknown_models_are_unpriced_never_free():
    table = PriceTable(DEFAULT_PRICES)
    assert table.cost("gpt-4o-latest", 100, 0, 100) is None
    assert table.cost("gpt-4o-mini-tts", 100, 0, 100) is None  # no prefix guessing
    assert table.cost("offline:gpt-4o-mini", 100, 0, 100) == 0.0  # the demo's model is free


def test_the_most_specific_pattern_wins():
    table = PriceTable({"ft:*": Price(1, 1), "ft:gpt-4o-mini:*": Price(0.3, 1.2)})
    assert table.price_of("ft:gpt-4o-mini:acme::abc") == Price(0.3, 1.2)
    assert table.price_of("ft:gpt-4.1:acme::abc") == Price(1, 1)


def test_telemetry_names_only_models_the_service_knows():
    from application.model_names import ModelNames

    names = ModelNames(["gpt-4o-mini", "gpt-4o-latest", None], PriceTable(DEFAULT_PRICES))
    assert names.label("gpt-4o-latest") == "gpt-4o-latest"  # configured, though unpriced
    assert names.label("offline:gpt-4o-mini") == "offline:gpt-4o-mini"
    assert names.label("gpt-4.1-2025-04-14") == "gpt-4.1-2025-04-14"  # a priced snapshot
    assert names.label("call me on +44 20 7946 0958") == "other"
    assert names.label("offline:anything at all") == "other"
