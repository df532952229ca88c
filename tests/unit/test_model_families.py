"""Which parameters each model family gets, and which model answers for the platform's names."""

from __future__ import annotations

import pytest

from domain.model_families import CHAT, OTHER, REASONING, base_model, family_of, served_model


@pytest.mark.parametrize("model", [
    "o1", "o1-mini", "o1-preview", "o1-pro", "o3", "o3-mini", "o3-pro", "o4-mini",
    "o4-mini-2025-04-16", "o3-mini-2025-01-31", "o1-2024-12-17",
    "gpt-5", "gpt-5-mini", "gpt-5-nano", "gpt-5-2025-08-07", "gpt-5.1", "gpt-5.2-pro",
    "ft:o4-mini-2025-04-16:acme:support:AbC123", "azure/o4-mini", "O4-Mini",
])
def test_reasoning_models_get_max_completion_tokens_and_no_temperature(model):
    assert family_of(model) is REASONING
    assert family_of(model).parameters(500, 0.7) == {"max_completion_tokens": 500}


@pytest.mark.parametrize("model", [
    "gpt-4o", "gpt-4o-mini", "gpt-4o-2024-08-06", "gpt-4o-mini-2024-07-18", "chatgpt-4o-latest",
    "gpt-4o-latest", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano-2025-04-14", "gpt-4.5-preview",
    "gpt-4-turbo", "gpt-4-turbo-2024-04-09", "gpt-4", "gpt-4-0613", "gpt-3.5-turbo",
    "gpt-3.5-turbo-0125", "gpt-5-chat-latest", "gpt-5.1-chat-latest",
    "ft:gpt-4o-mini-2024-07-18:acme::9x8y7z", "ft:gpt-3.5-turbo:acme:custom:id",
])
def test_chat_models_get_max_completion_tokens_and_their_temperature(model):
    assert family_of(model) is CHAT
    assert family_of(model).parameters(500, 0.2) == {"max_completion_tokens": 500, "temperature": 0.2}


@pytest.mark.parametrize("model", ["llama-3.1-70b", "my-model", "m", "offline:gpt-4o-mini", "omni"])
def test_other_names_keep_the_parameters_every_compatible_server_knows(model):
    assert family_of(model) is OTHER
    assert family_of(model).parameters(500, 0.2) == {"max_tokens": 500, "temperature": 0.2}


@pytest.mark.parametrize(("model", "base"), [
    ("o4-mini-2025-04-16", "o4-mini"),
    ("gpt-3.5-turbo-0125", "gpt-3.5-turbo"),
    ("ft:gpt-4o-mini-2024-07-18:acme:support:AbC123", "gpt-4o-mini"),
    ("ft:gpt-4.1:acme::x", "gpt-4.1"),
    ("azure/gpt-4o", "gpt-4o"),
    ("gpt-4o", "gpt-4o"),
])
def test_snapshots_fine_tunes_and_provider_names_map_to_their_base_model(model, base):
    assert base_model(model) == base


def test_the_platforms_vision_model_name_is_answered_by_a_served_model():
    assert served_model("gpt-4o-latest") == "gpt-4o"
    assert served_model("chatgpt-4o-latest") == "chatgpt-4o-latest"
    assert served_model("o4-mini-2025-04-16") == "o4-mini-2025-04-16"
    assert served_model("ft:gpt-4o-mini:acme::x") == "ft:gpt-4o-mini:acme::x"
