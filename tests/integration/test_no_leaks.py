"""No leaks: real traffic carrying a recognisable API key, secret and personal data,
at LOG_LEVEL=DEBUG; none of them may appear in the logs, the metrics, the dead
letters, the error responses or any exception message the worker logs."""

from __future__ import annotations

import json

import pytest

from tests.support.records import produce, read_records
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.integration

API_KEY = "sk-LEAKCHECK-7f3a9c1e5b2d"
SECRET = "secret-LEAKCHECK-9d8e7f6a"
EMAIL = "leak.check.person@example.org"
PII = ["PATIENT-SECRET-DIAGNOSIS", "+49 30 901820", "4111 1111 1111 1111", "DE89 3704 0044 0532 0130 00"]
NEEDLES = [API_KEY, SECRET, EMAIL, *PII, "LEAKCHECK"]


def test_no_key_secret_or_personal_data_leaves_by_a_side_door(
    broker, topics, fake_openai, worker_env, tmp_path
):
    text = f"I am {EMAIL}, {PII[0]}, call {PII[1]}, card {PII[2]}, iban {PII[3]}"
    fake_openai.script([
        # A provider error that quotes the prompt back, as some do.
        {"match": "provider-error", "status": 400,
         "body": {"error": {"message": f"Invalid prompt: {text}", "type": "invalid_request_error"}}},
        {"match": "provider-500", "status": 500, "body": {"error": {"message": text}}},
    ])
    # A model name the service does not know, served by this provider.
    fake_openai.serve_models([PII[0]])
    env = {**worker_env, "OPENAI_API_KEY": API_KEY, "SECRET_KEY": SECRET, "LOG_LEVEL": "DEBUG",
           "LOG_CONTENT": "false", "MAX_RETRIES": "0"}
    worker = WorkerProcess(env, tmp_path / "worker.log")
    worker.start()
    try:
        produce(broker, topics["REQUEST_TOPIC"], [
            ("leak-ok", json.dumps({"user_email": EMAIL, "message": text, "system_prompt": text,
                                    "context": text}).encode()),
            ("leak-provider-error", json.dumps({"user_email": EMAIL, "message": "provider-error " + text}).encode()),
            ("leak-500", json.dumps({"user_email": EMAIL, "message": "provider-500 " + text}).encode()),
            ("leak-not-json", f'{{"user_email": "{EMAIL}", "message": "{text}"'.encode()),
            ("leak-bad-types", json.dumps({"user_email": EMAIL, "message": text, "temperature": text}).encode()),
            ("leak-bad-model", json.dumps({"user_email": EMAIL, "message": text, "model": PII[0]}).encode()),
            ("leak-bad-email", json.dumps({"user_email": text, "message": text}).encode()),
        ])
        responses = {key: json.loads(value) for key, value, _ in read_records(broker, topics["RESPONSE_TOPIC"], 7)}
        status, _, metrics = worker.fetch("/metrics")
        assert status == 200
    finally:
        worker.stop()
    dead_letters = read_records(broker, topics["DLQ_TOPIC"], 3)

    # PII_MODE=mask (the default): the provider never saw the personal data, and the
    # user's answer (the fake model echoes what it saw) has it back.
    seen_by_provider = json.dumps(fake_openai.requests())
    for needle in (EMAIL, *PII[1:]):  # (free text such as a diagnosis is not detected)
        assert needle not in seen_by_provider, f"{needle!r} reached the model provider"
    assert "[EMAIL_1]" in seen_by_provider and "[CARD_1]" in seen_by_provider
    assert responses["leak-ok"]["response"].startswith(f"echo: {text} | seen:")

    errors = {key: body for key, body in responses.items() if "error" in body}
    assert set(errors) == {"leak-provider-error", "leak-500", "leak-not-json", "leak-bad-types",
                           "leak-bad-email"}
    # A model name the service does not know is answered (by this fake provider),
    # but shown as "other" in the metrics, spans and logs.
    assert 'model="other"' in metrics.decode()
    places = {
        "worker log": worker.log(),
        "metrics": metrics.decode(),
        "error responses": json.dumps(errors, ensure_ascii=False),
        "dead letters": repr(dead_letters),
    }
    assert "DEBUG" in places["worker log"] and len(places["worker log"]) > 2000  # it did talk
    for place, content in places.items():
        for needle in NEEDLES:
            assert needle.lower() not in content.lower(), f"{needle!r} leaked into the {place}"
