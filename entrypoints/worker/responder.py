"""The responder: responses to `gpt-response` and dead letters to the DLQ, each
with the trace context of its own send span, sent again when delivery fails; a
record is finished once everything it produced is delivered."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from adapters.dead_letters import SEALED_HEADER, SEALED_WITH, DeadLetterSeal
from adapters.kafka import producer_config
from application.contract import ChatResponse, InvalidRequest
from entrypoints.settings import Settings
from entrypoints.worker.held_records import HeldRecord, HeldRecords

log = logging.getLogger(__name__)

DELIVERY_ATTEMPTS = 5
DELIVERY_POLL_INTERVAL = 0.01

Headers = list[tuple[str, bytes]]
DeliveryCallback = Callable[[KafkaError | None, Message], None]


class Responder:
    """Produces what the worker answers. `fail` stops the worker when a record
    cannot be delivered (its offset is then never committed: it is fetched again)."""

    def __init__(
        self,
        settings: Settings,
        held: HeldRecords,
        tracer: trace.Tracer,
        fail: Callable[[BaseException], None],
    ) -> None:
        assert settings.SECRET_KEY is not None  # validated
        self.settings = settings
        self.held = held
        self.tracer = tracer
        self.fail = fail
        self._seal = DeadLetterSeal(settings.SECRET_KEY.get_secret_value())
        self._producer: Producer | None = None

    # Lifecycle ------------------------------------------------------------------

    def open(self) -> None:
        self._producer = Producer(producer_config(self.settings.BOOTSTRAP_SERVER))

    async def serve_deliveries(self) -> None:
        """Run delivery callbacks on this loop often, also while a fetch is waiting."""
        while True:
            self._open_producer().poll(0)
            await asyncio.sleep(DELIVERY_POLL_INTERVAL)

    def flush(self, timeout: float) -> None:
        """Wait for the deliveries still under way (their callbacks run here)."""
        self._open_producer().flush(timeout)

    def close(self) -> None:
        self._producer = None  # librdkafka clients stop when their last reference goes

    def probe_broker(self, topic: str, timeout: float) -> int:
        """Ask the cluster for `topic`'s metadata; the number of brokers.

        Raises KafkaException when no broker answers within `timeout` seconds.
        """
        producer = self._producer
        if producer is None:
            raise KafkaException(KafkaError(KafkaError._STATE, "the worker is not running"))
        metadata = producer.list_topics(topic, timeout=timeout)
        return len(metadata.brokers)

    # What the worker produces ---------------------------------------------------

    def respond(self, record: HeldRecord, response: ChatResponse) -> None:
        assert record.request is not None
        key = record.message.key() or record.request.request_id.encode()
        self._send(record, self.settings.RESPONSE_TOPIC, key, response.encode())

    def reject(self, record: HeldRecord, error: InvalidRequest, response: ChatResponse) -> None:
        """An invalid record: `response` to its sender (when it has a key to match
        it by) and the record itself, sealed, to the DLQ."""
        message = record.message
        self.held.stats.dead_lettered += 1
        headers = dead_letter_headers(message, error.message)
        key = message.key() or (error.request_id.encode() if error.request_id else None)
        # Counted before either is sent, so that the first delivery cannot finish the record.
        record.deliveries += 1
        if key is not None:
            self._send(record, self.settings.RESPONSE_TOPIC, key, response.encode())
        else:
            log.warning("invalid record has no key: no error response can be matched to it")
        self._send(record, self.settings.DLQ_TOPIC, message.key(), self._sealed(message), headers)
        self.delivered(record)

    def dead_letter_erasure(self, message: Message, reason: str) -> None:
        """An erasure request that cannot be carried out: to the DLQ, sealed."""
        trace.get_current_span().set_status(Status(StatusCode.ERROR, reason))
        self.held.stats.dead_lettered += 1
        self.produce(self.settings.DLQ_TOPIC, message.key(), self._sealed(message),
                     dead_letter_headers(message, reason), _log_erasure_delivery_failure)

    def delivered(self, record: HeldRecord) -> None:
        """One thing the record produced is delivered; the last one finishes it."""
        record.deliveries -= 1
        if record.deliveries == 0:
            self.held.finish(record)

    def _sealed(self, message: Message) -> bytes | None:
        """The record's original bytes, encrypted: they may hold anything a user wrote."""
        value = message.value()
        return None if value is None else self._seal.seal(value)

    # Producing ------------------------------------------------------------------

    def _send(
        self,
        record: HeldRecord,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers | None = None,
    ) -> None:
        """Produce for `record`, which is finished once everything it produced is
        delivered. Each record produced carries the `traceparent` of its own send span.
        """
        span = self.tracer.start_span(
            f"send {topic}",
            context=trace.set_span_in_context(record.span),
            kind=SpanKind.PRODUCER,
            attributes={"messaging.system": "kafka", "messaging.destination.name": topic,
                        "messaging.operation.type": "send"},
        )
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        traced = [*(headers or []), *((name, text.encode()) for name, text in carrier.items())]
        delivery = _Delivery(self, record, span, topic, key, value, traced)
        record.deliveries += 1
        try:
            delivery.send()
        except KafkaException as error:
            if topic != self.settings.DLQ_TOPIC:
                span.end()
                raise
            # Too large for the broker, say: keep the evidence that can be kept.
            log.error("dead-lettering the original bytes failed (%s); sending headers only", error)
            delivery.send_without_value(error)

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers,
        on_delivery: DeliveryCallback,
    ) -> None:
        producer = self._open_producer()
        while True:
            try:
                producer.produce(topic, value, key, headers=headers, on_delivery=on_delivery)
                producer.poll(0)
                return
            except BufferError:
                producer.poll(0.05)  # the local queue is full: let deliveries drain

    def _open_producer(self) -> Producer:
        assert self._producer is not None, "the responder is not open"
        return self._producer


