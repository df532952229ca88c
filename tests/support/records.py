"""Producing and reading records from tests, the way Chater producers and readers do."""

from __future__ import annotations

import json
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition

from adapters.kafka import ensure_topics
from entrypoints.settings import Settings


def private_topics(bootstrap_server: str, request_partitions: int = 1) -> dict[str, str]:
    """Topics and a consumer group of one test's own, created, as worker settings."""
    suffix = uuid.uuid4().hex[:8]
    names = {
        "REQUEST_TOPIC": f"gpt-send-{suffix}",
        "RESPONSE_TOPIC": f"gpt-response-{suffix}",
        "DLQ_TOPIC": f"gpt-send-{suffix}.dlq",
        "ERASE_TOPIC": f"gpt-erase-{suffix}",
        "CONSUMER_GROUP": f"chater-gpt-{suffix}",
    }
    ensure_topics(bootstrap_server, [names["REQUEST_TOPIC"]], request_partitions)
    ensure_topics(bootstrap_server, [names["RESPONSE_TOPIC"], names["DLQ_TOPIC"], names["ERASE_TOPIC"]])
    return names


def produce(
    broker, topic: str, records: list[tuple[str, bytes]],
    headers: dict[str, list[tuple[str, bytes]]] | None = None,
) -> None:
    """Produce (key, value) records; `headers` by key for those that carry some."""
    producer = Producer({"bootstrap.servers": broker.bootstrap_server})
    for key, value in records:
        producer.produce(topic, value, key.encode(), headers=(headers or {}).get(key))
    assert producer.flush(10) == 0


def read(broker, topic: str, count: int, timeout: float = 30.0) -> list[tuple[str, dict]]:
    """The first `count` records of a (one-partition) topic: key and JSON value."""
    return [(key, json.loads(value)) for key, value, _ in read_records(broker, topic, count, timeout)]


def read_records(
    broker, topic: str, count: int, timeout: float = 30.0
) -> list[tuple[str, bytes, dict[str, bytes]]]:
    """The first `count` records of a (one-partition) topic: key, raw value, headers."""
    consumer = Consumer({"bootstrap.servers": broker.bootstrap_server, "group.id": f"r-{uuid.uuid4().hex}",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, 0)])
    seen: list[tuple[str, bytes, dict[str, bytes]]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(seen) < count and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is not None and not message.error():
                seen.append((message.key().decode(), message.value(), dict(message.headers() or [])))
    finally:
        consumer.close()
    assert len(seen) == count, f"{len(seen)} of {count} records on {topic}: {seen}"
    return seen


def read_until_all(broker, topic: str, wanted: set[str], timeout: float) -> list[tuple[str, bytes]]:
    """Every record (key, raw value) from the start until all `wanted` keys were seen."""
    consumer = Consumer({"bootstrap.servers": broker.bootstrap_server,
                         "group.id": f"r-{uuid.uuid4().hex}", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, 0)])
    seen: list[tuple[str, bytes]] = []
    deadline = time.monotonic() + timeout
    try:
        while not wanted <= {key for key, _ in seen} and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is not None and not message.error():
                seen.append((message.key().decode(), message.value()))
    finally:
        consumer.close()
    return seen


def where_are(broker, topics: dict[str, str], missing: set[str], partitions: int) -> str:
    """Where the requests never answered stopped: on `gpt-send` (partition, offset,
    beyond the hand-over group's commit or not), on the repartition topic (same),
    for a failure message that points at the stage that lost them."""
    # The worker's own names for the repartition topic and the answering group.
    settings = Settings.model_construct(REQUEST_TOPIC=topics["REQUEST_TOPIC"],
                                        CONSUMER_GROUP=topics["CONSUMER_GROUP"])
    lines = []
    for topic, stage_group, by_header in (
        (settings.REQUEST_TOPIC, settings.CONSUMER_GROUP, False),
        (settings.repartition_topic, settings.answering_group, True),
    ):
        consumer = Consumer({"bootstrap.servers": broker.bootstrap_server, "group.id": stage_group,
                             "enable.auto.commit": False})
        try:
            count = max(partitions, len(consumer.list_topics(topic, timeout=10).topics[topic].partitions))
            committed = {tp.partition: tp.offset for tp in consumer.committed(
                [TopicPartition(topic, p) for p in range(count)], timeout=10)}
        finally:
            consumer.close()
        found = _scan(broker, topic, count, missing, by_header)
        lines.append(f"{topic}: committed {committed}; " + ", ".join(
            f"{key} at [{p}]@{o}" for key, (p, o) in sorted(found.items())
        ) + f"; not there: {sorted(missing - set(found))}")
    return "\n".join(lines)


def _scan(broker, topic: str, count: int, keys: set[str], by_header: bool) -> dict[str, tuple[int, int]]:
    consumer = Consumer({"bootstrap.servers": broker.bootstrap_server, "group.id": f"r-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(count)])
    found: dict[str, tuple[int, int]] = {}
    ended: set[int] = set()
    deadline = time.monotonic() + 20
    try:
        while len(ended) < count and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None:
                continue
            if message.error():
                ended.add(message.partition())
                continue
            key = dict(message.headers() or []).get("chater.source_key") if by_header else message.key()
            if key is not None and key.decode(errors="replace") in keys:
                found[key.decode()] = (message.partition(), message.offset())
    finally:
        consumer.close()
    return found
