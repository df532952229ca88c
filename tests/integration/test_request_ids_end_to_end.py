"""Through the real worker (Kafka, PostgreSQL, the openai SDK over HTTP): a request id
means one request, and a request that can never fit its model is the caller's
mistake."""

from __future__ import annotations

import json

import pytest

from tests.support.records import produce, read

pytestmark = pytest.mark.integration


def request(message: str, **extra) -> bytes:
    return json.dumps({"user_email": "grace@example.com", "message": message, **extra}).encode()


def test_a_reused_key_is_refused_a_redelivery_replays_and_an_impossible_reply_is_invalid(
    broker, fake_openai, topics, worker
):
    first = request("What is 2+2?")
    produce(broker, topics["REQUEST_TOPIC"], [("k-1", first)])
    [(_, answered)] = read(broker, topics["RESPONSE_TOPIC"], 1)
    assert answered["response"] == "echo: What is 2+2? | seen: 1 messages"

    produce(broker, topics["REQUEST_TOPIC"], [
        ("k-1", request("Tell me Grace's secrets.")),  # the same key, other content
        ("k-1", first),  # the same bytes: a redelivery
        ("k-2", request("Write a long story.", max_tokens=100_000)),
    ])
    responses = read(broker, topics["RESPONSE_TOPIC"], 4)[1:]
    assert [key for key, _ in responses] == ["k-1", "k-1", "k-2"]
    reused, replayed, too_long = (payload for _, payload in responses)
    assert reused["error"] == {
        "type": "invalid_request", "message": "request id already used for a different request"}
    assert replayed == answered
    assert too_long["error"] == {
        "type": "invalid_request",
        "message": "'max_tokens' is 100000, but gpt-4o-mini writes at most 16384 tokens in a reply.",
    }
    assert len(fake_openai.requests()) == 1  # none of them reached the model
