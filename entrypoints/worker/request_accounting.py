"""Request accounting: each request's span, its metrics and its log line."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Message
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from application.chat import ChatService
from application.contract import ChatResponse, Usage, request_id_of
from application.ports import Metrics
from application.usage import user_hash
from entrypoints.settings import Settings
from entrypoints.worker.handover import Forwarded, source_of
from entrypoints.worker.held_records import HeldRecord, WorkerStats, produced_at, trace_context

log = logging.getLogger(__name__)
# One line per request at INFO: who (hashed), which model, tokens, time, outcome.
request_log = logging.getLogger("chater_gpt.requests")


class RequestAccounting:
    """Opens each request's span and, once its response is known, counts it (the
    worker's stats and metrics), describes it on the span and logs one line.
    No message text or e-mail address unless LOG_CONTENT."""

    def __init__(
        self,
        service: ChatService,
        settings: Settings,
        stats: WorkerStats,
        tracer: trace.Tracer,
        metrics: Metrics | None,
        model_label: Callable[[str], str],
    ) -> None:
        assert settings.SECRET_KEY is not None  # validated
        self.service = service
        self.settings = settings
        self.stats = stats
        self.tracer = tracer
        self.metrics = metrics
        self.model_label = model_label
        self._secret_key = settings.SECRET_KEY.get_secret_value()

    def start_span(self, message: Message | Forwarded) -> Span:
        """The request's span, a child of the producer's when its headers carry a
        W3C `traceparent`. No key or content in it unless LOG_CONTENT."""
        topic, partition, offset = source_of(message)  # as produced, not as handed over
        attributes: dict[str, Any] = {
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.destination.name": topic,
            "messaging.destination.partition.id": str(partition),
            "messaging.kafka.offset": offset,
            "messaging.consumer.group.name": self.settings.CONSUMER_GROUP,
        }
        key = request_id_of(message.key(), self.settings.MAX_KEY_BYTES)
        if self.settings.LOG_CONTENT and key is not None:
            attributes["messaging.kafka.message.key"] = key
        return self.tracer.start_span(
            f"process {topic}",
            context=trace_context(message),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        )

    def describe(self, record: HeldRecord) -> None:
        """What was asked, on the request's span: text or vision, and which model."""
        assert record.request is not None
        record.span.set_attributes({
            "chater.request.kind": "vision" if record.request.images else "text",
            "gen_ai.request.model": self.model_label(self.service.model_for(record.request)),
        })

    def account_for(self, record: HeldRecord, response: ChatResponse) -> None:
        """One response for the stats, the metrics, the span and the log: outcome,
        model, kind, time since produced, tokens."""
        if response.ok:
            self.stats.answered += 1
        else:
            self.stats.errors += 1
        try:
            self._measure(record, response)
        except Exception:  # telemetry must never stop a response
            log.exception("could not record metrics for a response")

    def _measure(self, record: HeldRecord, response: ChatResponse) -> None:
        request = record.request
        images = bool(request and request.images)
        model = self.model_label(response.model or (
            "none" if request is None else self.service.model_for(request)
        ))
        now = time.time()
        usage = response.usage or Usage()
        figures = {
            "outcome": response.outcome,
            "model": model,
            "kind": "vision" if images else "text",
            "seconds": now - produced_at(record.message, now),
        }
        source = "cached" if response.shared else "batch" if response.source == "batch" else "model"
        if self.metrics is not None:
            self.metrics.request_finished(**figures)
            if response.ok:
                self.metrics.reply_served(source=source)
        self._describe_outcome(record.span, response, model, usage)
        if request_log.isEnabledFor(logging.INFO):
            line = {
                "key": request.request_id if request else request_id_of(
                    record.message.key(), self.settings.MAX_KEY_BYTES
                ),
                "user": user_hash(self._secret_key, request.user_email) if request else None,
                **{name: value for name, value in figures.items() if name != "seconds"},
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "latency_ms": round(figures["seconds"] * 1000, 1),
                # The request's trace, for finding it in the tracing backend.
                "trace_id": trace.format_trace_id(record.span.get_span_context().trace_id),
            }
            if response.ok:  # answered: priced, or plainly marked as not
                line["source"] = source
                line["cost_usd"] = response.cost_usd
                if line["cost_usd"] is None:
                    line["unpriced"] = True
            if self.settings.LOG_CONTENT and request is not None:
                line.update(user_email=request.user_email, message_text=request.message)
            request_log.info("request done", extra=line)

    @staticmethod
    def _describe_outcome(span: Span, response: ChatResponse, model: str, usage: Usage) -> None:
        span.set_attributes({
            "chater.outcome": response.outcome,
            "gen_ai.response.model": model,
            "gen_ai.usage.input_tokens": usage.prompt_tokens,
            "gen_ai.usage.output_tokens": usage.completion_tokens,
        })
        if response.cost_usd is not None:
            span.set_attribute("chater.cost_usd", response.cost_usd)
        if not response.ok:
            span.set_attribute("error.type", response.outcome)
            span.set_status(Status(StatusCode.ERROR, response.outcome))
