"""The model provider fails for a while: the circuit opens, the worker holds back, then recovers."""

from __future__ import annotations

import json

import pytest

from tests.support.worker import RunningWorker

pytestmark = pytest.mark.integration


def test_an_outage_opens_the_circuit_pauses_fetching_and_nothing_is_failed(broker, fake_openai, tmp_path):
    fake_openai.script([{"status": 500}] * 6 + [{"status": 429, "headers": {"retry-after-ms": "100"}}])
    with RunningWorker(
        broker.bootstrap_server,
        OPENAI_API_KEY="test-key",
        OPENAI_BASE_URL=fake_openai.base_url,
        DATABASE_URL=f"sqlite:///{tmp_path}/events.sqlite",
        MAX_RETRIES=8,
        MAX_IN_FLIGHT=3,
        CIRCUIT_FAILURE_THRESHOLD=3,
        CIRCUIT_PROBE_INTERVAL=0.2,
    ) as worker:
        for n in range(10):
            worker.send(f"o-{n}", json.dumps({"user_email": f"u{n}@example.com",
                                               "message": f"o-{n}: hello"}).encode())
        responses = dict(worker.responses(10, timeout=60))
        breaker = worker.container.circuit_breaker()
        stats = worker.worker.stats

    assert all("response" in body for body in responses.values()), responses
    assert breaker.opened_count >= 1 and breaker.state("gpt-4o-mini") == "closed"
    # The worker held back: fetching paused with MAX_IN_FLIGHT records waiting at the circuit.
    assert stats.pauses >= 1 and stats.peak_in_flight <= 3 + 1
    assert len(fake_openai.requests()) == 10 + 7  # each failure retried, nothing answered twice
