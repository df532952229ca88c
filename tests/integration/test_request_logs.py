"""Worker logs: one JSON line per request, and no message text, address or secret in them."""

from __future__ import annotations

import json

import pytest

from tests.support.records import produce, read_records
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.integration

SECRET_TEXT = "my card is 4111 1111 1111 1111 and I live at 7 Elm Street"


def request_lines(log: str) -> list[dict]:
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("message") == "request done"]


@pytest.mark.parametrize("content", [False, True], ids=["default", "LOG_CONTENT"])
def test_one_json_line_per_request_without_content_unless_asked(
    broker, topics, fake_openai, worker_env, tmp_path, content
):
    env = {**worker_env, "LOG_CONTENT": str(content).lower(), "OPENAI_API_KEY": "sk-test-4f9a8b7c"}
    worker = WorkerProcess(env, tmp_path / "worker.log")
    worker.start()
    try:
        produce(broker, topics["REQUEST_TOPIC"], [
            ("l-1", json.dumps({"user_email": "Ada.Lovelace@example.com", "message": SECRET_TEXT}).encode()),
            ("l-2", b"{not json"),
        ])
        records = read_records(broker, topics["RESPONSE_TOPIC"], 2)
        answers = {key: json.loads(value) for key, value, _ in records}
        answers_headers = {key: headers for key, _, headers in records}
    finally:
        worker.stop()
    log = worker.log()
    lines = {line["key"]: line for line in request_lines(log)}
    assert set(lines) == {"l-1", "l-2"}
    done = lines["l-1"]
    usage = answers["l-1"]["usage"]
    assert (done["outcome"], done["model"], done["kind"]) == ("answered", "gpt-4o-mini", "text")
    assert (done["prompt_tokens"], done["completion_tokens"]) == (
        usage["prompt_tokens"], usage["completion_tokens"]
    )
    # gpt-4o-mini at the shipped prices: $0.15 and $0.60 per million tokens.
    expected = (usage["prompt_tokens"] * 0.15 + usage["completion_tokens"] * 0.60) / 1e6
    assert done["cost_usd"] == answers["l-1"]["cost_usd"] == pytest.approx(expected)
    assert "unpriced" not in done
    traceparent = answers_headers["l-1"]["traceparent"].decode()
    assert traceparent.split("-")[1] == done["trace_id"]  # the line leads to the trace
    assert len(done["user"]) == 16 and done["latency_ms"] >= 0 and done["level"] == "INFO"
    assert lines["l-2"]["outcome"] == "invalid_request"
    assert "sk-test-4f9a8b7c" not in log  # never, at any setting
    if content:
        assert done["message_text"] == SECRET_TEXT and done["user_email"] == "Ada.Lovelace@example.com"
    else:
        assert "4111" not in log and "Elm Street" not in log and "Lovelace" not in log.lower()
