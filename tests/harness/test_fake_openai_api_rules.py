"""The fake OpenAI server behaves like the real API where the service depends on it:
reasoning models refuse `max_tokens` and a temperature other than 1 in OpenAI's
words, a model id it does not serve is a 404 `model_not_found`, and its answers
validate against the SDK's own response types. Through the real openai SDK."""

from __future__ import annotations

import json
import time
from typing import Any

import openai
import pytest
from openai.types import Batch, FileObject
from openai.types.chat import ChatCompletion
from pydantic import BaseModel

from tests.support.fake_openai import FakeOpenAIServer

pytestmark = pytest.mark.integration

UNSUPPORTED_MAX_TOKENS = {
    "message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
               "Use 'max_completion_tokens' instead.",
    "type": "invalid_request_error",
    "param": "max_tokens",
    "code": "unsupported_parameter",
}


def _client(server: FakeOpenAIServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0, timeout=10)


def _ask(server: FakeOpenAIServer, model: str, **parameters: Any) -> ChatCompletion:
    with _client(server) as client:
        return client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hello"}], **parameters)


@pytest.mark.parametrize("model", ["o4-mini", "o4-mini-2025-04-16", "o3-mini", "gpt-5-nano",
                                   "ft:o4-mini-2025-04-16:acme:support:AbC123"])
def test_a_reasoning_model_refuses_max_tokens_in_openais_words(fake_openai, model):
    with pytest.raises(openai.BadRequestError) as refused:
        _ask(fake_openai, model, max_tokens=100)
    assert refused.value.status_code == 400
    assert refused.value.body == UNSUPPORTED_MAX_TOKENS
    assert refused.value.response.json() == {"error": UNSUPPORTED_MAX_TOKENS}

    with pytest.raises(openai.BadRequestError) as warm:
        _ask(fake_openai, model, max_completion_tokens=100, temperature=0.7)
    assert warm.value.body == {
        "message": "Unsupported value: 'temperature' does not support 0.7 with this model. "
                   "Only the default (1) value is supported.",
        "type": "invalid_request_error", "param": "temperature", "code": "unsupported_value",
    }

    answered = _ask(fake_openai, model, max_completion_tokens=100)
    assert answered.choices[0].message.content == "echo: hello | seen: 1 messages"
    assert _ask(fake_openai, model, max_completion_tokens=100, temperature=1).model == model
    assert [call["kind"] for call in fake_openai.calls()] == ["invalid", "invalid", "ok", "ok"]


def test_a_chat_model_takes_max_tokens_and_max_completion_tokens_and_any_temperature(fake_openai):
    assert _ask(fake_openai, "gpt-4o-mini", max_tokens=100, temperature=0.2).model == "gpt-4o-mini"
    assert _ask(fake_openai, "gpt-4o-2024-08-06", max_completion_tokens=100, temperature=0).model == (
        "gpt-4o-2024-08-06")


@pytest.mark.parametrize("model", ["gpt-nonexistent", "gpt-4o-latest", "ft:gpt-unknown:acme::x"])
def test_a_model_it_does_not_serve_is_a_404_model_not_found(fake_openai, model):
    fake_openai.script([{"reply": "never used"}])
    with pytest.raises(openai.NotFoundError) as missing:
        _ask(fake_openai, model)
    assert missing.value.body == {
        "message": f"The model `{model}` does not exist or you do not have access to it.",
        "type": "invalid_request_error", "param": "model", "code": "model_not_found",
    }
    assert [call["kind"] for call in fake_openai.calls()] == ["invalid"]


def test_extra_models_a_test_serves_are_answered_until_a_reset(fake_openai):
    fake_openai.serve_models(["my-model"])
    assert _ask(fake_openai, "my-model", max_tokens=10, temperature=0.3).model == "my-model"
    fake_openai.reset()
    with pytest.raises(openai.NotFoundError):
        _ask(fake_openai, "my-model")


