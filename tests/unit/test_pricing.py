"""The price table: lookups, cached-prompt discounts, unpriced models and price files."""

from __future__ import annotations

import pytest

from adapters.price_file import PriceFileError, price_table, read_price_file
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


def test_price_files_in_yaml_or_json_override_and_extend(tmp_path):
    yaml_file = tmp_path / "prices.yaml"
    yaml_file.write_text(
        "gpt-4o-mini:\n  prompt: 0.2\n  completion: 0.8\n"
        "acme-llm:\n  prompt: 1\n  cached_prompt: 0.5\n  completion: 2\n"
    )
    table = price_table(str(yaml_file))
    assert table.price_of("gpt-4o-mini") == Price(0.2, 0.8)
    assert table.price_of("acme-llm") == Price(1, 2, 0.5)
    assert table.price_of("gpt-4o") == DEFAULT_PRICES["gpt-4o"]
    json_file = tmp_path / "prices.json"
    json_file.write_text('{"acme-llm": {"prompt": 3, "completion": 4}}')
    assert read_price_file(json_file) == {"acme-llm": Price(3, 4)}


@pytest.mark.parametrize("text, complaint", [
    ("[1, 2]", "must map model names to prices"),
    ("gpt-x: {prompt: 1}", "gpt-x: missing completion"),
    ("gpt-x: {prompt: -1, completion: 1}", "gpt-x: prompt must be a number of dollars >= 0"),
    ("gpt-x: {prompt: one, completion: 1}", "gpt-x: prompt must be a number"),
    ("gpt-x: {prompt: 1, completion: 1, output: 2}", "unknown field(s) ['output']"),
    ("gpt-x: [prompt", "neither JSON nor YAML"),
])
def test_bad_price_files_say_what_is_wrong(tmp_path, text, complaint):
    path = tmp_path / "prices.yaml"
    path.write_text(text)
    with pytest.raises(PriceFileError, match=None) as error:
        read_price_file(path)
    assert complaint in str(error.value)


def test_a_missing_price_file_is_named(tmp_path):
    with pytest.raises(PriceFileError, match="cannot read .*nowhere.yaml"):
        read_price_file(tmp_path / "nowhere.yaml")


def test_telemetry_names_only_models_the_service_knows():
    from application.model_names import ModelNames

    names = ModelNames(["gpt-4o-mini", "gpt-4o-latest", None], PriceTable(DEFAULT_PRICES))
    assert names.label("gpt-4o-latest") == "gpt-4o-latest"  # configured, though unpriced
    assert names.label("offline:gpt-4o-mini") == "offline:gpt-4o-mini"
    assert names.label("gpt-4.1-2025-04-14") == "gpt-4.1-2025-04-14"  # a priced snapshot
    assert names.label("call me on +44 20 7946 0958") == "other"
    assert names.label("offline:anything at all") == "other"
