"""The provider refuses the account (an exhausted quota): the worker pauses, fails
nothing, and answers everything once the provider answers again. The primary model
down with FALLBACK_MODEL set: the fallback answers at once."""

from __future__ import annotations

import http.client
import json
import logging
import time

import pytest

from tests.support.worker import RunningWorker

pytestmark = pytest.mark.integration


def get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def ask(worker: RunningWorker, count: int, prefix: str) -> None:
    for n in range(count):
        worker.send(f"{prefix}-{n}", {"user_email": f"u{n}@example.com",
                                      "message": f"{prefix}-{n}: hello"})


def test_twenty_seconds_of_insufficient_quota_fail_nothing_and_everything_is_answered_after(
    broker, fake_openai, tmp_path, caplog
):
    outage = 20.0
    fake_openai.outage(outage, status=429, code="insufficient_quota")
    started = time.monotonic()
    with caplog.at_level(logging.INFO), RunningWorker(
        broker.bootstrap_server,
        serve_health=True,
        OPENAI_API_KEY="test-key",
        OPENAI_BASE_URL=fake_openai.base_url,
        DATABASE_URL=f"sqlite:///{tmp_path}/events.sqlite",
        FALLBACK_MODEL="gpt-4.1-nano",  # never tried: the account is refused for every model
        MAX_RETRIES=2,
        MAX_IN_FLIGHT=4,
        CIRCUIT_PROBE_INTERVAL=1,
        REQUEST_DEADLINE=300,
    ) as worker:
        ask(worker, 12, "q")
        breaker = worker.container.circuit_breaker()
        deadline = time.monotonic() + 15
        while breaker.paused() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert breaker.paused() == "insufficient_quota"
        time.sleep(3)
        # Ready all the same (the provider's state is reported, not failing), and said so.
        status, body = get(worker.health_port, "/readyz")
        openai_api = json.loads(body)["checks"]["openai_api"]
        assert status == 200, body
        assert openai_api["status"] == "ok" and openai_api["degraded"] is True
        assert openai_api["paused"]["reason"] == "insufficient_quota"
        assert openai_api["paused"]["held"] >= 1
        _, metrics = get(worker.health_port, "/metrics")
        assert 'chater_gpt_provider_paused{reason="insufficient_quota"} 1' in metrics.decode()
        status, body = get(worker.health_port, "/healthz")
        assert status == 200, body
        # Backpressure: fetching paused with MAX_IN_FLIGHT records held at the pause.
        assert worker.worker.stats.pauses >= 1 and worker.worker.stats.peak_in_flight <= 4 + 1

        responses = dict(worker.responses(12, timeout=outage + 60))
        answered_after = time.monotonic() - started
        assert breaker.paused() is None
        _, metrics = get(worker.health_port, "/metrics")
        assert 'chater_gpt_provider_paused{reason="insufficient_quota"} 0' in metrics.decode()

    assert all("response" in body and "error" not in body for body in responses.values()), responses
    assert {body["model"] for body in responses.values()} == {"gpt-4o-mini"}
    assert answered_after >= outage - 1
    calls = fake_openai.calls()
    refused = [c for c in calls if c["kind"] == "outage"]
    # The calls in flight when it began, then one probe per interval (not one per request).
    assert len(refused) <= 4 + outage / 1 + 3, len(refused)
    assert sum(c["kind"] == "ok" for c in calls) == 12
    assert {body["model"] for body in fake_openai.requests()} == {"gpt-4o-mini"}
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "insufficient_quota" in errors[0].getMessage(), errors


def test_a_primary_answering_503_has_every_request_answered_by_the_fallback_within_seconds(
    broker, fake_openai, tmp_path
):
    fake_openai.outage(120, status=503, model="gpt-4o-mini")  # only the primary is down
    with RunningWorker(
        broker.bootstrap_server,
        OPENAI_API_KEY="test-key",
        OPENAI_BASE_URL=fake_openai.base_url,
        DATABASE_URL=f"sqlite:///{tmp_path}/events.sqlite",
        FALLBACK_MODEL="gpt-4.1-nano",
        MAX_RETRIES=3,
        CIRCUIT_FAILURE_THRESHOLD=3,
        CIRCUIT_PROBE_INTERVAL=5,
    ) as worker:
        started = time.monotonic()
        ask(worker, 20, "f")
        # Far less than the outage: before, the calls waited at the primary's open
        # circuit until it closed, and only a failed probe reached the fallback.
        responses = dict(worker.responses(20, timeout=30))
        took = time.monotonic() - started
        breaker = worker.container.circuit_breaker()
        assert breaker.state("gpt-4o-mini") != "closed"
        assert breaker.state("gpt-4.1-nano") == "closed"
        ask(worker, 5, "g")  # the circuit is open now: straight to the fallback
        later = dict(worker.responses(25, timeout=30))

    for body in later.values():
        assert "error" not in body and body["model"] == "gpt-4.1-nano", body
    assert len(responses) == 20
    print(f"20 requests answered by the fallback in {took:.1f}s", sorted(round(b["processing_time"], 2) for b in responses.values()))
    primary = [b for b in fake_openai.requests() if b["model"] == "gpt-4o-mini"]
    assert len(primary) <= 20 + 3 + 1  # a first try each; retries only until it opened


@pytest.mark.parametrize(
    ("step", "pause", "error_type"),
    [
        ({"status": 429, "body": {"error": {"message": "You exceeded your current quota",
                                            "type": "insufficient_quota", "code": "insufficient_quota"}}},
         "insufficient_quota", "upstream_error"),
        ({"status": 401}, "api_key_refused", "upstream_error"),
        ({"status": 403, "body": {"error": {"message": "Country, region, or territory not supported",
                                            "type": "request_forbidden",
                                            "code": "unsupported_country_region_territory"}}},
         "permission_denied", "upstream_error"),
        ({"status": 403, "body": {"error": {"message": "no access to model", "type": "invalid_request_error",
                                            "code": "model_not_found"}}},
         None, "invalid_request"),
        # A model that needs a verified organisation: that model's error, not the account's.
        ({"status": 403, "body": {"error": {"message": "Your organization must be verified to use the model",
                                            "type": "invalid_request_error", "code": None}}},
         None, "invalid_request"),
        # A 403 naming neither (a gateway in front of the API, say): that request's error.
        ({"status": 403, "body": {"message": "Forbidden"}}, None, "upstream_error"),
        ({"status": 429}, None, "rate_limited"),  # a rate limit is no refusal of the account
        ({"status": 400}, None, "invalid_request"),  # one request's error stays its own
    ],
)
async def test_account_wide_refusals_are_told_apart_from_one_requests_errors(fake_openai, step, pause, error_type):
    from adapters.openai_model import OpenAIModel
    from application.ports import ChatMessage, ModelCall, ModelError

    model = OpenAIModel(api_key="test-key", base_url=fake_openai.base_url, timeout=5)
    fake_openai.script([step])
    try:
        with pytest.raises(ModelError) as caught:
            await model.complete(ModelCall("gpt-4o-mini", [ChatMessage("user", "hi")], 10, 0.5))
    finally:
        await model.close()
    assert (caught.value.pause, caught.value.error_type) == (pause, error_type)
