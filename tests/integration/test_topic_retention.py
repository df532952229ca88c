"""The brokers forget as the store does: the topics a worker creates keep records
no longer than RETENTION_DAYS, and an existing topic that keeps them longer is
named at start with the retention.ms to set."""

from __future__ import annotations

import uuid

import pytest

from adapters.kafka import ensure_topics, topic_number
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000


def test_created_topics_forget_within_the_retention_and_longer_kept_ones_are_named(
    broker, worker_env, tmp_path
):
    suffix = uuid.uuid4().hex[:8]
    names = {
        "REQUEST_TOPIC": f"ret-send-{suffix}", "RESPONSE_TOPIC": f"ret-response-{suffix}",
        "DLQ_TOPIC": f"ret-send-{suffix}.dlq", "ERASE_TOPIC": f"ret-erase-{suffix}",
        "CONSUMER_GROUP": f"ret-{suffix}",
    }
    # A response topic made by hand, keeping records for ever.
    ensure_topics(broker.bootstrap_server, [names["RESPONSE_TOPIC"]], 1, {"retention.ms": "-1"})
    env = {**worker_env, **names, "RETENTION_DAYS": "30", "TOPIC_RETENTION_DAYS": "7",
           "TOPIC_PARTITIONS": "2"}
    worker = WorkerProcess(env, tmp_path / "worker.log")
    worker.start()
    try:
        repartition = f"ret-{suffix}-ret-send-{suffix}-repartition"
        for topic in (names["REQUEST_TOPIC"], names["ERASE_TOPIC"], repartition):
            assert topic_number(broker.bootstrap_server, topic, "retention.ms") == 7 * DAY_MS, topic
        assert topic_number(broker.bootstrap_server, names["DLQ_TOPIC"], "retention.ms") == 30 * DAY_MS
        log = worker.log()
        assert (f"topic {names['RESPONSE_TOPIC']} keeps records forever (retention.ms=-1), "
                "longer than 7 days") in log
        assert f"set retention.ms={7 * DAY_MS} on it" in log
        assert f"topic {names['REQUEST_TOPIC']} keeps" not in log
    finally:
        assert worker.stop() == 0
