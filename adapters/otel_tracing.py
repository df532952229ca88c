"""Traces through the OpenTelemetry SDK, sent by OTLP when OTEL_EXPORTER_OTLP_ENDPOINT
(or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set; the SDK reads the other OTEL_* settings."""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor


class OtelTracing:
    """A tracer provider of its own (several services in one process never clash).

    Without an OTLP endpoint, spans are still made, so that every response carries
    a fresh `traceparent`, but nothing is exported.
    """

    def __init__(self) -> None:
        self.provider = TracerProvider(resource=Resource.create({"service.name": "chater-gpt"}))
        if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
        ):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self.tracer: trace.Tracer = self.provider.get_tracer("chater-gpt")

    def close(self) -> None:
        """Export what is left; called once when the worker stops."""
        self.provider.shutdown()
