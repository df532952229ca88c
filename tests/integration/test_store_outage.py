"""PostgreSQL restarts under load: the worker waits for it, loses nothing, pays nothing twice."""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime

import pytest

from tests.support.records import produce, read
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.integration


@pytest.fixture
def worker_env(worker_env):
    # 20 at a time at 1 s a call: the 200 requests take ~10 s, so the outage hits mid-way.
    return {**worker_env, "MAX_IN_FLIGHT": "20"}


def test_a_postgres_restart_under_load_loses_nothing(broker, postgres, fake_openai, topics, worker):
    fake_openai.set_latency(1.0)
    keys = [f"pg-{n}" for n in range(200)]
    produce(broker, topics["REQUEST_TOPIC"], [
        (key, json.dumps({"user_email": f"{key}@example.com", "message": f"{key}: hi"}).encode())
        for key in keys
    ])
    read(broker, topics["RESPONSE_TOPIC"], 40)  # under way
    went_down = datetime.now(UTC)
    postgres.restart(down_for=2.0)
    came_back = datetime.now(UTC)
    answers = dict(read(broker, topics["RESPONSE_TOPIC"], len(keys), timeout=120))

    assert set(answers) == set(keys)
    assert all("response" in body for body in answers.values()), [
        body for body in answers.values() if "response" not in body
    ][:3]
    calls = Counter(r["messages"][-1]["content"].split(":")[0] for r in fake_openai.requests())
    assert all(calls[key] == 1 for key in keys), {k: c for k, c in calls.items() if c != 1}
    # The outage was in the middle of the load: answers before it and after it.
    answered_at = sorted(datetime.fromisoformat(b["timestamp"].replace("Z", "+00:00"))
                         for b in answers.values())
    assert answered_at[0] < went_down and answered_at[-1] > came_back
    assert "Traceback" not in worker.log()


def test_a_record_held_past_its_deadline_shows_as_stalled_until_it_moves(
    broker, postgres, fake_openai, topics, worker_env, tmp_path
):
    # A store outage holds a record (the worker waits it out); past its deadline and
    # the grace, its lane makes no progress: not ready, and in /metrics; still alive,
    # since it waits for the store (a restart would not bring the store back).
    env = {**worker_env, "REQUEST_DEADLINE": "1", "STALL_GRACE": "1"}
    worker = WorkerProcess(env, tmp_path / "stalled.log")
    worker.start()
    try:
        produce(broker, topics["REQUEST_TOPIC"], [
            ("warm", json.dumps({"user_email": "a@example.com", "message": "hi"}).encode())
        ])
        read(broker, topics["RESPONSE_TOPIC"], 1)
        postgres.stop_server()
        try:
            produce(broker, topics["REQUEST_TOPIC"], [
                ("held", json.dumps({"user_email": "b@example.com", "message": "hi"}).encode())
            ])
            status, body = wait_until(
                lambda: worker.readiness(),
                lambda got: got[1]["checks"]["queue_depth"]["status"] == "failing", 30,
            )
            assert status == 503 and body["checks"]["queue_depth"]["error"].startswith(
                "1 record(s) stalled"
            )
            assert body["checks"]["event_store"]["status"] == "failing"
            assert worker.liveness() == (200, {"status": "alive"})
            _, _, metrics = worker.fetch("/metrics")
            assert b"chater_gpt_stalled_records 1.0" in metrics
        finally:
            postgres.start_server()
        (key, answer), = read(broker, topics["RESPONSE_TOPIC"], 2)[1:]
        assert key == "held" and "error" in answer  # answered (too late), not lost
        status, body = wait_until(lambda: worker.readiness(), lambda got: got[0] == 200, 30)
        assert status == 200 and body["checks"]["queue_depth"]["stalled"] == 0
    finally:
        worker.stop()


def wait_until(probe, done, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if done(got) or time.monotonic() > deadline:
            return got
        time.sleep(0.2)
