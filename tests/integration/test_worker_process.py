"""`chater-gpt worker` as operators run it: a process, env settings, PostgreSQL, Kafka."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition

from tests.support.records import produce, read

pytestmark = pytest.mark.integration

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def request(message: str, **extra) -> bytes:
    return json.dumps({"user_email": "grace@example.com", "message": message, **extra}).encode()


def test_the_worker_process_answers_on_postgres_and_redelivery_is_answered_from_the_store(
    broker, postgres, database, fake_openai, topics, worker
):
    produce(broker, topics["REQUEST_TOPIC"], [
        ("p-1", request("Remember the number 42.")),
        ("p-2", request("Which number did I ask you to remember?")),
        ("p-3", request("Describe this.", images=[PNG])),
        ("p-4", json.dumps({"key": "p-4", "value": {"user_email": "grace@example.com"}}).encode()),
    ])
    answers = dict(read(broker, topics["RESPONSE_TOPIC"], 4))
    assert answers["p-1"]["response"] == "echo: Remember the number 42. | seen: 1 messages"
    assert answers["p-2"]["response"] == "echo: Which number did I ask you to remember? | seen: 3 messages"
    assert answers["p-3"]["response"].endswith("| seen: 5 messages | images: 1")
    assert answers["p-3"]["model"] == "gpt-4o"  # VISION_MODEL's default
    assert answers["p-4"]["error"]["type"] == "invalid_request"
    assert len(fake_openai.requests()) == 3

    # A graceful stop commits what was answered and leaves the group.
    assert worker.stop() == 0

    # Rewind the group, as after a crash between producing and committing: the
    # worker fetches the same records again and answers them from the store.
    rewind = Consumer({"bootstrap.servers": broker.bootstrap_server, "group.id": topics["CONSUMER_GROUP"]})
    rewind.commit(offsets=[TopicPartition(topics["REQUEST_TOPIC"], 0, 0)], asynchronous=False)
    rewind.close()
    worker.start()
    again = dict(read(broker, topics["RESPONSE_TOPIC"], 8)[4:])
    for key in ("p-1", "p-2", "p-3"):
        assert again[key] == answers[key], key  # byte for byte: from the recorded events
    # An invalid record is in no conversation: it is refused again, the same way.
    assert again["p-4"]["error"] == answers["p-4"]["error"]
    assert len(fake_openai.requests()) == 3, "a redelivered record reached the model"

    # Events at rest are encrypted: no user text is readable in the database.
    with psycopg.connect(postgres.dsn(database)) as connection:
        states = [bytes(row[0]) for row in connection.execute("select state from chatergpt_events")]
    assert len(states) >= 10
    assert not any(b"Remember" in state or b"grace@example.com" in state for state in states)


def test_a_worker_started_without_an_api_key_names_the_missing_setting(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in {"OPENAI_API_KEY", "MODEL_PROVIDER"}}
    env["SECRET_KEY"] = "x"
    result = subprocess.run(
        [sys.executable, "-m", "entrypoints.cli", "worker"], env=env, cwd=tmp_path,
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "OPENAI_API_KEY is not set" in result.stderr
    assert "Traceback" not in result.stderr
