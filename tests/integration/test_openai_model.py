"""The OpenAI adapter: the real openai SDK over HTTP against the local model server."""

from __future__ import annotations

import base64

import pytest

from adapters.openai_model import OpenAIModel
from application.model_retries import RetryingModel
from application.images import Image
from application.ports import ChatMessage, ModelCall, ModelError

pytestmark = pytest.mark.integration

PNG = Image("image/png", base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
))


def call(text: str = "hello", *images: Image, model: str = "gpt-4o-mini") -> ModelCall:
    return ModelCall(
        model=model,
        messages=[ChatMessage("system", "be brief"), ChatMessage("user", text, images)],
        max_tokens=50,
        temperature=0.2,
    )


@pytest.fixture
async def model(fake_openai):
    model = OpenAIModel(api_key="test-key", base_url=fake_openai.base_url, timeout=2, max_retries=0)
    yield model
    await model.close()


async def test_a_completion_carries_text_model_usage_and_finish_reason(model, fake_openai):
    fake_openai.script([{"reply": "Paris.", "finish_reason": "stop"}])
    reply = await model.complete(call("capital of France?"))
    assert (reply.text, reply.model, reply.finish_reason) == ("Paris.", "gpt-4o-mini", "stop")
    assert reply.prompt_tokens > 0 and reply.completion_tokens == 1
    [sent] = fake_openai.requests()
    assert sent["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "capital of France?"},
    ]
    # max_tokens is deprecated for every OpenAI chat model: the reply's limit is
    # max_completion_tokens (domain.model_families).
    assert (sent["max_completion_tokens"], sent["temperature"]) == (50, 0.2)
    assert "max_tokens" not in sent


@pytest.mark.parametrize("model_name", ["o4-mini", "o4-mini-2025-04-16", "gpt-5-mini", "o3"])
async def test_a_reasoning_model_gets_only_the_parameters_it_takes(model, fake_openai, model_name):
    reply = await model.complete(call("think", model=model_name))
    assert (reply.text, reply.model) == ("echo: think | seen: 2 messages", model_name)
    [sent] = fake_openai.requests()
    assert sent["max_completion_tokens"] == 50
    assert "max_tokens" not in sent and "temperature" not in sent


async def test_the_platforms_vision_model_name_is_answered_by_gpt_4o(model, fake_openai):
    reply = await model.complete(call("what is it?", PNG, model="gpt-4o-latest"))
    assert reply.model == "gpt-4o"  # what answered
    assert fake_openai.requests()[0]["model"] == "gpt-4o"


async def test_a_model_the_provider_does_not_serve_is_an_invalid_request(model, fake_openai):
    with pytest.raises(ModelError) as refused:
        await model.complete(call(model="gpt-nonexistent"))
    assert (refused.value.error_type, refused.value.retryable) == ("invalid_request", False)
    assert refused.value.message == "The model 'gpt-nonexistent' is not available."


async def test_images_are_sent_as_image_parts(model, fake_openai):
    reply = await model.complete(call("what is it?", PNG))
    assert reply.text.endswith("| images: 1")
    parts = fake_openai.requests()[0]["messages"][-1]["content"]
    assert parts == [
        {"type": "text", "text": "what is it?"},
        {"type": "image_url", "image_url": {"url": PNG.data_url}},
    ]


@pytest.mark.parametrize(
    ("step", "error_type", "retryable"),
    [
        ({"status": 429, "headers": {"retry-after": "1"}}, "rate_limited", True),
        ({"status": 500}, "upstream_error", True),
        ({"status": 503}, "upstream_error", True),
        ({"status": 401}, "upstream_error", False),
        ({"status": 404}, "invalid_request", False),
        (
            {"status": 400, "body": {"error": {"message": "too long", "type": "invalid_request_error",
                                               "code": "context_length_exceeded"}}},
            "context_too_long",
            False,
        ),
        (
            {"status": 400, "body": {"error": {"message": "flagged", "type": "invalid_request_error",
                                               "code": "content_filter"}}},
            "content_filter",
            False,
        ),
        ({"malformed": True}, "upstream_error", True),
        ({"disconnect": True}, "upstream_error", True),
        ({"delay": 3, "reply": "too late"}, "upstream_error", True),
    ],
)
async def test_every_failure_becomes_a_safe_model_error(model, fake_openai, step, error_type, retryable):
    fake_openai.script([step])
    with pytest.raises(ModelError) as caught:
        await model.complete(call())
    assert (caught.value.error_type, caught.value.retryable) == (error_type, retryable)
    message = caught.value.message
    assert "127.0.0.1" not in message and "test-key" not in message and "Traceback" not in message


async def test_the_providers_retry_after_is_read_and_obeyed(fake_openai):
    client = OpenAIModel(api_key="test-key", base_url=fake_openai.base_url, timeout=5)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    model = RetryingModel(client, max_retries=2, sleep=sleep)
    fake_openai.script([
        {"status": 429, "headers": {"retry-after-ms": "250"}},
        {"status": 503, "headers": {"retry-after": "1"}},
    ])
    try:
        reply = await model.complete(call("retry me"))
    finally:
        await model.close()
    assert reply.text.startswith("echo: retry me")
    assert slept == [0.25, 1.0]
    assert len(fake_openai.requests()) == 3  # the SDK itself did not retry


async def test_the_fallback_model_answers_when_the_primary_keeps_failing(fake_openai):
    client = OpenAIModel(api_key="test-key", base_url=fake_openai.base_url, timeout=5)

    async def sleep(seconds: float) -> None:
        pass

    model = RetryingModel(client, max_retries=1, fallback_model="gpt-4.1-mini", sleep=sleep)
    fake_openai.script([{"status": 500}, {"status": 500}])
    try:
        reply = await model.complete(call("anyone there?"))
    finally:
        await model.close()
    assert reply.model == "gpt-4.1-mini"
    assert [r["model"] for r in fake_openai.requests()] == ["gpt-4o-mini", "gpt-4o-mini", "gpt-4.1-mini"]


async def test_the_providers_remaining_limits_are_reported(model, fake_openai):
    fake_openai.script([{"reply": "ok", "headers": {
        "x-ratelimit-limit-requests": "500", "x-ratelimit-remaining-requests": "12",
        "x-ratelimit-limit-tokens": "200000", "x-ratelimit-remaining-tokens": "150000",
        "x-ratelimit-reset-requests": "1m12s", "x-ratelimit-reset-tokens": "6s"}}])
    reply = await model.complete(call())
    limits = reply.rate_limits
    assert (limits.remaining_requests, limits.limit_requests) == (12, 500)
    assert limits.reset_seconds == 72.0 and limits.remaining_fraction() == 12 / 500
