"""`chater-gpt worker` as operators run it: a process, env settings, PostgreSQL, Kafka."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from adapters.kafka import ensure_topics

pytestmark = pytest.mark.integration

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


class WorkerProcess:
    """One `chater-gpt worker` process; restartable with the same settings."""

    def __init__(self, env: dict[str, str], log_path) -> None:
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "entrypoints.cli", "worker"],
            env=self.env, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
        )
        self._wait_for("assigned [")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        code = self.process.wait(30)
        self.process = None
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _wait_for(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log().rsplit("worker consuming", 1)[-1]:
                return
            if self.process and self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"worker never logged {text!r}:\n{self.log()[-3000:]}")


@pytest.fixture
def topics(broker) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:8]
    names = {
        "REQUEST_TOPIC": f"gpt-send-{suffix}",
        "RESPONSE_TOPIC": f"gpt-response-{suffix}",
        "DLQ_TOPIC": f"gpt-send-{suffix}.dlq",
        "CONSUMER_GROUP": f"chater-gpt-{suffix}",
    }
    ensure_topics(broker.bootstrap_server, [names["REQUEST_TOPIC"], names["RESPONSE_TOPIC"], names["DLQ_TOPIC"]])
    return names


@pytest.fixture
def database(postgres) -> str:
    name = f"chat_{uuid.uuid4().hex[:8]}"
    postgres.create_database(name)
    return name


@pytest.fixture
def worker(broker, postgres, database, fake_openai, topics, tmp_path) -> Iterator[WorkerProcess]:
    env = {
        **{k: v for k, v in os.environ.items() if k not in {"MODEL_PROVIDER", "DATABASE_URL"}},
        **topics,
        "BOOTSTRAP_SERVER": broker.bootstrap_server,
        "DATABASE_URL": postgres.url(database),
        "OPENAI_API_KEY": "test-key",
        "OPENAI_BASE_URL": fake_openai.base_url,
        "SECRET_KEY": "integration-secret",
        "MAX_RETRIES": "0",
        "REQUESTS_PER_MINUTE": "600",
        "LOG_LEVEL": "INFO",
    }
    process = WorkerProcess(env, tmp_path / "worker.log")
    process.start()
    yield process
    if process.process is not None:
        process.stop(signal.SIGKILL)


def produce(broker, topic: str, records: list[tuple[str, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": broker.bootstrap_server})
    for key, value in records:
        producer.produce(topic, value, key.encode())
    assert producer.flush(10) == 0


def read(broker, topic: str, count: int, timeout: float = 30.0) -> list[tuple[str, dict]]:
    consumer = Consumer({"bootstrap.servers": broker.bootstrap_server, "group.id": f"r-{uuid.uuid4().hex}",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, 0)])
    seen: list[tuple[str, dict]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(seen) < count and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is not None and not message.error():
                seen.append((message.key().decode(), json.loads(message.value())))
    finally:
        consumer.close()
    assert len(seen) == count, f"{len(seen)} of {count} records on {topic}: {seen}"
    return seen


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
    assert answers["p-3"]["model"] == "gpt-4o-latest"
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
