"""The Batch API adapter: the real openai SDK over HTTP against the local model server."""

from __future__ import annotations

import asyncio
import json
import time

import openai
import pytest

from adapters.openai_batch import OpenAIBatch
from adapters.openai_model import chat_body
from application.ports import BatchState, ChatMessage, ModelCall, ModelError, ModelReply

pytestmark = pytest.mark.integration


def call(text: str, model: str = "gpt-4o-mini") -> ModelCall:
    return ModelCall(
        model=model,
        messages=[ChatMessage("system", "be brief"), ChatMessage("user", text)],
        max_tokens=50,
        temperature=0.2,
    )


def echo(text: str) -> ModelReply:
    """What the fake answers to call(text) by default: the echo, with its token counts."""
    reply = f"echo: {text} | seen: 2 messages"
    # prompt: "be brief" (2 words) and the text, plus 3 per message
    return ModelReply(reply, "gpt-4o-mini", 2 + 3 + len(text.split()) + 3, len(reply.split()))


@pytest.fixture
async def batches(fake_openai):
    model = OpenAIBatch(api_key="test-key", base_url=fake_openai.base_url, timeout=5)
    yield model
    await model.close()


async def ended(model: OpenAIBatch, batch_id: str, within: float = 10.0) -> BatchState:
    deadline = time.monotonic() + within
    while True:
        state = await model.poll(batch_id)
        if state.ended:
            return state
        assert time.monotonic() < deadline, f"batch still {state.status} after {within}s"
        await asyncio.sleep(0.05)


def raw_client(fake_openai) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=fake_openai.base_url, api_key="test-key", max_retries=0)


async def test_every_call_of_a_completed_batch_gets_its_reply_with_usage(batches, fake_openai):
    fake_openai.script([{"match": "in French", "reply": "Bonjour.", "cached_tokens": 4}])
    entries = [("a", call("first")), ("b", call("say hi in French")), ("c", call("third one"))]

    batch_id = await batches.submit(entries)
    state = await ended(batches, batch_id)

    assert batch_id.startswith("batch_")
    assert (state.batch_id, state.status) == (batch_id, "completed")
    assert state.results == {
        "a": echo("first"),
        "b": ModelReply("Bonjour.", "gpt-4o-mini", 2 + 3 + 4 + 3, 1, cached_tokens=4),
        "c": echo("third one"),
    }
    # One batch, its lines built as a live call's body, and no live call.
    [submitted] = fake_openai.batches()
    assert (submitted["id"], submitted["status"]) == (batch_id, "completed")
    assert submitted["custom_ids"] == ["a", "b", "c"]
    assert submitted["bodies"] == [chat_body(c) for _, c in entries]
    assert submitted["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    assert fake_openai.requests() == []
    # Each line is a call of kind "batch" in the call log.
    calls = fake_openai.calls()
    assert [(c["kind"], c["batch_id"], c["custom_id"], c["status"]) for c in calls] == [
        ("batch", batch_id, "a", 200),
        ("batch", batch_id, "b", 200),
        ("batch", batch_id, "c", 200),
    ]
    assert [c["text"] for c in calls] == ["first", "say hi in French", "third one"]
    assert fake_openai.faults() == {}


@pytest.mark.parametrize(
    ("step", "error_type", "retryable"),
    [
        ({"status": 400}, "invalid_request", False),
        ({"status": 429}, "rate_limited", True),
        ({"status": 500}, "upstream_error", True),
        ({"status": 404}, "invalid_request", False),
        (
            {
                "status": 400,
                "body": {
                    "error": {
                        "message": "too long",
                        "type": "invalid_request_error",
                        "code": "context_length_exceeded",
                    }
                },
            },
            "context_too_long",
            False,
        ),
        (
            {
                "status": 400,
                "body": {
                    "error": {
                        "message": "flagged",
                        "type": "invalid_request_error",
                        "code": "content_filter",
                    }
                },
            },
            "content_filter",
            False,
        ),
    ],
)
async def test_a_failed_line_is_an_error_for_its_id_only(
    batches, fake_openai, step, error_type, retryable
):
    fake_openai.script([{**step, "match": "the bad one"}])

    batch_id = await batches.submit(
        [("ok-1", call("fine")), ("bad", call("the bad one")), ("ok-2", call("also fine"))]
    )
    state = await ended(batches, batch_id)

    assert state.status == "completed"
    assert state.results is not None and list(state.results) == ["ok-1", "bad", "ok-2"]
    assert state.results["ok-1"] == echo("fine")
    assert state.results["ok-2"] == echo("also fine")
    error = state.results["bad"]
    assert isinstance(error, ModelError)
    assert (error.error_type, error.retryable) == (error_type, retryable)
    assert "127.0.0.1" not in error.message and "test-key" not in error.message
    assert [(c["custom_id"], c["status"]) for c in fake_openai.calls()] == [
        ("ok-1", 200),
        ("bad", step["status"]),
        ("ok-2", 200),
    ]
    assert fake_openai.batches()[0]["request_counts"] == {"total": 3, "completed": 2, "failed": 1}


async def test_a_scripted_404_names_the_model_of_its_line(batches, fake_openai):
    fake_openai.script([{"status": 404, "match": "where"}])
    batch_id = await batches.submit([("x", call("where is it", model="gpt-nope"))])
    state = await ended(batches, batch_id)
    assert state.results == {
        "x": ModelError("invalid_request", "The model 'gpt-nope' is not available.")
    }


async def test_an_expired_batch_answers_what_it_ran_and_fails_the_rest(batches, fake_openai):
    fake_openai.batch_settings(delay=0.3, outcome="expired", answered=1)

    batch_id = await batches.submit(
        [("one", call("one")), ("two", call("two")), ("three", call("three"))]
    )
    state = await ended(batches, batch_id)

    assert state.status == "expired"
    expired = ModelError(
        "upstream_error", "The batch expired before this request was answered.", True
    )
    assert state.results == {"one": echo("one"), "two": expired, "three": expired}
    assert [c["custom_id"] for c in fake_openai.calls()] == ["one"]  # only that line was run


async def test_a_batch_expired_without_any_answer_has_only_errors(batches, fake_openai):
    fake_openai.batch_settings(delay=0.2, outcome="expired")
    batch_id = await batches.submit([("p", call("p")), ("q", call("q"))])
    state = await ended(batches, batch_id)
    assert state.status == "expired"
    assert {key: (r.error_type, r.message) for key, r in state.results.items()} == {
        key: ("upstream_error", "The batch expired before this request was answered.")
        for key in ("p", "q")
    }
    assert fake_openai.calls() == []


async def test_a_malformed_input_file_fails_the_batch_and_every_request_with_it(
    batches, fake_openai
):
    good = {"method": "POST", "url": "/v1/chat/completions", "body": chat_body(call("hi"))}
    content = "\n".join(
        [
            json.dumps({"custom_id": "x", **good}),
            '{"custom_id": "broken", "method": "POST", ',
            json.dumps({"custom_id": "y", **good}),
        ]
    ).encode()
    async with raw_client(fake_openai) as client:
        uploaded = await client.files.create(file=("input.jsonl", content), purpose="batch")
        created = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )

    state = await ended(batches, created.id)

    assert state.status == "failed"
    refused = ModelError(
        "upstream_error",
        "The model provider refused the batch: This line is not parseable as valid JSON. (line 2)",
    )
    assert state.results == {"x": refused, "y": refused}
    assert fake_openai.batches()[0]["errors"]["data"][0]["code"] == "invalid_json_line"
    assert fake_openai.calls() == []