def test_extra_models_given_at_start_survive_a_reset():
    with FakeOpenAIServer(models=["local-llama"]) as server:
        server.reset()
        assert _ask(server, "local-llama").model == "local-llama"


def _extras(model: BaseModel, path: str = "") -> list[str]:
    """Fields the fake sent that the SDK's type does not declare, anywhere inside."""
    found = [f"{path}.{name}" for name in (model.model_extra or {})]
    for name in type(model).model_fields:
        value = getattr(model, name)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, BaseModel):
                found += _extras(item, f"{path}.{name}")
    return found


def _strict(model_type: type[BaseModel], payload: dict[str, Any]) -> BaseModel:
    """The payload as the SDK's type, every required field present and of its exact type."""
    validated = model_type.model_validate(payload, strict=True)
    assert _extras(validated) == [], _extras(validated)
    return validated


def test_its_answers_validate_against_the_sdks_response_types(fake_openai):
    fake_openai.script([{"cached_tokens": 2}])
    with _client(fake_openai) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_completion_tokens=5)
        _strict(ChatCompletion, json.loads(raw.text))
        raw = client.chat.completions.with_raw_response.create(
            model="o4-mini", messages=[{"role": "user", "content": "one two three four"}],
            max_completion_tokens=2)
        assert _strict(ChatCompletion, json.loads(raw.text)).choices[0].finish_reason == "length"

        line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}}
        raw = client.files.with_raw_response.create(
            file=("in.jsonl", (json.dumps(line) + "\n").encode()), purpose="batch")
        uploaded = _strict(FileObject, json.loads(raw.text))
        _strict(FileObject, json.loads(client.files.with_raw_response.retrieve(uploaded.id).text))

        raw = client.batches.with_raw_response.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
        batch = _strict(Batch, json.loads(raw.text))
        statuses = {batch.status}
        deadline = time.monotonic() + 10
        while batch.status != "completed" and time.monotonic() < deadline:
            time.sleep(0.05)
            batch = _strict(Batch, json.loads(client.batches.with_raw_response.retrieve(batch.id).text))
            statuses.add(batch.status)
        assert batch.status == "completed" and {"validating", "completed"} <= statuses, statuses
        assert batch.output_file_id is not None
        _strict(FileObject, json.loads(
            client.files.with_raw_response.retrieve(batch.output_file_id).text))
        [output] = [json.loads(x) for x in client.files.content(batch.output_file_id).text.splitlines()]
        _strict(ChatCompletion, output["response"]["body"])


def test_batch_lines_follow_the_same_rules(fake_openai):
    fake_openai.batch_settings(delay=0.2)

    def line(custom_id: str, model: str, **parameters: Any) -> str:
        body = {"model": model, "messages": [{"role": "user", "content": custom_id}], **parameters}
        return json.dumps({"custom_id": custom_id, "method": "POST",
                           "url": "/v1/chat/completions", "body": body}) + "\n"

    with _client(fake_openai) as client:
        outcomes = {}
        for lines in ([line("old-style", "o4-mini", max_tokens=10)],
                      [line("new-style", "o4-mini", max_completion_tokens=10)],
                      [line("unserved", "gpt-4o-latest", max_completion_tokens=10)]):
            uploaded = client.files.create(file=("in.jsonl", "".join(lines).encode()), purpose="batch")
            batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                          completion_window="24h")
            deadline = time.monotonic() + 10
            while batch.status != "completed" and time.monotonic() < deadline:
                time.sleep(0.05)
                batch = client.batches.retrieve(batch.id)
            file_id = batch.output_file_id or batch.error_file_id
            for answer in map(json.loads, client.files.content(file_id).text.splitlines()):
                outcomes[answer["custom_id"]] = answer["response"]
    assert outcomes["old-style"] == {**outcomes["old-style"], "status_code": 400,
                                     "body": {"error": UNSUPPORTED_MAX_TOKENS}}
    assert outcomes["new-style"]["status_code"] == 200
    assert outcomes["unserved"]["status_code"] == 404
    assert outcomes["unserved"]["body"]["error"]["code"] == "model_not_found"
