"""The responder: responses to `gpt-response` and dead letters to the DLQ, each
with the trace context of its own send span, sent again when delivery fails; a
record is finished once everything it produced is delivered.

No record stops the worker: a response the cluster refuses (too large, say) is
dead-lettered with the reason, and a dead letter refused whole is sent again
without its value, saying why and with the value's SHA-256. Only a cluster that
keeps failing deliveries stops it (nothing is committed: its successor goes on).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from datetime import UTC, datetime
from collections.abc import Callable

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from adapters.dead_letters import SEALED_HEADER, SEALED_WITH, DeadLetterSeal
from adapters.kafka import producer_config
from application.contract import ChatResponse, InvalidRequest, iso_timestamp_of
from entrypoints.settings import Settings
from entrypoints.worker.handover import Forwarded, source_of
from entrypoints.worker.held_records import HeldRecord, HeldRecords

log = logging.getLogger(__name__)

DELIVERY_ATTEMPTS = 5
DELIVERY_POLL_INTERVAL = 0.01
# Room for a dead letter's headers and seal beyond the record's own key and value.
DEAD_LETTER_ROOM = 64 * 1024
LIBRDKAFKA_MESSAGE_MAX_BYTES = 1_000_000  # its default message.max.bytes
# Delivery errors about the record itself, not the cluster: sending it again
# cannot help (librdkafka raises the first ones before sending, too).
REFUSED_RECORD = frozenset({
    KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE,
    KafkaError.INVALID_RECORD, KafkaError.INVALID_MSG, KafkaError.INVALID_MSG_SIZE,
    KafkaError._INVALID_ARG, KafkaError._BAD_MSG,
})

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
        self._producer = Producer(
            producer_config(self.settings.KAFKA, largest_record(self.settings))
        )

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

    def respond(
        self, record: HeldRecord, response: ChatResponse, dead_letter: str | None = None
    ) -> None:
        """The response to a request; one refused as invalid is dead-lettered too,
        and so is the record when `dead_letter` gives a reason (an internal error)."""
        assert record.request is not None
        key = record.message.key() or record.request.request_id.encode()
        # Counted before anything is sent, so that the first delivery cannot finish the record.
        record.deliveries += 1
        self._send(record, self.settings.RESPONSE_TOPIC, key, response.encode())
        if response.error_type == "invalid_request":
            self.dead_letter(record, response.error_message or "invalid request")
        elif dead_letter is not None:
            self.dead_letter(record, dead_letter, response.error_type or "internal_error")
        self.delivered(record)

    def reject(self, record: HeldRecord, error: InvalidRequest, response: ChatResponse) -> None:
        """An invalid record: `response` to its sender (when it has a key to match
        it by, short enough to carry) and the record itself, sealed, to the DLQ."""
        message = record.message
        key = message.key() or (error.request_id.encode() if error.request_id else None)
        record.deliveries += 1
        if key is not None and len(key) <= self.settings.MAX_KEY_BYTES:
            self._send(record, self.settings.RESPONSE_TOPIC, key, response.encode())
        else:
            log.warning("invalid record without a usable key: no error response can be matched to it")
        self.dead_letter(record, error.message)
        self.delivered(record)

    def dead_letter(self, record: HeldRecord, reason: str, error_type: str = "invalid_request") -> None:
        """The record itself, key and sealed value, to the DLQ, saying why."""
        message = record.message
        self.held.stats.dead_lettered += 1
        headers = dead_letter_headers(message, reason, error_type)
        self._send(record, self.settings.DLQ_TOPIC, message.key(), self._sealed(message), headers)

    def dead_letter_erasure(self, message: Message, reason: str) -> asyncio.Future[None]:
        """An erasure request that cannot be carried out: to the DLQ, sealed.

        The future is done once the dead letter is delivered; its exception is a
        KafkaException when it could not be (the caller must not commit then).
        """
        trace.get_current_span().set_status(Status(StatusCode.ERROR, reason))
        self.held.stats.dead_lettered += 1
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        headers = dead_letter_headers(message, reason)
        key = message.key()

        def refused(error: KafkaError, sealed: bytes | None) -> None:
            if sealed is None:  # refused even without its value
                done.set_exception(KafkaException(error))
                return
            log.error("dead letter of an erasure request refused whole (%s); "
                      "sending it without its value", error.name())
            headers.extend(omitted_value_headers(message, error))
            nonlocal key  # it goes too when beyond the bound (it may be what is too large)
            key = key if key is None or len(key) <= self.settings.MAX_KEY_BYTES else None
            send(None)

        def send(sealed: bytes | None) -> None:
            def on_delivery(error: KafkaError | None, _message: Message) -> None:
                if done.done():
                    return
                if error is None:
                    done.set_result(None)
                elif error.code() in REFUSED_RECORD:
                    refused(error, sealed)
                else:
                    log.error("dead letter of an erasure request not delivered: %s", error)
                    done.set_exception(KafkaException(error))

            try:
                self.produce(self.settings.DLQ_TOPIC, key, sealed, headers, on_delivery)
            except KafkaException as error:
                refused(error.args[0], sealed)

        send(self._sealed(message))
        return done

    def publish(self, key: bytes, value: bytes) -> asyncio.Future[None]:
        """A response produced for no held record (a parked batch request's, once its
        batch ended), sent again when delivery fails, with a send span of its own.
        The future is done once it is delivered; its exception is the
        KafkaException of a delivery that failed DELIVERY_ATTEMPTS times (the
        caller tries again later: nothing marked it delivered)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        topic = self.settings.RESPONSE_TOPIC
        span, headers = self._send_span(topic)
        attempts = 0

        def send() -> None:
            nonlocal attempts
            attempts += 1
            try:
                self.produce(topic, key, value, headers, on_delivery)
            except KafkaException as error:
                finish(error.args[0])

        def finish(error: KafkaError | None) -> None:
            if error is not None:
                span.set_status(Status(StatusCode.ERROR, error.name()))
            span.end()
            if done.done():
                return
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(KafkaException(error))

        def on_delivery(error: KafkaError | None, _message: Message) -> None:
            if error is None or error.code() in REFUSED_RECORD or error.fatal():
                finish(error)
            elif attempts >= DELIVERY_ATTEMPTS:
                log.error("delivery to %s failed %d times (%s)", topic, attempts, error)
                finish(error)
            else:
                log.warning("delivery to %s failed (%s); sending again", topic, error)
                send()

        send()
        return done

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
        fallback: bool = False,
    ) -> None:
        """Produce for `record`, which is finished once everything it produced is
        delivered. Each record produced carries the `traceparent` of its own send span.
        `fallback`: the error response sent instead of a response that was refused.
        """
        span, context = self._send_span(topic, record.span)
        traced = [*(headers or []), *context]
        record.deliveries += 1
        _Delivery(self, record, span, topic, key, value, headers or [], traced, fallback).send()

    def _send_span(self, topic: str, parent: Span | None = None) -> tuple[Span, Headers]:
        """A send span (a child of `parent`'s, if given) and the headers that carry
        its trace context (W3C) on the record produced."""
        span = self.tracer.start_span(
            f"send {topic}",
            context=trace.set_span_in_context(parent) if parent is not None else None,
            kind=SpanKind.PRODUCER,
            attributes={"messaging.system": "kafka", "messaging.destination.name": topic,
                        "messaging.operation.type": "send"},
        )
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        return span, [(name, text.encode()) for name, text in carrier.items()]

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
        traced: Headers,
        fallback: bool,
    ) -> None:
        self.responder = responder
        self.record = record
        self.span = span
        self.topic = topic
        self.key = key
        self.value = value
        self.headers = headers  # as given; `traced` adds the send span's context
        self.traced = traced
        self.fallback = fallback
        self.attempts = 1

    def send(self) -> None:
        try:
            self.responder.produce(self.topic, self.key, self.value, self.traced, self.on_delivery)
        except KafkaException as error:  # refused before it was sent (too large, say)
            self.refused(error.args[0])

    def refused(self, error: KafkaError) -> None:
        """The cluster will not take this record: a response is dead-lettered with
        the reason; a dead letter goes again without its value (saying why); a dead
        letter refused even so is logged. The held record goes on either way."""
        responder, record = self.responder, self.record
        self.span.set_status(Status(StatusCode.ERROR, error.name()))
        self.span.end()
        message = record.message
        if self.topic != responder.settings.DLQ_TOPIC:
            log.error("response to %s[%d]@%d refused by the cluster (%s); dead-lettering it",
                      message.topic(), message.partition(), message.offset(), error.name())
            if not self.fallback:  # the sender still gets one response: an error
                responder._send(record, self.topic, self.key, undeliverable(error), fallback=True)
            responder.dead_letter(
                record, f"the response could not be produced: {error.name()}",
                "undeliverable_response",
            )
        elif self.value is not None:
            log.error("dead letter of %s[%d]@%d refused whole (%s); sending it without its value",
                      message.topic(), message.partition(), message.offset(), error.name())
            # The key goes too when it is beyond the bound (it may be what is too large).
            key = self.key if self.key is None or len(self.key) <= responder.settings.MAX_KEY_BYTES else None
            headers = [*self.headers, *omitted_value_headers(message, error)]
            responder._send(record, self.topic, key, None, headers)
        else:
            log.error("dead letter of %s[%d]@%d refused even without its value (%s): only "
                      "this log line and the source offset are left",
                      message.topic(), message.partition(), message.offset(), error.name())
        responder.delivered(record)

    def on_delivery(self, error: KafkaError | None, _message: Message) -> None:
        """librdkafka's delivery report, run by the responder's polls."""
        if error is None:
            self.span.end()
            self.responder.delivered(self.record)
        elif error.code() in REFUSED_RECORD:
            self.refused(error)
        elif self.attempts >= DELIVERY_ATTEMPTS or error.fatal():
            log.error("delivery to %s failed %d times (%s)", self.topic, self.attempts, error)
            self.span.set_status(Status(StatusCode.ERROR, str(error.code())))
            self.span.end()
            self.responder.fail(KafkaException(error))
        else:
            self.attempts += 1
            log.warning("delivery to %s failed (%s); sending again", self.topic, error)
            self.send()


