"""Whether a Kafka broker answers, asked without librdkafka's own log lines.

librdkafka writes its log to stderr by itself: a client that cannot reach its
broker writes about twenty lines a second. Given a `logger`, it hands them to
that logger instead, and only when the client is polled; the probe never polls,
so its lines go nowhere (the caller logs one line per attempt).
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka.admin import AdminClient

# A logger for the probe's client: its lines, if ever served, only at DEBUG.
probe_log = logging.getLogger("chater-gpt.kafka-probe")


def reach_broker(config: dict[str, Any], timeout: float) -> int:
    """The number of brokers in the cluster's metadata, asked within `timeout`
    seconds; KafkaException when no broker answered."""
    admin = AdminClient({**config, "logger": probe_log})
    metadata = admin.list_topics(timeout=timeout)
    return len(metadata.brokers)
