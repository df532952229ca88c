"""Who the telemetry says it is (OTEL_SERVICE_NAME, the version), and the trace id on
every log line written while a request's span is current."""

from __future__ import annotations

import io
import json
import logging
from importlib.metadata import version

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter

from adapters.otel_metrics import service_resource
from adapters.otel_tracing import OtelTracing
from entrypoints.cli import TraceIds


def test_the_service_is_chater_gpt_unless_otel_service_name_says_otherwise(monkeypatch):
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    resource = service_resource()
    assert resource.attributes["service.name"] == "chater-gpt"
    assert resource.attributes["service.version"] == version("chater-gpt")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attributes,deployment.environment=prod")
    assert service_resource().attributes["service.name"] == "from-attributes"
    assert service_resource().attributes["deployment.environment"] == "prod"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gpt-eu-1")  # wins over the attributes, as the spec says
    assert service_resource().attributes["service.name"] == "gpt-eu-1"
    assert OtelTracing().provider.resource.attributes["service.name"] == "gpt-eu-1"


def test_lines_logged_within_a_span_carry_its_trace_id():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("%(levelname)s %(message)s"))
    handler.addFilter(TraceIds())
    log = logging.getLogger("test.trace-ids")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("outside any request")
        tracer = OtelTracing().tracer  # no exporter: spans not recorded, their ids still valid
        with tracer.start_as_current_span("process gpt-send") as span:
            log.warning("within a request")
            log.warning("naming its own", extra={"trace_id": "given"})
        context = span.get_span_context()
    finally:
        log.removeHandler(handler)
    outside, within, own = (json.loads(line) for line in stream.getvalue().splitlines())
    assert "trace_id" not in outside
    assert within["trace_id"] == trace.format_trace_id(context.trace_id)
    assert within["span_id"] == trace.format_span_id(context.span_id)
    assert own["trace_id"] == "given"