class _Delivery:
    """One record produced for a held record, and its send span: sent again when
    its delivery fails, up to DELIVERY_ATTEMPTS times; delivered, it tells the
    responder, which finishes the held record after its last delivery."""

    def __init__(
        self,
        responder: Responder,
        record: HeldRecord,
        span: Span,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers,
    ) -> None:
        self.responder = responder
        self.record = record
        self.span = span
        self.topic = topic
        self.key = key
        self.value = value
        self.headers = headers
        self.attempts = 1

    def send(self) -> None:
        self.responder.produce(self.topic, self.key, self.value, self.headers, self.on_delivery)

    def send_without_value(self, error: KafkaException) -> None:
        """Headers only (the value could not be produced), saying why."""
        self.value = None
        self.headers = [*self.headers, ("value_omitted", str(error).encode())]
        self.send()

    def on_delivery(self, error: KafkaError | None, _message: Message) -> None:
        """librdkafka's delivery report, run by the responder's polls."""
        if error is None:
            self.span.end()
            self.responder.delivered(self.record)
        elif self.attempts >= DELIVERY_ATTEMPTS or error.fatal():
            log.error("delivery to %s failed %d times (%s)", self.topic, self.attempts, error)
            self.span.set_status(Status(StatusCode.ERROR, str(error.code())))
            self.span.end()
            self.responder.fail(KafkaException(error))
        else:
            self.attempts += 1
            log.warning("delivery to %s failed (%s); sending again", self.topic, error)
            self.send()


def dead_letter_headers(message: Message, reason: str) -> Headers:
    return [
        (SEALED_HEADER, SEALED_WITH),
        ("error_type", b"invalid_request"),
        ("reason", reason.encode()),
        ("source_topic", (message.topic() or "").encode()),
        ("source_partition", str(message.partition()).encode()),
        ("source_offset", str(message.offset()).encode()),
    ]


def _log_erasure_delivery_failure(error: KafkaError | None, _message: Message) -> None:
    if error is not None:
        log.error("dead letter of an erasure request not delivered: %s", error)
