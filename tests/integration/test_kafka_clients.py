"""Kafka as a platform runs it: answers read by a client without librdkafka (kafka-python,
without its lz4 package), and a worker that reaches its broker over TLS only."""

from __future__ import annotations

import importlib.util
import json
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import Producer
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import UnsupportedCodecError

from adapters.kafka import ensure_topics
from tests.support.tls_broker import TlsBroker
from tests.support.worker import RunningWorker

pytestmark = pytest.mark.integration


def ask(user: str, message: str) -> dict[str, str]:
    return {"user_email": user, "message": message}


def read_with_kafka_python(bootstrap_server: str, topic: str, count: int) -> list[tuple[bytes, bytes]]:
    """The first `count` records of a one-partition topic, read by kafka-python."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap_server, enable_auto_commit=False, group_id=None,
        consumer_timeout_ms=15_000, request_timeout_ms=30_000,
    )
    try:
        consumer.assign([TopicPartition(topic, 0)])
        consumer.seek_to_beginning()
        records = []
        for record in consumer:
            records.append((record.key, record.value))
            if len(records) == count:
                break
        return records
    finally:
        consumer.close()


def test_kafka_python_without_lz4_reads_the_responses_and_the_dead_letters(broker, in_process_settings) -> None:
    assert importlib.util.find_spec("lz4") is None  # as a platform's reader would have it
    with RunningWorker(broker.bootstrap_server, **in_process_settings) as worker:
        worker.send("req-1", ask("ada@example.com", "hello"))
        worker.send("req-bad", b"this is not JSON")
        [(key, response)] = [r for r in worker.responses(2, timeout=60) if r[0] == b"req-1"]
        [(letter_key, letter, _)] = worker.dead_letters(1, timeout=60)

        responses = read_with_kafka_python(broker.bootstrap_server, worker.settings.RESPONSE_TOPIC, 2)
        letters = read_with_kafka_python(broker.bootstrap_server, worker.settings.DLQ_TOPIC, 1)
    assert (b"req-1", response) in [(k, json.loads(v)) for k, v in responses]
    assert response["response"]  # an answer, not an error
    assert letters == [(letter_key, letter)]


def test_kafka_python_without_lz4_cannot_read_lz4_batches(broker) -> None:
    """What the default compression spares a platform's readers."""
    topic = f"lz4-{uuid.uuid4().hex[:8]}"
    ensure_topics(broker.bootstrap_server, [topic])
    producer = Producer({"bootstrap.servers": broker.bootstrap_server, "compression.type": "lz4"})
    producer.produce(topic, b"{}" * 100, b"k")
    assert producer.flush(10) == 0
    with pytest.raises(UnsupportedCodecError):
        read_with_kafka_python(broker.bootstrap_server, topic, 1)


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory) -> Iterator[TlsBroker]:
    broker = TlsBroker(tmp_path_factory.mktemp("tls"))
    try:
        yield broker.start()
    finally:
        broker.stop()


def test_a_worker_reaches_its_broker_over_tls(tls_broker, in_process_settings) -> None:
    with RunningWorker(
        tls_broker.bootstrap_server,
        KAFKA_SECURITY_PROTOCOL="SSL",
        KAFKA_SSL_CA_LOCATION=str(tls_broker.ca_location),
        **in_process_settings,
    ) as worker:
        worker.send("tls-1", ask("ada@example.com", "hello over TLS"))
        [(key, response)] = worker.responses(1, timeout=60)
    assert key == b"tls-1" and response["response"]
    assert tls_broker.proxy.handshakes > 0