async def test_duplicate_custom_ids_fail_the_batch(batches, fake_openai):
    batch_id = await batches.submit([("same", call("first")), ("same", call("second"))])
    state = await ended(batches, batch_id)
    assert state.status == "failed"
    [(key, error)] = state.results.items()
    assert key == "same" and error.error_type == "upstream_error" and not error.retryable
    assert error.message.startswith("The model provider refused the batch: The custom_id for this")
    assert error.message.endswith("(line 2)")
    assert fake_openai.batches()[0]["errors"]["data"][0]["code"] == "duplicate_custom_id"


async def test_a_batch_of_two_models_is_refused_as_the_provider_refuses_it(batches, fake_openai):
    batch_id = await batches.submit([("a", call("first")), ("b", call("second", model="gpt-4.1"))])
    state = await ended(batches, batch_id)
    assert state.status == "failed" and set(state.results) == {"a", "b"}
    assert fake_openai.batches()[0]["errors"]["data"][0]["code"] == "model_mismatch"


async def test_a_batch_the_provider_fails_for_its_token_limit_is_rate_limited(batches, fake_openai):
    fake_openai.batch_settings(outcome="failed", delay=0.2)
    batch_id = await batches.submit([("k", call("later"))])
    state = await ended(batches, batch_id)
    assert state.status == "failed"
    error = state.results["k"]
    assert (error.error_type, error.retryable) == ("rate_limited", True)
    assert error.message.startswith("The model provider refused the batch: Enqueued token limit")
    # The provider names the organisation; a user is not shown its id.
    assert "org-fake" not in error.message and "<id>" in error.message


