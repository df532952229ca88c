"""`/healthz` and `/readyz` of a worker process, while its dependencies come and go."""

from __future__ import annotations

import json
import time

import pytest

from entrypoints.health import CHECK_INTERVAL
from tests.support.records import produce, read

pytestmark = pytest.mark.integration

CHECKS = {"openai_api", "kafka_broker", "event_store", "memory_usage", "queue_depth", "erasures"}


def wait_for_readiness(worker, ready: bool, timeout: float = 20.0) -> dict:
    """Poll /readyz until it says `ready` (200) or not (503); the last body."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = worker.readiness()
        if (status == 200) == ready:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"/readyz stayed {status} for {timeout}s: {body}")
        time.sleep(0.2)


def test_a_running_worker_is_alive_and_ready_with_one_entry_per_check(broker, topics, fake_openai, worker):
    produce(broker, topics["REQUEST_TOPIC"], [
        ("h-1", json.dumps({"user_email": "h@example.com", "message": "h-1: hi"}).encode())
    ])
    read(broker, topics["RESPONSE_TOPIC"], 1)

    assert worker.liveness() == (200, {"status": "alive"})
    time.sleep(CHECK_INTERVAL * 1.5)  # the checks ran after the answer was stored
    body = wait_for_readiness(worker, ready=True)
    checks = body["checks"]
    assert set(checks) == CHECKS and body["status"] == "ready"
    assert all(check["status"] == "ok" for check in checks.values()), checks
    assert checks["kafka_broker"]["brokers"] == 1
    assert checks["event_store"]["notifications"] >= 3  # started, asked, answered
    assert checks["openai_api"]["circuits"] == {"gpt-4o-mini": "closed"}
    assert 20 < checks["memory_usage"]["rss_mib"] < 2048
    assert checks["queue_depth"]["in_flight"] == 0 and checks["queue_depth"]["paused"] is False
    assert checks["erasures"]["running"] is True and checks["erasures"]["applied"] == 0


def test_readiness_follows_the_event_store_down_and_back(postgres, worker):
    wait_for_readiness(worker, ready=True)
    postgres.stop_server()
    try:
        body = wait_for_readiness(worker, ready=False)
        assert body["checks"]["event_store"]["status"] == "failing", body
        assert body["checks"]["kafka_broker"]["status"] == "ok", body
        assert worker.liveness()[0] == 200  # down, not dead: no restart wanted
    finally:
        postgres.start_server()
    body = wait_for_readiness(worker, ready=True)
    assert body["checks"]["event_store"]["status"] == "ok"
