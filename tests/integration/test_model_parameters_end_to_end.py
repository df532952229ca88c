"""Requests OpenAI accepts: through the worker process, the real broker, PostgreSQL and the
real openai SDK over HTTP against the local server, which refuses what the real API
refuses (max_tokens or a temperature for a reasoning model, a model id it does not serve)."""

from __future__ import annotations

import json

import pytest

from tests.support.records import produce, read

pytestmark = pytest.mark.integration

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def request(user: str, message: str, **extra) -> bytes:
    return json.dumps({"user_email": user, "message": message, **extra}).encode()


def test_reasoning_models_and_vision_requests_without_a_model_are_answered(
    broker, topics, fake_openai, worker
):
    produce(broker, topics["REQUEST_TOPIC"], [
        ("reason", request("ada@example.com", "reason: think it over", model="o4-mini",
                           temperature=0.2, max_tokens=300)),
        ("snapshot", request("bob@example.com", "snapshot: and you", model="o4-mini-2025-04-16")),
        ("look", request("eve@example.com", "look: what is this?", images=[PNG])),
        ("platform", request("joe@example.com", "platform: and this?", images=[PNG],
                             model="gpt-4o-latest")),
        ("text", request("kim@example.com", "text: hello", temperature=0.3)),
    ])
    answers = dict(read(broker, topics["RESPONSE_TOPIC"], 5))
    assert all("error" not in a for a in answers.values()), answers
    assert answers["reason"]["response"] == "echo: reason: think it over | seen: 1 messages"
    assert answers["reason"]["model"] == "o4-mini"
    assert answers["snapshot"]["model"] == "o4-mini-2025-04-16"
    assert answers["look"]["response"].endswith("| images: 1")
    # VISION_MODEL's default is a served model; the platform's name is answered by it.
    assert answers["look"]["model"] == answers["platform"]["model"] == "gpt-4o"
    assert answers["platform"]["cost_usd"] is not None  # priced as what answered

    sent = {body["messages"][-1]["content"] if isinstance(body["messages"][-1]["content"], str)
            else body["messages"][-1]["content"][0]["text"]: body for body in fake_openai.requests()}
    assert len(sent) == 5, list(sent)
    reasoning = sent["reason: think it over"]
    assert reasoning["max_completion_tokens"] == 300
    assert "max_tokens" not in reasoning and "temperature" not in reasoning
    assert "temperature" not in sent["snapshot: and you"]
    assert sent["platform: and this?"]["model"] == sent["look: what is this?"]["model"] == "gpt-4o"
    chat = sent["text: hello"]
    assert (chat["model"], chat["max_completion_tokens"], chat["temperature"]) == ("gpt-4o-mini", 500, 0.3)
    assert "max_tokens" not in chat
    assert fake_openai.faults() == {}


def test_a_model_the_provider_does_not_serve_is_an_invalid_request(broker, topics, fake_openai, worker):
    produce(broker, topics["REQUEST_TOPIC"], [
        ("nope", request("ada@example.com", "hello", model="gpt-nonexistent")),
    ])
    [(key, answer)] = read(broker, topics["RESPONSE_TOPIC"], 1)
    assert key == "nope"
    assert answer["error"] == {"type": "invalid_request",
                               "message": "The model 'gpt-nonexistent' is not available."}
