"""The fake OpenAI server refuses, as the real API does, a call its model cannot take:
max_tokens above the model's output limit, or a prompt plus max_tokens beyond its
context window. Through the real openai SDK."""

from __future__ import annotations

import asyncio

import openai
import pytest

from tests.support.fake_openai import FakeOpenAIServer

pytestmark = pytest.mark.integration


def _client(server: FakeOpenAIServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0, timeout=10)


async def _ask(server: FakeOpenAIServer, model: str, text: str, max_tokens: int | None = None):
    async with _client(server) as client:
        extra = {} if max_tokens is None else {"max_tokens": max_tokens}
        return await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": text}], **extra)


def test_a_call_its_model_cannot_take_is_refused_in_openais_words(fake_openai):
    fake_openai.script([{"reply": "scripted"}])
    with pytest.raises(openai.BadRequestError) as too_long_a_reply:
        asyncio.run(_ask(fake_openai, "gpt-4o-mini-2024-07-18", "hello", max_tokens=20_000))
    assert too_long_a_reply.value.code == "invalid_value"
    assert too_long_a_reply.value.body["message"] == (
        "max_tokens is too large: 20000. This model supports at most 16384 completion tokens, "
        "whereas you provided 20000.")

    # 16,000 words + 3 for the message, and 1,000 for the reply: past 16,385.
    with pytest.raises(openai.BadRequestError) as too_long_a_prompt:
        asyncio.run(_ask(fake_openai, "gpt-3.5-turbo", "word " * 16_000, max_tokens=1_000))
    assert too_long_a_prompt.value.code == "context_length_exceeded"
    assert too_long_a_prompt.value.body["message"] == (
        "This model's maximum context length is 16385 tokens. However, you requested 17003 "
        "tokens (16003 in the messages, 1000 in the completion). Please reduce the length of "
        "the messages or completion.")

    # Refusals use no step; extra models a test serves (not in the table) are not checked.
    fake_openai.serve_models(["gpt-test"])
    answer = asyncio.run(_ask(fake_openai, "gpt-test", "word " * 200_000, max_tokens=10**6))
    assert answer.choices[0].message.content == "scripted"
    assert [call["kind"] for call in fake_openai.calls()] == ["invalid", "invalid", "ok"]