def largest_record(settings: Settings) -> int:
    """The largest record the worker must produce: the dead letter of a record at
    both bounds (MAX_REQUEST_BYTES, MAX_KEY_BYTES), its seal and headers; never
    less than librdkafka's default (a long answer must fit whatever the bounds)."""
    return max(
        LIBRDKAFKA_MESSAGE_MAX_BYTES,
        settings.MAX_REQUEST_BYTES + settings.MAX_KEY_BYTES + DEAD_LETTER_ROOM,
    )


def dead_letter_headers(
    message: Message | Forwarded, reason: str, error_type: str = "invalid_request"
) -> Headers:
    """Why, and where the platform produced the record (not the repartition topic)."""
    topic, partition, offset = source_of(message)
    headers = [
        (SEALED_HEADER, SEALED_WITH),
        ("error_type", error_type.encode()),
        ("reason", reason.encode()),
        ("source_topic", topic.encode()),
        ("source_partition", str(partition).encode()),
        ("source_offset", str(offset).encode()),
    ]
    if isinstance(message, Forwarded) and message.refused is not None:
        # Handed over without its value: the dead letter cannot have it either.
        headers.append(("value_omitted", message.refused.encode()))
        if message.value_sha256 is not None:
            headers.append(("value_sha256", message.value_sha256))
    return headers


def undeliverable(error: KafkaError) -> bytes:
    """The error response sent instead of a response the cluster refused."""
    return ChatResponse.failure(
        "internal_error",
        f"The answer could not be delivered ({error.name()}); the request is kept as a dead letter.",
        iso_timestamp_of(datetime.now(UTC)), 0.0,
    ).encode()


def omitted_value_headers(message: Message, error: KafkaError) -> Headers:
    """Why a dead letter has no value, and what the value was (its SHA-256)."""
    value = message.value()
    return [
        ("value_omitted", error.name().encode()),
        *([("value_sha256", hashlib.sha256(value).hexdigest().encode())] if value else []),
    ]