async def test_another_instance_can_poll_a_batch_it_did_not_submit(fake_openai):
    submitter = OpenAIBatch(api_key="test-key", base_url=fake_openai.base_url, timeout=5)
    try:
        batch_id = await submitter.submit([("m1", call("alpha")), ("m2", call("beta"))])
    finally:
        await submitter.close()

    poller = OpenAIBatch(api_key="test-key", base_url=fake_openai.base_url, timeout=5)
    try:
        state = await ended(poller, batch_id)
    finally:
        await poller.close()
    assert state.results == {"m1": echo("alpha"), "m2": echo("beta")}


async def test_a_batch_not_ended_has_no_results_yet(batches, fake_openai):
    fake_openai.batch_settings(delay=5)
    batch_id = await batches.submit([("slow", call("take your time"))])

    state = await batches.poll(batch_id)

    assert state == BatchState(batch_id, "validating")
    assert (state.ended, state.results) == (False, None)
    await asyncio.sleep(0.6)  # validation takes the first 10 % of the delay
    state = await batches.poll(batch_id)
    assert (state.status, state.ended) == ("in_progress", False)
    assert fake_openai.calls() == []  # nothing run yet


async def test_a_cancelled_batch_gives_an_error_for_every_request_it_did_not_run(
    batches, fake_openai
):
    fake_openai.batch_settings(delay=5)  # cancelling lasts 10 % of it
    batch_id = await batches.submit([("c1", call("one")), ("c2", call("two"))])
    async with raw_client(fake_openai) as client:
        assert (await client.batches.cancel(batch_id)).status == "cancelling"

    assert (await batches.poll(batch_id)).status == "cancelling"
    state = await ended(batches, batch_id)

    assert state.status == "cancelled"
    cancelled = ModelError(
        "upstream_error", "The batch was cancelled before this request was answered.", True
    )
    assert state.results == {"c1": cancelled, "c2": cancelled}


async def test_a_refused_api_key_is_a_model_error(fake_openai):
    fake_openai.accept_api_keys(["sk-the-right-key-0001"])
    model = OpenAIBatch(api_key="sk-a-wrong-key-9999", base_url=fake_openai.base_url, timeout=5)
    try:
        with pytest.raises(ModelError) as submitting:
            await model.submit([("a", call("hello"))])
        with pytest.raises(ModelError) as polling:
            await model.poll("batch_anything")
    finally:
        await model.close()
    for caught in (submitting, polling):
        assert (caught.value.error_type, caught.value.retryable) == ("upstream_error", False)
        assert caught.value.message == "The service is not allowed to use the model provider."
    assert fake_openai.batches() == []


async def test_a_rotated_api_key_is_read_again_after_a_401(fake_openai):
    class RotatedKey:
        def __init__(self) -> None:
            self.key = "sk-the-old-key-0000"

        def current(self) -> str:
            return self.key

        def reread(self) -> bool:
            self.key = "sk-the-new-key-1111"
            return True

    fake_openai.accept_api_keys(["sk-the-new-key-1111"])
    model = OpenAIBatch(api_key=RotatedKey(), base_url=fake_openai.base_url, timeout=5)
    try:
        batch_id = await model.submit([("r", call("rotate"))])
        state = await ended(model, batch_id)
    finally:
        await model.close()
    assert state.results == {"r": echo("rotate")}


async def test_an_unknown_batch_or_an_empty_one_is_an_invalid_request(batches):
    with pytest.raises(ModelError) as unknown:
        await batches.poll("batch_does_not_exist")
    assert unknown.value.error_type == "invalid_request"
    with pytest.raises(ModelError) as empty:
        await batches.submit([])
    assert empty.value.error_type == "invalid_request"


async def test_the_fake_lists_batches_and_keeps_files_in_openai_format(batches, fake_openai):
    batch_id = await batches.submit([("f", call("file me"))])
    await ended(batches, batch_id)
    async with raw_client(fake_openai) as client:
        batch = await client.batches.retrieve(batch_id)
        listed = await client.batches.list(limit=10)
        output = await client.files.retrieve(batch.output_file_id)
        [line] = [
            json.loads(raw)
            for raw in (await client.files.content(batch.output_file_id)).text.splitlines()
        ]
    assert [b.id for b in listed.data] == [batch_id]
    assert (batch.error_file_id, batch.errors, batch.completed_at is not None) == (None, None, True)
    assert (output.purpose, output.object, output.bytes > 0) == ("batch_output", "file", True)
    assert (
        line["custom_id"] == "f" and line["error"] is None and line["id"].startswith("batch_req_")
    )
    assert line["response"]["status_code"] == 200
    assert line["response"]["body"]["object"] == "chat.completion"
    fake_openai.reset()
    assert fake_openai.batches() == []
