"""The broker goes away under load and comes back: the worker reconnects by itself."""

from __future__ import annotations

import json
import time

import pytest

from adapters.kafka import ensure_topics
from tests.support.records import produce, read_until_all
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.integration


def requests(keys: list[str]) -> list[tuple[str, bytes]]:
    return [
        (key, json.dumps({"user_email": f"{key}@example.com", "message": f"{key}: hi"}).encode())
        for key in keys
    ]


@pytest.mark.parametrize("down_for", [3.0, 9.0], ids=["shorter-than-the-session", "group-lost"])
def test_the_worker_reconnects_after_the_broker_was_unreachable(
    flaky_broker, postgres, database, fake_openai, worker_env, tmp_path, down_for
):
    env = {**worker_env, "BOOTSTRAP_SERVER": flaky_broker.bootstrap_server, "MAX_IN_FLIGHT": "10"}
    ensure_topics(flaky_broker.bootstrap_server,
                  [env["REQUEST_TOPIC"], env["RESPONSE_TOPIC"], env["DLQ_TOPIC"]])
    worker = WorkerProcess(env, tmp_path / "worker.log")
    worker.start()
    try:
        fake_openai.set_latency(0.5)
        before = [f"b-{n}" for n in range(30)]
        produce(flaky_broker, env["REQUEST_TOPIC"], requests(before))
        time.sleep(1.0)  # under way: records in flight, responses being produced
        with flaky_broker.down():
            time.sleep(down_for)
            status, body = worker.readiness()
            assert status == 503 and body["checks"]["kafka_broker"]["status"] == "failing", body
        after = [f"a-{n}" for n in range(10)]
        produce(flaky_broker, env["REQUEST_TOPIC"], requests(after))
        seen = read_until_all(flaky_broker, env["RESPONSE_TOPIC"], set(before + after), timeout=90)
        missing = set(before + after) - {key for key, _ in seen}
        assert not missing, (sorted(missing), worker.readiness(), worker.log()[-3000:])
        assert all("response" in json.loads(value) for _, value in seen)
        calls = [r["messages"][-1]["content"].split(":")[0] for r in fake_openai.requests()]
        assert sorted(calls) == sorted(before + after)  # each asked once, outage or not
        deadline = time.monotonic() + 10
        while worker.readiness()[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert worker.readiness()[0] == 200
    finally:
        worker.stop()
