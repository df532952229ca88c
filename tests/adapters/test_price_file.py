"""Price files in YAML or JSON: read, checked and laid over the default prices."""

from __future__ import annotations

import pytest

from adapters.price_file import PriceFileError, price_table, read_price_file
from domain.pricing import DEFAULT_PRICES, Price


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
