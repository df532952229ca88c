"""A request waiting at an open circuit when its partition moves to another worker
is left to that worker: the model is asked once, not once by each. Its call was not
out (held back), so it is abandoned and recorded so: the new owner calls at once
instead of waiting for that call's time (test_rebalance_slow_calls.py has calls
that are out when their partition moves)."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter

import pytest
from confluent_kafka import Producer

from adapters.kafka import ensure_topics
from tests.support.records import read_until_all
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.integration


def test_a_request_waiting_when_its_partition_moves_is_answered_once_by_the_new_owner(
    broker, fake_openai, worker_env, tmp_path
):
    suffix = uuid.uuid4().hex[:8]
    env = {
        **worker_env,
        "REQUEST_TOPIC": f"gpt-send-two-{suffix}",
        "CONSUMER_GROUP": f"chater-gpt-two-{suffix}",
        "MAX_RETRIES": "3",
        # One failure opens the circuit, and the first worker's next probe comes
        # long after the second worker has joined and taken a partition.
        "CIRCUIT_FAILURE_THRESHOLD": "1",
        "CIRCUIT_PROBE_INTERVAL": "25",
        "SHUTDOWN_TIMEOUT": "1",  # the revoke grace: how long records in flight may finish
    }
    ensure_topics(broker.bootstrap_server, [env["REQUEST_TOPIC"]], partitions=2)
    first = WorkerProcess(env, tmp_path / "first.log")
    second = WorkerProcess(env, tmp_path / "second.log")
    first.start()
    try:
        fake_openai.script([{"status": 500, "match": "w-0"}])  # opens the first worker's circuit
        producer = Producer({"bootstrap.servers": broker.bootstrap_server})
        keys = ["w-0", "w-1"]
        for partition, key in enumerate(keys):
            body = {"user_email": f"{key}@example.com", "message": f"{key}: hi"}
            producer.produce(env["REQUEST_TOPIC"], json.dumps(body).encode(), key.encode(),
                             partition=partition)
            assert producer.flush(10) == 0
            if partition == 0:  # w-1 comes only once the circuit is open
                deadline = time.monotonic() + 15
                while not fake_openai.calls() and time.monotonic() < deadline:
                    time.sleep(0.05)
        time.sleep(1.0)
        assert [c["kind"] for c in fake_openai.calls()] == ["scripted"]  # both wait now

        second.start()  # the group gives it one of the two partitions
        answers = dict(read_until_all(broker, env["RESPONSE_TOPIC"], set(keys), timeout=60))
        time.sleep(2.0)  # any late call of the first worker would show now

        assert all("response" in json.loads(answers[key]) for key in keys), answers
        answered = Counter(c["text"].split(":")[0] for c in fake_openai.calls() if c["kind"] == "ok")
        assert answered == Counter(keys), fake_openai.calls()
        assert "abandoning" in first.log(), first.log()[-3000:]
    finally:
        for worker in (first, second):
            if worker.process is not None:
                worker.stop()
