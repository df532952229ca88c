"""Tests of the test harness itself: broker, PostgreSQL and fake OpenAI server."""

from __future__ import annotations

import asyncio
import time
import uuid

import openai
import psycopg
import pytest
from confluent_kafka import Consumer, Producer

from adapters.kafka import ensure_topics, topic_number
from devkit.embedded_broker import EmbeddedBroker
from tests.support.fake_openai import FakeOpenAIServer
from tests.support.postgres import PostgresServer

pytestmark = pytest.mark.integration


def _unique(prefix: str) -> str:
    """Return a name no other test uses (services are shared by the session)."""
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def test_broker_round_trip_through_consumer_group(broker: EmbeddedBroker) -> None:
    topic = _unique("harness")
    ensure_topics(broker.bootstrap_server, [topic])
    ensure_topics(broker.bootstrap_server, [topic])  # already exists: must be ignored

    producer = Producer({"bootstrap.servers": broker.bootstrap_server})
    sent = [b"first", b"second", b"third"]
    for value in sent:
        producer.produce(topic, key=b"same-key", value=value)
    assert producer.flush(10) == 0

    consumer = Consumer({
        "bootstrap.servers": broker.bootstrap_server,
        "group.id": _unique("group"),
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 6000,
    })
    received: list[bytes] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 30  # group join alone takes ~3 s on Tansu
        while len(received) < len(sent) and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None:
                continue
            assert message.error() is None, message.error()
            assert message.topic() == topic
            received.append(message.value())
    finally:
        consumer.close()
    assert received == sent


def test_postgres_accepts_connections(postgres: PostgresServer) -> None:
    dbname = _unique("harness")
    postgres.create_database(dbname)

    with psycopg.connect(postgres.dsn(dbname)) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        version = conn.execute("show server_version").fetchone()[0]
        assert version[0].isdigit(), version
        assert conn.execute("select current_database()").fetchone() == (dbname,)

    with psycopg.connect(postgres.url(dbname)) as conn:
        assert conn.execute("select current_user").fetchone() == ("postgres",)

    env = postgres.env(dbname)
    assert env["POSTGRES_DBNAME"] == dbname
    assert env["POSTGRES_PORT"] == str(postgres.port)


def _client(server: FakeOpenAIServer) -> openai.AsyncOpenAI:
    """An SDK client pointed at the fake server, without retries (they would hide errors)."""
    return openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0, timeout=10)


def test_fake_openai_echoes_through_real_sdk(fake_openai: FakeOpenAIServer) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "hello there"},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        ]},
    ]

    async def call() -> openai.types.chat.ChatCompletion:
        async with _client(fake_openai) as client:
            return await client.chat.completions.create(
                model="gpt-4o-mini", messages=messages, max_tokens=50, temperature=0.3
            )

    completion = asyncio.run(call())

    reply = "echo: what is this | seen: 4 messages | images: 1"
    assert completion.choices[0].message.content == reply
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "gpt-4o-mini"
    # words (3 + 2 + 1 + 3) + 3 per message (4) + 85 per image (1)
    assert completion.usage.prompt_tokens == 9 + 12 + 85
    assert completion.usage.completion_tokens == len(reply.split())
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens

    recorded = fake_openai.requests()
    assert len(recorded) == 1
    assert recorded[0]["model"] == "gpt-4o-mini"
    assert recorded[0]["messages"] == messages
    assert recorded[0]["max_tokens"] == 50
    assert recorded[0]["temperature"] == 0.3


def test_fake_openai_scripted_errors_and_replies(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.script([
        {"reply": "only for bob", "match": "bob", "finish_reason": "length"},
        {"status": 429, "headers": {"retry-after": "1"}},
        {"status": 500},
    ])

    async def ask(client: openai.AsyncOpenAI, text: str) -> str | None:
        completion = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": text}]
        )
        return completion.choices[0].message.content

    async def scenario() -> None:
        async with _client(fake_openai) as client:
            with pytest.raises(openai.RateLimitError) as rate_limited:
                await ask(client, "first")
            assert rate_limited.value.status_code == 429
            assert rate_limited.value.response.headers["retry-after"] == "1"
            assert rate_limited.value.code == "rate_limit_exceeded"

            with pytest.raises(openai.InternalServerError):
                await ask(client, "second")

            # The matched step waited in the queue for its request.
            assert await ask(client, "hi, I am bob") == "only for bob"
            assert await ask(client, "third") == "echo: third | seen: 1 messages"

    asyncio.run(scenario())

    assert [r["messages"][-1]["content"] for r in fake_openai.requests()] == [
        "first", "second", "hi, I am bob", "third",
    ]


def test_fake_openai_reset_clears_script_and_requests(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.script([{"status": 500}])
    fake_openai.set_latency(2.0)
    fake_openai.reset()

    async def call() -> str | None:
        async with _client(fake_openai) as client:
            completion = await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "ping"}]
            )
            return completion.choices[0].message.content

    assert asyncio.run(call()) == "echo: ping | seen: 1 messages"
    assert len(fake_openai.requests()) == 1


def test_a_topic_says_how_large_its_records_may_be(broker):
    topic = f"sized-{uuid.uuid4().hex[:8]}"
    ensure_topics(broker.bootstrap_server, [topic], 1, {"max.message.bytes": "123456"})
    assert topic_number(broker.bootstrap_server, topic, "max.message.bytes") == 123456
