"""Kafka clients (confluent-kafka) configured for at-least-once consumption."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

log = logging.getLogger(__name__)


def consumer_config(bootstrap_server: str, group: str) -> dict[str, object]:
    return {
        "bootstrap.servers": bootstrap_server,
        "group.id": group,
        # Offsets are committed by hand, only once the response is produced.
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        # A shorter session makes joins and failovers take seconds, not tens of them.
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 1500,
        "max.poll.interval.ms": 600_000,
        "partition.assignment.strategy": "cooperative-sticky",
        # Return fetches within milliseconds of a record arriving: the embedded
        # broker otherwise answers a fetch only when its wait time runs out.
        "fetch.wait.max.ms": 10,
        "log.connection.close": False,
    }


def producer_config(bootstrap_server: str, max_message_bytes: int | None = None) -> dict[str, object]:
    """`max_message_bytes`: the largest record it must be able to produce (librdkafka's
    default is 1,000,000 bytes); the topics' `max.message.bytes` must allow it too."""
    return {
        "bootstrap.servers": bootstrap_server,
        **({"message.max.bytes": max_message_bytes} if max_message_bytes else {}),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        # A broker closing idle connections is routine, not worth a log line.
        "log.connection.close": False,
    }


def topic_max_message_bytes(bootstrap_server: str, topic: str) -> int | None:
    """The topic's `max.message.bytes`, or None when the cluster does not say
    (no such topic, no permission to describe it, no answer within 10 s)."""
    admin = AdminClient({"bootstrap.servers": bootstrap_server})
    try:
        [future] = admin.describe_configs([ConfigResource("topic", topic)]).values()
        entry = future.result(timeout=10).get("max.message.bytes")
    except Exception as error:  # best effort: only ever a warning depends on it
        log.debug("max.message.bytes of %s unknown: %s", topic, error)
        return None
    return int(entry.value) if entry is not None and str(entry.value).isdigit() else None


def ensure_topics(
    bootstrap_server: str,
    names: Iterable[str],
    partitions: int = 1,
    config: dict[str, str] | None = None,
) -> None:
    """Create the topics that do not exist yet, with `config` (topic settings such
    as `max.message.bytes`); existing ones are left alone."""
    admin = AdminClient({"bootstrap.servers": bootstrap_server})
    existing = set(admin.list_topics(timeout=10).topics)
    wanted = [
        NewTopic(n, num_partitions=partitions, config=dict(config or {}))
        for n in names if n not in existing
    ]
    if not wanted:
        return
    for name, future in admin.create_topics(wanted, operation_timeout=10).items():
        try:
            future.result()
            log.info("created topic %s", name)
        except KafkaException as error:
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
