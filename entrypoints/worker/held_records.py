"""The records a worker holds, from fetch until all they produced is delivered."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, KafkaError, Message
from opentelemetry import context as otel_context
from opentelemetry import propagate
from opentelemetry.trace import INVALID_SPAN, Span

from adapters.kafka_offsets import OffsetTracker
from application.contract import ChatRequest, ChatResponse
from entrypoints.worker.handover import Forwarded

log = logging.getLogger(__name__)


@dataclass
class HeldRecord:
    """One fetched record on its way through the worker."""

    message: Message | Forwarded  # Forwarded: read from the repartition topic
    epoch: int | None
    request: ChatRequest | None = None
    deliveries: int = 0
    answering: asyncio.Task[ChatResponse] | None = None
    # A Batch API request waiting for its batch to be sent (up to BATCH_WINDOW),
    # to be parked then: counted apart from MAX_IN_FLIGHT, so that a burst of them
    # fills its batch instead of pausing the live requests (BATCH_MAX_WAITING
    # bounds them).
    batched: bool = False
    # From consume to the last delivery of what it produced (W3C trace context).
    span: Span = INVALID_SPAN
    # When it was fetched, and when its turn came: its lane began answering it, or
    # it went straight to delivery (epoch seconds).
    held_at: float = field(default_factory=time.time)
    active_since: float | None = None
    size: int = 0  # bytes of its value and key

    @property
    def partition(self) -> tuple[str, int]:
        return (self.message.topic(), self.message.partition())

    @property
    def produced(self) -> float:
        """When it was produced (epoch seconds); when it was fetched if it says
        nothing, or says later (a producer clock running ahead)."""
        return min(produced_at(self.message, self.held_at), self.held_at)

    def start(self) -> None:
        """Its turn came: from now on it must make progress."""
        self.active_since = time.time()

    def stalled(self, now: float, grace: float) -> bool:
        """Its turn came and it has taken longer than it may: past its deadline (or
        past when its turn came, if that was later) by more than `grace` seconds."""
        if self.active_since is None:
            return False  # queued behind its lane's head
        deadline = self.request.deadline if self.request is not None else None
        return now > max(deadline or self.active_since, self.active_since) + grace


@dataclass
class WorkerStats:
    """Counts since start, for tests, the demo, benchmarks and health reports."""

    consumed: int = 0
    answered: int = 0
    errors: int = 0
    dead_lettered: int = 0
    dropped: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    # Bytes of the records held (values and keys), batch requests collected included.
    in_flight_bytes: int = 0
    peak_in_flight_bytes: int = 0
    # Batch API requests: held while their batch is collected, parked by this
    # worker (their records finished without a response), parked in the open
    # batches of all replicas (as last polled), and answered by this worker when
    # their batch ended.
    batch_collecting: int = 0
    parked: int = 0
    batch_waiting: int = 0
    batch_answered: int = 0
    pauses: int = 0
    committed: dict[tuple[str, int], int] = field(default_factory=dict)


class HeldRecords:
    """Counts the records held (in WorkerStats) and tells the offset tracker when
    one is finished, so that its partition's offset can move past it."""

    def __init__(self, stats: WorkerStats, offsets: OffsetTracker) -> None:
        self.stats = stats
        self.offsets = offsets
        self._held: dict[int, HeldRecord] = {}  # by id(): every record held now

    def hold(self, message: Message, epoch: int | None, span: Span) -> HeldRecord:
        self.stats.consumed += 1
        self.stats.in_flight += 1
        self.stats.peak_in_flight = max(self.stats.peak_in_flight, self.stats.in_flight)
        record = HeldRecord(message, epoch, span=span)
        record.size = len(message.value() or b"") + len(message.key() or b"")
        self.stats.in_flight_bytes += record.size
        self.stats.peak_in_flight_bytes = max(self.stats.peak_in_flight_bytes,
                                              self.stats.in_flight_bytes)
        self._held[id(record)] = record
        return record

    def stalled(self, grace: float, now: float | None = None) -> list[HeldRecord]:
        """The records whose turn came and that are past their deadline by more than
        `grace` seconds: their lane (or their delivery) makes no progress."""
        now = time.time() if now is None else now
        return [record for record in self._held.values() if record.stalled(now, grace)]

    def oldest_age(self, now: float | None = None) -> float:
        """Seconds the longest-held record has been held (0 when none is)."""
        now = time.time() if now is None else now
        oldest = next(iter(self._held.values()), None)  # held in fetch order
        return max(0.0, now - oldest.held_at) if oldest is not None else 0.0

    def collect_for_batch(self, record: HeldRecord) -> None:
        """The record goes into a batch (then it is parked): while its batch is
        collected it takes no slot of MAX_IN_FLIGHT from the requests answered now."""
        record.batched = True
        self.stats.in_flight -= 1
        self.stats.batch_collecting += 1

    def park(self, record: HeldRecord) -> None:
        """Parked in a Batch API batch (recorded in the store): finished without a
        response; whichever replica sees its batch end produces it."""
        self.stats.parked += 1
        record.span.set_attribute("chater.parked_in_batch", True)
        self.finish(record)

    def is_current(self, record: HeldRecord) -> bool:
        """False once the record's partition was revoked or lost."""
        return self.offsets.is_current(record.partition, record.epoch)

    def finish(self, record: HeldRecord) -> None:
        """Answered and all it produced delivered: its offset may be committed."""
        self._release(record)
        self.offsets.finish(record.partition, record.message.offset(), record.epoch)
        record.span.end()

    def drop(self, record: HeldRecord) -> None:
        """Work of a partition taken away by a rebalance: its new owner answers it."""
        self.stats.dropped += 1
        self._release(record)
        record.span.set_attribute("chater.dropped", True)
        record.span.end()

    def _release(self, record: HeldRecord) -> None:
        if self._held.pop(id(record), None) is not None:
            self.stats.in_flight_bytes -= record.size
        if record.batched:
            self.stats.batch_collecting -= 1
        else:
            self.stats.in_flight -= 1


def usable(message: Message) -> bool:
    """A record rather than an error event (end of partition, say)."""
    error = message.error()
    if error is None:
        return True
    if error.code() != KafkaError._PARTITION_EOF:
        log.warning("consume error: %s", error)
    return False


def trace_context(message: Message) -> otel_context.Context:
    """The producer's trace context, when the record's headers carry one (W3C)."""
    return propagate.extract({
        name.lower(): value.decode("latin-1")
        for name, value in message.headers() or []
        if isinstance(value, bytes)
    })


def produced_at(message: Message, now: float) -> float:
    """When the record was produced (epoch seconds), or `now` if it carries no time."""
    kind, millis = message.timestamp()
    return millis / 1000 if kind != TIMESTAMP_NOT_AVAILABLE and millis > 0 else now
