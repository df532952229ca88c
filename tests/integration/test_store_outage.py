"""PostgreSQL restarts under load: the worker waits for it, loses nothing, pays nothing twice."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime

import pytest

from tests.support.records import produce, read

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
