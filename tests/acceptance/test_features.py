"""Bindings of features/*.feature: the real worker, broker, store and openai SDK."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pytest_bdd import given, parsers, scenarios, then, when

from adapters.dead_letters import DeadLetterSeal
from domain.pricing import DEFAULT_PRICES
from entrypoints.cli import main as chater_gpt
from tests.support.worker import RunningWorker

scenarios("chat.feature", "budget.feature", "cheaper.feature")

pytestmark = pytest.mark.integration

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


class ChatSession:
    """What a scenario sent, and the responses read back so far."""

    def __init__(self, worker: RunningWorker) -> None:
        self.worker = worker
        self.sent: list[str] = []
        self.records: dict[str, Any] = {}

    def send(self, key: str, value: dict[str, Any] | bytes) -> None:
        self.worker.send(key, value)
        self.records[key] = value
        self.sent.append(key)

    def responses(self, extra: int = 0) -> list[tuple[bytes | None, dict[str, Any]]]:
        return self.worker.responses(len(self.sent) + extra)

    def response(self, key: str) -> dict[str, Any]:
        answers = [body for k, body in self.responses() if k == key.encode()]
        assert answers, f"no response for {key}"
        return answers[0]


@pytest.fixture
def worker_settings(fake_openai, tmp_path) -> dict[str, Any]:
    return {
        "OPENAI_API_KEY": "test-key",
        "OPENAI_BASE_URL": fake_openai.base_url,
        "DATABASE_URL": f"sqlite:///{tmp_path}/events.sqlite",
        "MAX_RETRIES": 0,
    }


def _start(broker, worker_settings: dict[str, Any], **extra: Any) -> Iterator[ChatSession]:
    worker = RunningWorker(broker.bootstrap_server, **{**worker_settings, **extra})
    with worker:
        yield ChatSession(worker)


@given("the chat worker is running", target_fixture="chat")
def chat_worker(broker, worker_settings):
    yield from _start(broker, worker_settings)


@given(
    parsers.parse("the chat worker is running with a daily limit of {limit:d} tokens and max_tokens {max_tokens:d}"),
    target_fixture="chat",
)
def chat_worker_with_budget(broker, worker_settings, limit, max_tokens):
    yield from _start(broker, worker_settings, DAILY_TOKEN_LIMIT=limit, MAX_TOKENS=max_tokens)


@given("the chat worker is running with a response cache shared by all users",
       target_fixture="chat")
def chat_worker_with_cache(broker, worker_settings, redis_url):
    yield from _start(broker, worker_settings, REDIS_URL=redis_url, CACHE_SCOPE="global")


@given("the chat worker is running with the Batch API", target_fixture="chat")
def chat_worker_with_batches(broker, worker_settings, fake_openai):
    fake_openai.batch_settings(delay=0.5)
    yield from _start(broker, worker_settings, BATCH_WINDOW=0.2, BATCH_POLL_INTERVAL=0.1)


@when(parsers.parse('{user} asks "{message}" at temperature 0 as request "{key}" after the first answer'))
def ask_deterministic_after_answer(chat: ChatSession, user: str, message: str, key: str):
    chat.responses()
    chat.send(key, {"user_email": user, "message": message, "temperature": 0})


@when(parsers.parse('{user} asks "{message}" at temperature 0 as request "{key}"'))
def ask_deterministic(chat: ChatSession, user: str, message: str, key: str):
    chat.send(key, {"user_email": user, "message": message, "temperature": 0})


@when(parsers.parse('{user} asks "{message}" in a batch as request "{key}"'))
def ask_in_batch(chat: ChatSession, user: str, message: str, key: str):
    chat.send(key, {"user_email": user, "message": message, "batch": True})


@then(parsers.parse('request "{key}" is answered from the cache with the answer to "{first}", at no cost'))
def answered_from_cache(chat: ChatSession, key: str, first: str):
    body, original = chat.response(key), chat.response(first)
    assert body["cached"] is True and "cached" not in original
    assert body["response"] == original["response"]
    assert body["cost_usd"] == 0.0 and body["usage"]["total_tokens"] == 0


@then(parsers.parse("the answer to \"{key}\" came from a batch and costs half its tokens at {model}'s price"))
def batch_price(chat: ChatSession, key: str, model: str):
    body = chat.response(key)
    assert body["batch"] is True
    price, usage = DEFAULT_PRICES[model], body["usage"]
    full = usage["prompt_tokens"] * price.prompt + usage["completion_tokens"] * price.completion
    assert body["cost_usd"] == pytest.approx(full / 2e6)


@when(parsers.parse('{user} asks "{message}" as request "{key}"'))
def ask(chat: ChatSession, user: str, message: str, key: str):
    chat.send(key, {"user_email": user, "message": message})


@when(parsers.parse('{user} asks "{message}" as request "{key}" after the first answer'))
def ask_after_answer(chat: ChatSession, user: str, message: str, key: str):
    chat.responses()
    chat.send(key, {"user_email": user, "message": message})


@when(parsers.parse('{user} sends a PNG image asking "{message}" as request "{key}"'))
def ask_with_image(chat: ChatSession, user: str, message: str, key: str):
    chat.send(key, {"user_email": user, "message": message, "images": [PNG]})


@when(parsers.parse('a producer sends the record "{raw}" with key "{key}"'))
def send_raw(chat: ChatSession, raw: str, key: str):
    chat.send(key, raw.encode())


@when(parsers.parse('the record of "{key}" is delivered again'))
def deliver_again(chat: ChatSession, key: str):
    chat.responses()  # the first delivery has been answered
    chat.send(key, chat.records[key])


@then(parsers.parse('request "{key}" is answered with "{text}"'))
def answered_with(chat: ChatSession, key: str, text: str):
    assert chat.response(key)["response"] == text


@then(parsers.parse('the answer to "{key}" costs its tokens at {model}\'s price'))
def costs_tokens_at_price(chat: ChatSession, key: str, model: str):
    body = chat.response(key)
    price = DEFAULT_PRICES[model]
    usage = body["usage"]
    expected = (usage["prompt_tokens"] * price.prompt + usage["completion_tokens"] * price.completion)
    assert body["cost_usd"] == pytest.approx(expected / 1e6)


@then(parsers.parse('the answer to "{key}" names the model "{model}" and its token usage'))
def names_model_and_usage(chat: ChatSession, key: str, model: str):
    body = chat.response(key)
    assert body["model"] == model
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert body["finish_reason"] == "stop"
    assert body["timestamp"].endswith("Z") and body["processing_time"] >= 0


@then(parsers.parse('the model was sent, for "{key}", the earlier question and answer before the new one'))
def history_was_sent(chat: ChatSession, key: str, fake_openai):
    chat.responses()
    sent = fake_openai.requests()[-1]["messages"]
    first_answer = chat.response(chat.sent[0])["response"]
    assert sent == [
        {"role": "user", "content": chat.records[chat.sent[0]]["message"]},
        {"role": "assistant", "content": first_answer},
        {"role": "user", "content": chat.records[key]["message"]},
    ]


@then(parsers.parse('the model was asked for "{key}" with the vision model "{model}"'))
def vision_model_used(chat: ChatSession, key: str, model: str, fake_openai):
    request = fake_openai.requests()[-1]
    assert request["model"] == model
    parts = request["messages"][-1]["content"]
    assert parts[0] == {"type": "text", "text": chat.records[key]["message"]}
    assert parts[1]["image_url"]["url"] == "data:image/png;base64," + PNG


@then(parsers.re(r'request "(?P<key>[^"]+)" gets an? "(?P<error_type>\w+)" error saying "(?P<text>[^"]+)"'))
def error_response(chat: ChatSession, key: str, error_type: str, text: str):
    body = chat.response(key)
    assert body["error"]["type"] == error_type
    assert text in body["error"]["message"]
    assert "response" not in body


@then(parsers.parse('the original bytes of "{key}" are on the dead-letter topic, sealed, with the reason'))
def dead_lettered(chat: ChatSession, key: str):
    [(dlq_key, value, headers)] = chat.worker.dead_letters(1)
    assert dlq_key == key.encode()
    assert value != chat.records[key]  # sealed: it may hold anything a user wrote
    seal = DeadLetterSeal(chat.worker.settings.SECRET_KEY.get_secret_value())
    assert seal.open(value) == chat.records[key]
    assert headers["value_encryption"] == b"aes-256-gcm;chater-gpt/dead-letters/v1"
    assert headers["error_type"] == b"invalid_request"
    assert b"not valid JSON" in headers["reason"]


@then("the model was not called")
def model_not_called(fake_openai):
    assert fake_openai.requests() == []


@then("the model was called once")
def model_called_once(chat: ChatSession, fake_openai):
    chat.responses()
    assert len(fake_openai.requests()) == 1


@then(parsers.parse('both responses to "{key}" are identical'))
def identical_responses(chat: ChatSession, key: str):
    bodies = [body for k, body in chat.responses() if k == key.encode()]
    assert len(bodies) == 2
    assert bodies[0] == bodies[1]
    assert "response" in bodies[0]


@then(parsers.parse("the audit of {user} lists, in order, the events"))
def audit_lists(chat: ChatSession, user: str, datatable, capsys, monkeypatch):
    chat.responses()
    lines = _audit(chat, monkeypatch, capsys, user)
    rows = [line for line in lines if line[:1].isdigit()]
    expected = datatable[1:]
    assert len(rows) == len(expected)
    for row, (event, detail) in zip(rows, expected):
        assert f"  {event}  " in row and detail in row, row


@then(parsers.parse("the audit as of event {version:d} shows {turns:d} answered turn"))
def audit_as_of(chat: ChatSession, version: int, turns: int, capsys, monkeypatch):
    lines = _audit(chat, monkeypatch, capsys, "ada@example.com", "--as-of", str(version))
    assert sum(line[:1].isdigit() for line in lines) == version
    assert f"  {turns} answered turn(s), 0 pending, 0 failed" in lines


def _audit(chat: ChatSession, monkeypatch, capsys, *args: str) -> list[str]:
    """Run `chater-gpt audit` as an auditor would, against the worker's store."""
    settings = chat.worker.settings
    monkeypatch.setenv("DATABASE_URL", settings.DATABASE_URL)
    monkeypatch.setenv("SECRET_KEY", settings.SECRET_KEY.get_secret_value())
    capsys.readouterr()
    assert chater_gpt(["audit", *args]) == 0
    return capsys.readouterr().out.splitlines()
