"""A partition paused before a rebalance is fetched again once it is assigned back.

librdkafka keeps a partition's pause through its revocation (or loss) and a new
assignment. A worker that was paused (MAX_IN_FLIGHT reached) when its partition
was lost, and resumed while it had no partitions, must not leave the partition
paused when it comes back: it would never be fetched again.
"""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from adapters.kafka import consumer_config, ensure_topics
from adapters.system_clock import SystemClock
from entrypoints.settings import load_settings
from entrypoints.worker import KafkaWorker

pytestmark = pytest.mark.integration


def test_a_partition_paused_before_it_was_lost_is_fetched_when_assigned_again(broker):
    topic = f"gpt-send-{uuid.uuid4().hex[:8]}"
    ensure_topics(broker.bootstrap_server, [topic])
    producer = Producer({"bootstrap.servers": broker.bootstrap_server})
    for n in range(3):
        producer.produce(topic, b"{}", f"k-{n}".encode())
    assert producer.flush(10) == 0
    settings = load_settings(MODEL_PROVIDER="offline", SECRET_KEY="x", REQUEST_TOPIC=topic)
    worker = KafkaWorker(service=None, settings=settings, clock=SystemClock())  # type: ignore[arg-type]
    consumer = Consumer(consumer_config(broker.bootstrap_server, f"g-{topic}"))
    partition = TopicPartition(topic, 0, 0)
    try:
        consumer.incremental_assign([partition])
        first = consumer.poll(10.0)
        assert first is not None and first.key() == b"k-0"
        consumer.pause([partition])  # the worker was full when ...
        consumer.incremental_unassign([TopicPartition(topic, 0)])  # ... the partition was lost
        worker._paused = False  # and it resumed while it had no partitions

        again = TopicPartition(topic, 0, 1)  # from where the worker had got to
        worker._on_assign(consumer, [again])  # the partition comes back
        consumer.incremental_assign([again])
        fetched = [consumer.poll(1.0) for _ in range(4)]
        assert [m.key() for m in fetched if m is not None and not m.error()][:1] == [b"k-1"]
    finally:
        consumer.close()
