"""Price files in YAML or JSON: read, checked and laid over the default prices."""

from __future__ import annotations

import json

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
    ("gpt-x: {prompt: .nan, completion: 1}", "gpt-x: prompt must be a number of dollars >= 0"),
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


def litellm_table() -> dict:
    """The shape of LiteLLM's model_prices_and_context_window.json: dollars per token,
    a sample_spec, and entries priced otherwise than per token."""
    return {
        "sample_spec": {"input_cost_per_token": 0.0, "output_cost_per_token": 0.0,
                        "litellm_provider": "one of the providers", "mode": "one of: chat, ..."},
        "gpt-4o-mini": {"input_cost_per_token": 1.5e-07, "output_cost_per_token": 6e-07,
                        "cache_read_input_token_cost": 7.5e-08, "input_cost_per_token_batches": 7.5e-08,
                        "litellm_provider": "openai", "mode": "chat", "max_input_tokens": 128000,
                        "supports_vision": True},
        "acme-chat": {"input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05,
                      "litellm_provider": "acme", "mode": "chat"},
        "256-x-256/dall-e-2": {"input_cost_per_pixel": 2.4414e-07, "output_cost_per_pixel": 0.0,
                               "litellm_provider": "openai", "mode": "image_generation"},
        "whisper-1": {"input_cost_per_second": 0.0001, "output_cost_per_second": 0.0001,
                      "litellm_provider": "openai", "mode": "audio_transcription"},
    }


def test_litellms_price_table_is_read_per_million_tokens(tmp_path):
    path = tmp_path / "model_prices_and_context_window.json"
    path.write_text(json.dumps(litellm_table(), indent=4))
    assert read_price_file(path) == {
        "gpt-4o-mini": Price(0.15, 0.6, 0.075),
        "acme-chat": Price(2.5, 10.0),
    }
    table = price_table(str(path))
    assert table.price_of("gpt-4o-mini-2024-07-18") == Price(0.15, 0.6, 0.075)
    assert table.price_of("gpt-4o") == DEFAULT_PRICES["gpt-4o"]  # the shipped table stays beneath
    assert table.cost("acme-chat", 1000, 0, 1000) == 0.0125
    assert table.price_of("whisper-1") is None  # priced per second: not a chat price


@pytest.mark.parametrize("change, complaint", [
    ({"acme-chat": {"input_cost_per_token": -1e-06, "output_cost_per_token": 1e-05}},
     "acme-chat: input_cost_per_token must be a number of dollars >= 0, not -1e-06"),
    ({"acme-chat": {"input_cost_per_token": "cheap", "output_cost_per_token": 1e-05}},
     "acme-chat: input_cost_per_token must be a number of dollars >= 0, not 'cheap'"),
    ({"acme-chat": {"input_cost_per_token": 1e-06, "output_cost_per_token": float("nan")}},
     "acme-chat: output_cost_per_token must be a number of dollars >= 0, not nan"),
    ({"gpt-4o-mini": {"litellm_provider": "openai", "output_cost_per_image": 0.04},
      "acme-chat": {"litellm_provider": "acme", "mode": "chat"}},
     "is a LiteLLM table without a price per token"),
])
def test_a_bad_litellm_table_says_what_is_wrong(tmp_path, change, complaint):
    import json

    # A whole table of the last kind: none of its entries has a price per token.
    document = change if "without a price" in complaint else {**litellm_table(), **change}
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(document))
    with pytest.raises(PriceFileError) as error:
        read_price_file(path)
    assert complaint in str(error.value)


def test_a_user_limits_file_is_read_and_its_faults_never_quote_an_address(tmp_path):
    from adapters.user_limits import UserLimitsError, read_user_limits

    path = tmp_path / "limits.yaml"
    path.write_text("Ada@Example.com: 500000\nbob@example.com: 20000\n")
    assert read_user_limits(path) == {"ada@example.com": 500000, "bob@example.com": 20000}
    for text, complaint in [("ada@example.com: [broken", "is neither JSON nor YAML"),
                            ("ada@example.com: 0", "entry 1: the limit must be a whole number"),
                            ("ada@example.com: 1\nnobody: 5", "entry 2 is not an e-mail address"),
                            ("- ada@example.com", "must map e-mail addresses to daily tokens")]:
        path.write_text(text)
        with pytest.raises(UserLimitsError) as error:
            read_user_limits(path)
        assert complaint in str(error.value) and "ada@" not in str(error.value)
