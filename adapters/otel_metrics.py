"""Metrics port through the OpenTelemetry SDK: Prometheus text for `/metrics`,
and OTLP as well when OTEL_EXPORTER_OTLP_ENDPOINT is set (the SDK reads it)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

# Seconds: a model answers in tenths of a second to minutes.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# The buckets OpenTelemetry's GenAI semantic conventions advise for their two metrics.
GEN_AI_TOKEN_BUCKETS = tuple(4 ** n for n in range(14))  # 1, 4, 16 ... 67,108,864
GEN_AI_DURATION_BUCKETS = tuple(0.01 * 2 ** n for n in range(14))  # 0.01 ... 81.92 s
SERVICE_NAME = "chater-gpt"


def service_resource() -> Resource:
    """The service's OpenTelemetry resource: OTEL_SERVICE_NAME (or service.name in
    OTEL_RESOURCE_ATTRIBUTES) when set, else chater-gpt; with the package's version."""
    detected = Resource.create()  # the SDK reads both variables
    name = str(detected.attributes.get("service.name") or "")
    if not name or name.startswith("unknown_service"):  # the SDK's stand-in: not set
        name = SERVICE_NAME
    return detected.merge(Resource({"service.name": name, "service.version": package_version()}))


def package_version(package: str = SERVICE_NAME) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"

Reading = Callable[[], Iterable[tuple[float, dict[str, str]]]]


