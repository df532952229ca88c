"""Traces: one span per request from consume to produce, with children for the store,
the model call and the produce; W3C trace context from the request's headers to the
response's; exported by OTLP to a real HTTP endpoint."""

from __future__ import annotations

import json
import re

import pytest

from tests.support.otlp_collector import OtlpCollector
from tests.support.records import produce, read_records
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.integration

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
SECRET_TEXT = "my passport number is X1234567"
CONSUMER, PRODUCER, CLIENT = 5, 4, 3  # OTLP's SpanKind numbers
ERROR = 2  # OTLP's status code


@pytest.fixture
def collector():
    collector = OtlpCollector()
    yield collector
    collector.close()


def test_each_request_is_one_trace_continued_from_its_producer(
    broker, topics, fake_openai, worker_env, collector, tmp_path
):
    worker = WorkerProcess({
        **worker_env, "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
        "OTEL_METRIC_EXPORT_INTERVAL": "600000",
    }, tmp_path / "worker.log")
    worker.start()
    try:
        produce(broker, topics["REQUEST_TOPIC"], [
            ("key-traced-4711", json.dumps({"user_email": "ada@example.com", "message": SECRET_TEXT}).encode()),
            ("key-untraced-4712", json.dumps({"user_email": "bob@example.com", "message": "hi"}).encode()),
            ("key-bad-4713", b"{not json"),
        ], headers={
            "key-traced-4711": [("traceparent", f"00-{CALLER_TRACE}-{CALLER_SPAN}-01".encode())],
            "key-bad-4713": [("traceparent", f"00-{'ab' * 16}-{'cd' * 8}-01".encode())],
        })
        responses = {key: (json.loads(value), headers)
                     for key, value, headers in read_records(broker, topics["RESPONSE_TOPIC"], 3)}
        dead_letters = read_records(broker, topics["DLQ_TOPIC"], 1)
    finally:
        worker.stop()  # the last spans are exported at exit
    spans = collector.spans()
    assert {span["service"] for span in spans} == {"chater-gpt"}

    # The traced request: its response continues the caller's trace ...
    answer, headers = responses["key-traced-4711"]
    trace_id, response_parent = TRACEPARENT.match(headers["traceparent"].decode()).groups()
    assert trace_id == CALLER_TRACE and response_parent != CALLER_SPAN
    trace = [span for span in spans if span["trace_id"] == CALLER_TRACE]
    [request] = [span for span in trace if span["kind"] == CONSUMER]
    assert request["name"] == f"process {topics['REQUEST_TOPIC']}"
    assert request["parent_span_id"] == CALLER_SPAN
    assert request["attributes"]["chater.outcome"] == "answered"
    assert request["attributes"]["gen_ai.usage.input_tokens"] == answer["usage"]["prompt_tokens"]
    assert request["attributes"]["chater.cost_usd"] == pytest.approx(answer["cost_usd"])
    # ... through children for the store, the model and the produce.
    children = [span for span in trace if span is not request]
    assert all(span["parent_span_id"] == request["span_id"] for span in children)
    names = sorted(span["name"] for span in children)
    assert names == sorted([
        "load conversation", "save conversation", "save conversation",
        "chat gpt-4o-mini", f"send {topics['RESPONSE_TOPIC']}",
    ])
    [model] = [span for span in children if span["kind"] == CLIENT]
    assert model["attributes"]["gen_ai.usage.output_tokens"] == answer["usage"]["completion_tokens"]
    [send] = [span for span in children if span["kind"] == PRODUCER]
    assert send["span_id"] == response_parent  # the response names its own send span
    # From consume to produce: the request's span holds all of its children.
    assert all(request["start"] <= span["start"] and span["end"] <= request["end"] for span in children)

    # A request without trace context starts a trace of its own.
    _, headers = responses["key-untraced-4712"]
    own_trace, _ = TRACEPARENT.match(headers["traceparent"].decode()).groups()
    assert own_trace != CALLER_TRACE
    [untraced] = [s for s in spans if s["trace_id"] == own_trace and s["kind"] == CONSUMER]
    assert untraced["parent_span_id"] == ""

    # A refused record: an error span, with its response and its dead letter in the trace.
    bad_trace = "ab" * 16
    [refused] = [s for s in spans if s["trace_id"] == bad_trace and s["kind"] == CONSUMER]
    assert refused["status"] == ERROR and refused["attributes"]["error.type"] == "invalid_request"
    sends = sorted(s["name"] for s in spans if s["trace_id"] == bad_trace and s["kind"] == PRODUCER)
    assert sends == sorted([f"send {topics['RESPONSE_TOPIC']}", f"send {topics['DLQ_TOPIC']}"])
    assert TRACEPARENT.match(dead_letters[0][2]["traceparent"].decode()).group(1) == bad_trace

    # No message text and no key in any span (LOG_CONTENT is off): in what a span
    # says, not in its ids and nanosecond times, whose digits may hold "4711" by chance.
    numbers = {"trace_id", "span_id", "parent_span_id", "start", "end"}
    exported = json.dumps([{k: v for k, v in span.items() if k not in numbers} for span in spans])
    assert "passport" not in exported and "4711" not in exported and "ada@" not in exported
