"""Batch API requests hold nothing back (issue 17): parked in the store once their
batch is recorded, their records are finished, so the live requests behind them in
the same partition are answered at once and committed; a killed worker answers
nothing again; each batch request is answered exactly once when its batch ends.

The real worker process, broker, PostgreSQL store and the openai SDK over HTTP to
the local model server (which serves the Files and Batches APIs)."""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections import Counter
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from tests.support.records import produce, read
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.integration

BATCHED = 30
LIVE = 60
BATCH_SECONDS = 30.0  # from the batch's creation to its end, at the model server


def ask(user: str, message: str, **fields: Any) -> dict[str, Any]:
    return {"user_email": user, "message": message, **fields}


def wait_until(check, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"not {what} within {timeout}s"
        time.sleep(0.1)


def queue_depth(worker: WorkerProcess) -> dict[str, Any]:
    try:
        return worker.readiness()[1]["checks"]["queue_depth"]
    except (OSError, KeyError, ValueError):
        return {}


def test_parked_batch_requests_hold_back_nothing_and_are_answered_once(
    broker, fake_openai, topics, worker_env, tmp_path
):
    fake_openai.batch_settings(delay=BATCH_SECONDS)
    # A window long enough for all thirty to be read and prepared on a busy machine.
    env = {**worker_env, "BATCH_WINDOW": "5", "BATCH_POLL_INTERVAL": "0.5"}
    worker = WorkerProcess(env, tmp_path / "worker.log")
    batched = [(f"batch-{n}", ask(f"user{n}@example.com", f"no hurry {n}", batch=True))
               for n in range(BATCHED)]
    # Behind them, in the same (only) partition: some of the same conversations,
    # some of others.
    live = [(f"live-{n}", ask(f"user{n}@example.com", f"right now {n}")) for n in range(LIVE)]
    worker.start()
    try:
        produce(broker, topics["REQUEST_TOPIC"],
                [(key, json.dumps(value).encode()) for key, value in batched + live])

        # The live ones are answered without waiting for the batch.
        started = time.monotonic()
        first = read(broker, topics["RESPONSE_TOPIC"], LIVE, timeout=60)
        assert {key for key, _ in first} == {key for key, _ in live}
        assert all("error" not in body and "batch" not in body for _, body in first)
        assert time.monotonic() - started < BATCH_SECONDS / 2
        created_batches = fake_openai.batches()
        assert len(created_batches) == 1, (
            [len(b["custom_ids"]) for b in created_batches], worker.log()[-5000:])
        [created] = created_batches
        assert created["status"] not in ("completed", "expired", "failed")
        assert len(created["custom_ids"]) == BATCHED

        # Nothing is held: every record finished (the parked ones without a
        # response), so their offsets are committed within COMMIT_INTERVAL.
        depth = wait_until(
            lambda: (d := queue_depth(worker)).get("in_flight") == 0
            and d.get("batch_parked_here") == BATCHED and d,
            30, "every record finished",
        )
        assert depth["oldest_held_seconds"] == 0
        time.sleep(2.0)  # a few commit intervals

        worker.stop(signal.SIGKILL)
        worker.start()

        # Each batch request is answered once its batch ends, by the new process
        # (the old one kept nothing of it), and nothing is answered twice.
        everything = read(broker, topics["RESPONSE_TOPIC"], LIVE + BATCHED,
                          timeout=BATCH_SECONDS + 90)
        time.sleep(3.0)  # anything answered again would come now
        extra = read_all(broker, topics["RESPONSE_TOPIC"])
    finally:
        worker.stop()

    counts = Counter(key for key, _ in extra)
    assert counts == Counter({key: 1 for key, _ in batched + live}), worker.log()[-3000:]
    answers = dict(everything)
    for n in range(BATCHED):
        answer = answers[f"batch-{n}"]
        assert answer["batch"] is True and answer["response"].startswith(f"echo: no hurry {n}")
        assert answer["cost_usd"] > 0
    # One batch of thirty lines; no live call for a batch request.
    [created] = fake_openai.batches()
    assert created["status"] == "completed" and len(created["custom_ids"]) == BATCHED
    assert created["request_counts"]["total"] == BATCHED
    calls = fake_openai.calls()
    assert sum(1 for c in calls if c["kind"] == "batch") == BATCHED
    assert not any(c["text"].startswith("no hurry") for c in calls if c["kind"] != "batch")


def read_all(broker, topic: str) -> list[tuple[str, dict]]:
    """Every record of a one-partition topic now."""
    consumer = Consumer({"bootstrap.servers": broker.bootstrap_server,
                         "group.id": f"r-{uuid.uuid4().hex}", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, 0)])
    seen = []
    quiet_until = time.monotonic() + 3.0
    try:
        while time.monotonic() < quiet_until:
            message = consumer.poll(0.2)
            if message is not None and not message.error():
                seen.append((message.key().decode(), json.loads(message.value())))
                quiet_until = time.monotonic() + 3.0
    finally:
        consumer.close()
    return seen


def test_two_replicas_poll_the_same_batch_and_each_request_is_answered_once(
    broker, fake_openai, topics, worker_env, tmp_path
):
    fake_openai.batch_settings(delay=8.0)
    env = {**worker_env, "BATCH_WINDOW": "3", "BATCH_POLL_INTERVAL": "0.2"}
    replicas = [WorkerProcess(env, tmp_path / f"worker-{n}.log") for n in range(2)]
    batched = [(f"batch-{n}", ask(f"user{n}@example.com", f"later {n}", batch=True))
               for n in range(20)]
    for replica in replicas:
        replica.start()
    try:
        produce(broker, topics["REQUEST_TOPIC"],
                [(key, json.dumps(value).encode()) for key, value in batched])
        read(broker, topics["RESPONSE_TOPIC"], len(batched), timeout=90)
        time.sleep(3.0)  # both replicas keep polling: anything answered twice comes now
        responses = read_all(broker, topics["RESPONSE_TOPIC"])
    finally:
        for replica in replicas:
            replica.stop()
    assert Counter(key for key, _ in responses) == Counter({key: 1 for key, _ in batched})
    assert all(body["batch"] is True for _, body in responses)
    assert sum(len(b["custom_ids"]) for b in fake_openai.batches()) == len(batched)