class OtelMetrics:
    """Counters and histograms of the requests and model calls; gauges read on scrape."""

    def __init__(self, model_label: Callable[[str], str] | None = None) -> None:
        # What a model is called in labels (unknown names as one "other").
        self.model_label = model_label or (lambda model: model)
        # A registry of its own: several services in one process (tests) never clash.
        self.registry = CollectorRegistry(auto_describe=True)
        # The process's CPU, memory and file descriptors, the garbage collector's
        # collections, and the Python version, as prometheus_client's default
        # registry has them (process_*, python_gc_*, python_info).
        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        readers: list[MetricReader] = [
            PrometheusMetricReader(
                disable_target_info=True, scope_info_enabled=False, registry=self.registry
            )
        ]
        if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                OTLPMetricExporter,
            )

            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        self.provider = MeterProvider(
            metric_readers=readers,
            resource=service_resource(),
            views=[
                View(instrument_name="chater_gpt_*duration",
                     aggregation=ExplicitBucketHistogramAggregation(LATENCY_BUCKETS)),
                View(instrument_name="gen_ai.client.token.usage",
                     aggregation=ExplicitBucketHistogramAggregation(GEN_AI_TOKEN_BUCKETS)),
                View(instrument_name="gen_ai.client.operation.duration",
                     aggregation=ExplicitBucketHistogramAggregation(GEN_AI_DURATION_BUCKETS)),
            ],
        )
        meter = self.meter = self.provider.get_meter("chater-gpt")
        self._requests = meter.create_counter(
            "chater_gpt_requests", description="Responses produced, by outcome, model and kind"
        )
        self._errors = meter.create_counter(
            "chater_gpt_errors", description="Error responses, by type"
        )
        self._tokens = meter.create_counter(
            "chater_gpt_tokens",
            description="Tokens the model calls used, by model and type: prompt (not from "
            "the provider's cache), cached_prompt, completion",
        )
        self._cost = meter.create_counter(
            "chater_gpt_cost_usd",
            description="What the model calls cost in US dollars at the price table, by model",
        )
        self._unpriced = meter.create_counter(
            "chater_gpt_unpriced_calls",
            description="Answered model calls whose model has no price: not in the cost",
        )
        self._replies = meter.create_counter(
            "chater_gpt_replies",
            description="Answers by where they came from: model (a call of their own), "
            "cached (the response cache, or an identical call in flight) or batch (Batch API)",
        )
        self._latency = meter.create_histogram(
            "chater_gpt_request_duration", unit="s",
            description="From a request's record being produced to its response",
        )
        self._model_latency = meter.create_histogram(
            "chater_gpt_model_call_duration", unit="s",
            description="One call to the model provider, by model and outcome",
        )
        # OpenTelemetry's GenAI semantic conventions, beside ours, for dashboards made
        # for any GenAI client: per call, tokens by type and the call's duration.
        self._gen_ai_tokens = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}",
            description="Number of input and output tokens used",
        )
        self._gen_ai_duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s", description="GenAI operation duration",
        )
        self._build_labels: dict[str, str] | None = None
        meter.create_observable_gauge(
            "chater_gpt_build_info", callbacks=[self._build_info],
            description="1, labelled with the versions of the service, Python and its clients",
        )
        self._shared_limits_up: bool | None = None  # None: no shared limits (no REDIS_URL)
        self._shared_limits_fallbacks = meter.create_counter(
            "chater_gpt_shared_limits_fallbacks",
            description="Times the rate limits shared by the replicas (Redis) could not be "
            "reached and this process fell back to its own share of them",
        )
        meter.create_observable_gauge(
            "chater_gpt_shared_limits_up", callbacks=[self._read_shared_limits],
            description="1 while the rate limits shared by the replicas (Redis) hold, 0 while "
            "this process holds its own share of them (Redis unreachable)",
        )

    def request_finished(self, *, outcome: str, model: str, kind: str, seconds: float) -> None:
        labels = {"outcome": outcome, "model": self.model_label(model), "kind": kind}
        self._requests.add(1, labels)
        self._latency.record(max(seconds, 0.0), labels)
        if outcome != "answered":
            self._errors.add(1, {"type": outcome})

    def reply_served(self, *, source: str) -> None:
        self._replies.add(1, {"source": source})

    def model_called(self, *, model: str, outcome: str, seconds: float) -> None:
        model = self.model_label(model)
        self._model_latency.record(seconds, {"model": model, "outcome": outcome})
        self._gen_ai_duration.record(seconds, {
            **_gen_ai_call(model), **({} if outcome == "ok" else {"error.type": outcome}),
        })

    def model_used(
        self, *, model: str, prompt_tokens: int, cached_tokens: int, completion_tokens: int,
        cost: float | None,
    ) -> None:
        model = self.model_label(model)
        self._tokens.add(prompt_tokens - cached_tokens, {"model": model, "type": "prompt"})
        self._tokens.add(cached_tokens, {"model": model, "type": "cached_prompt"})
        self._tokens.add(completion_tokens, {"model": model, "type": "completion"})
        self._gen_ai_tokens.record(prompt_tokens, {**_gen_ai_call(model), "gen_ai.token.type": "input"})
        self._gen_ai_tokens.record(completion_tokens, {**_gen_ai_call(model), "gen_ai.token.type": "output"})
        if cost is None:
            self._unpriced.add(1, {"model": model})
        else:
            self._cost.add(cost, {"model": model})

    def shared_limits(self, *, up: bool) -> None:
        if not up and self._shared_limits_up is not False:
            self._shared_limits_fallbacks.add(1)
        self._shared_limits_up = up

    def _build_info(self, _: CallbackOptions) -> list[Observation]:
        if self._build_labels is None:  # once: they do not change while the process runs
            import platform

            import confluent_kafka

            self._build_labels = {
                "version": package_version(), "python": platform.python_version(),
                "confluent_kafka": confluent_kafka.__version__,
                "librdkafka": confluent_kafka.libversion()[0], "openai": package_version("openai"),
            }
        return [Observation(1, self._build_labels)]

    def _read_shared_limits(self, _: CallbackOptions) -> list[Observation]:
        up = self._shared_limits_up
        return [] if up is None else [Observation(1 if up else 0)]

    def watch(self, name: str, description: str, read: Reading) -> None:
        """A gauge whose values `read()` gives whenever metrics are collected."""

        def observe(_: CallbackOptions) -> list[Observation]:
            return [Observation(value, labels) for value, labels in read()]

        self.meter.create_observable_gauge(name, callbacks=[observe], description=description)

    def count(self, name: str, description: str, read: Reading) -> None:
        """A counter whose totals since start `read()` gives whenever metrics are collected."""

        def observe(_: CallbackOptions) -> list[Observation]:
            return [Observation(value, labels) for value, labels in read()]

        self.meter.create_observable_counter(name, callbacks=[observe], description=description)

    def prometheus_text(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def close(self) -> None:
        self.provider.shutdown()


def _gen_ai_call(model: str) -> dict[str, str]:
    """The GenAI conventions' attributes of one chat call (to OpenAI's API, or to the
    demo's offline model)."""
    provider = "offline" if model.startswith("offline:") else "openai"
    return {"gen_ai.operation.name": "chat", "gen_ai.provider.name": provider,
            "gen_ai.request.model": model}
