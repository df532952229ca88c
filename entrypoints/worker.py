"""The Kafka worker: `gpt-send` in, the chat use case, `gpt-response` out.

Records stream in; those of different conversations are answered concurrently,
those of one conversation one after another in the order they were fetched.
At most MAX_IN_FLIGHT records are held: beyond that the worker pauses its
partitions (backpressure) and keeps polling, so the group does not evict it.
Per partition, only the offset below which every record is answered and its
response delivered is committed (at-least-once). A record fetched again after a
crash or a rebalance is answered from the event store, not by the model.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from eventsourcing.persistence import PersistenceError
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode

from adapters.dead_letters import SEALED_HEADER, SEALED_WITH, DeadLetterSeal
from adapters.kafka import consumer_config, ensure_topics, producer_config
from adapters.kafka_offsets import OffsetTracker
from application.chat import ChatService, rejection
from application.contract import (
    ChatRequest,
    ChatResponse,
    InvalidRequest,
    Usage,
    parse_request,
    request_id_of,
)
from application.ports import Clock, Metrics
from application.privacy import Privacy
from application.usage import user_hash
from domain.conversation import conversation_id
from entrypoints.settings import Settings

log = logging.getLogger(__name__)
_T = TypeVar("_T")
# One line per request at INFO: who (hashed), which model, tokens, time, outcome.
request_log = logging.getLogger("chater_gpt.requests")

# Unexpected errors (not the store being down) are retried this often before the
# request gets an `internal_error` response, so that one bad record cannot wedge
# its conversation forever.
UNEXPECTED_ERROR_ATTEMPTS = 3
STORE_RETRY_MAX_DELAY = 10.0
COMMIT_INTERVAL = 0.2
POLL_TIMEOUT = 0.1
RESUME_FRACTION = 0.75
DELIVERY_ATTEMPTS = 5
REVOKE_GRACE_MAX = 10.0
LAG_REPORT_INTERVAL_MS = 5000


@dataclass
class _Record:
    """One fetched record on its way through the worker."""

    message: Message
    epoch: int | None
    request: ChatRequest | None = None
    deliveries: int = 0
    answering: asyncio.Task[ChatResponse] | None = None
    # Waiting for a Batch API batch (hours, maybe): counted apart from MAX_IN_FLIGHT.
    batched: bool = False
    # From consume to the last delivery of what it produced (W3C trace context).
    span: Span = INVALID_SPAN

    @property
    def partition(self) -> tuple[str, int]:
        return (self.message.topic(), self.message.partition())


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
    batch_waiting: int = 0
    pauses: int = 0
    committed: dict[tuple[str, int], int] = field(default_factory=dict)


class _Stopping(Exception):
    """The worker is stopping while this record waits for the store."""


class _GaveUp(Exception):
    """Work failed unexpectedly too often; the message names the last error's type."""


class WorkerFailed(RuntimeError):
    """The worker stopped on an error it cannot recover from; a restart is needed."""


class KafkaWorker:
    def __init__(
        self,
        service: ChatService,
        settings: Settings,
        clock: Clock,
        metrics: Metrics | None = None,
        tracer: trace.Tracer | None = None,
        privacy: Privacy | None = None,
        model_label: Callable[[str], str] = lambda model: model,
    ) -> None:
        self.model_label = model_label
        self.service = service
        self.privacy = privacy
        assert settings.SECRET_KEY is not None  # validated
        self._seal = DeadLetterSeal(settings.SECRET_KEY.get_secret_value())
        self._retention: asyncio.Task[None] | None = None
        self._last_retention = float("-inf")
        self.settings = settings
        self.clock = clock
        self.metrics = metrics
        self.tracer = tracer or trace.get_tracer(__name__)
        self.stats = WorkerStats()
        # Set from librdkafka's callback thread once partitions are assigned.
        self.assigned = threading.Event()
        self._offsets = OffsetTracker()
        self._queues: dict[str, deque[_Record]] = {}
        self._runners: set[asyncio.Task[None]] = set()
        self._paused = False
        self._stop = asyncio.Event()
        # The consumer waits in a thread of its own, so that its polls never
        # queue behind (or hold up) the store's work in the default executor.
        self._polling = ThreadPoolExecutor(1, thread_name_prefix="kafka-poll")
        self._fatal: BaseException | None = None
        self._producer: Producer | None = None
        # Consumer lag per partition, as librdkafka's statistics last reported it.
        self._lag: dict[str, int] = {}

    # Lifecycle ------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set, then finish what is in flight and commit."""
        self._stop = stop
        self._loop = asyncio.get_running_loop()
        settings = self.settings
        if settings.CREATE_TOPICS:
            await asyncio.to_thread(
                ensure_topics,
                settings.BOOTSTRAP_SERVER,
                [settings.REQUEST_TOPIC, settings.RESPONSE_TOPIC, settings.DLQ_TOPIC],
                settings.TOPIC_PARTITIONS,
            )
            if self.privacy is not None:
                await asyncio.to_thread(ensure_topics, settings.BOOTSTRAP_SERVER, [settings.ERASE_TOPIC])
        consumer = Consumer({
            **consumer_config(settings.BOOTSTRAP_SERVER, settings.CONSUMER_GROUP),
            "on_commit": self._on_commit,
            "statistics.interval.ms": LAG_REPORT_INTERVAL_MS,
            "stats_cb": self._on_statistics,
        })
        self._producer = Producer(producer_config(settings.BOOTSTRAP_SERVER))
        consumer.subscribe(
            [settings.REQUEST_TOPIC],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        log.info(
            "worker consuming %s as group %s", settings.REQUEST_TOPIC, settings.CONSUMER_GROUP
        )
        deliveries = asyncio.create_task(self._serve_deliveries())
        erasures = asyncio.create_task(self._serve_erasures()) if self.privacy else None
        try:
            last_commit = time.monotonic()
            loop = asyncio.get_running_loop()
            while not stop.is_set():
                self._apply_backpressure(consumer)
                for message, epoch in await loop.run_in_executor(self._polling, self._fetch, consumer):
                    self._dispatch(message, epoch)
                if time.monotonic() - last_commit >= COMMIT_INTERVAL:
                    self._commit(consumer, asynchronous=True)
                    await self.service.housekeeping()
                    self._schedule_retention()
                    last_commit = time.monotonic()
        finally:
            deliveries.cancel()  # the final flush serves the last delivery callbacks
            for task in (erasures, self._retention):
                if task is not None:
                    await asyncio.wait({task})
            await self._shut_down(consumer)
        if self._fatal is not None:
            raise WorkerFailed("the worker stopped after an unexpected error") from self._fatal

    async def _serve_deliveries(self) -> None:
        """Run delivery callbacks on this loop often, also while a fetch is waiting."""
        while True:
            self._producer.poll(0)
            await asyncio.sleep(0.01)

    def _fail(self, error: BaseException) -> None:
        """Stop the worker: what is not committed is fetched again by its successor."""
        if self._fatal is None:
            self._fatal = error
        self._stop.set()

    async def _shut_down(self, consumer: Consumer) -> None:
        if self._runners:
            log.info("finishing %d conversations in flight", len(self._runners))
            _, late = await asyncio.wait(
                set(self._runners), timeout=self.settings.SHUTDOWN_TIMEOUT
            )
            for task in late:  # their records stay uncommitted and are fetched again
                task.cancel()
            if late:
                await asyncio.wait(late)
        self._producer.flush(10)
        self._commit(consumer, asynchronous=False)
        await asyncio.get_running_loop().run_in_executor(self._polling, consumer.close)
        self._polling.shutdown()
        self._producer = None  # librdkafka clients stop when their last reference goes
        await self.service.close()
        log.info("worker stopped")

    # Privacy --------------------------------------------------------------------

    def _schedule_retention(self) -> None:
        """Every RETENTION_INTERVAL (and at start), destroy the data keys of content
        older than RETENTION_DAYS, in a thread; never two runs at once."""
        if self.privacy is None or (self._retention is not None and not self._retention.done()):
            return
        if time.monotonic() - self._last_retention < self.settings.RETENTION_INTERVAL:
            return
        self._last_retention = time.monotonic()
        self._retention = asyncio.create_task(self._run_retention())

    async def _run_retention(self) -> None:
        assert self.privacy is not None
        try:
            await self.privacy.expire_content(self.settings.RETENTION_DAYS)
        except Exception as error:  # the store is down, say: the next run does it
            log.warning("retention run failed (%s); trying again in %.0fs",
                        type(error).__name__, self.settings.RETENTION_INTERVAL)

    async def _serve_erasures(self) -> None:
        """Erasure requests from ERASE_TOPIC, in a consumer group of their own (so
        that their partition never takes a replica's share of the requests), one
        at a time, committed once done; an erasure done twice changes nothing."""
        settings = self.settings
        consumer = Consumer(consumer_config(
            settings.BOOTSTRAP_SERVER, f"{settings.CONSUMER_GROUP}-erase"
        ))
        consumer.subscribe([settings.ERASE_TOPIC])
        polling = ThreadPoolExecutor(1, thread_name_prefix="kafka-erase")
        loop = asyncio.get_running_loop()
        try:
            while not self._stop.is_set():
                message = await loop.run_in_executor(polling, consumer.poll, POLL_TIMEOUT * 5)
                if message is None or not self._usable(message):
                    continue
                if await self._erase(message):
                    try:
                        consumer.commit(message=message, asynchronous=False)
                    except KafkaException as error:  # fetched again: done again, harmlessly
                        log.warning("erasure offset not committed: %s", error)
        finally:
            await loop.run_in_executor(polling, consumer.close)
            polling.shutdown()

    async def _erase(self, message: Message) -> bool:
        """One erasure request: the user's conversations get a UserErased event and
        their data keys are destroyed. Waits out a store outage; False if stopped."""
        assert self.privacy is not None
        with self.tracer.start_as_current_span(
            f"process {message.topic()}", context=self._trace_context(message),
            kind=SpanKind.CONSUMER,
        ) as span:
            try:
                request = json.loads(message.value() or b"")
                email, requested_by = request["user_email"], request.get("requested_by") or "user"
                if not isinstance(email, str) or not isinstance(requested_by, str):
                    raise TypeError("user_email and requested_by must be strings")
            except (ValueError, KeyError, TypeError, AttributeError) as error:
                log.warning("unreadable erasure request at offset %d", message.offset())
                self._dead_letter_erasure(message, f"not an erasure request: {type(error).__name__}")
                return True
            try:
                erasure = await self._persevere(
                    "erasing a user", lambda: self.privacy.erase_user(email, requested_by)
                )
            except _Stopping:
                return False  # fetched again by whoever runs next
            except _GaveUp as error:  # a bug, say: set aside
                self._dead_letter_erasure(message, f"erasure failed: {error}")
                return True
            span.set_attribute("chater.erased_conversations", len(erasure.conversation_ids))
            return True

    # Health ---------------------------------------------------------------------

    def alive(self) -> bool:
        """False once the worker stopped on an error it cannot recover from."""
        return self._fatal is None

    def probe_broker(self, timeout: float) -> int:
        """Ask the cluster for the request topic's metadata; the number of brokers.

        Raises KafkaException when no broker answers within `timeout` seconds.
        """
        producer = self._producer
        if producer is None:
            raise KafkaException(KafkaError(KafkaError._STATE, "the worker is not running"))
        metadata = producer.list_topics(self.settings.REQUEST_TOPIC, timeout=timeout)
        return len(metadata.brokers)

    def queue_depth(self) -> dict[str, Any]:
        """Records held now, the limit, whether fetching is paused, and consumer lag."""
        return {
            "in_flight": self.stats.in_flight,
            "max_in_flight": self.settings.MAX_IN_FLIGHT,
            "batch_waiting": self.stats.batch_waiting,
            "paused": self._paused,
            "consumer_lag": dict(self._lag),
        }

    def _on_statistics(self, report: str) -> None:
        """librdkafka's periodic statistics: keep the lag of the partitions we own.

        Lag comes from the broker's high watermark; embedded test brokers may
        report wrong watermarks, so tests check what was fetched and answered.
        """
        lag = {}
        for topic, about in json.loads(report).get("topics", {}).items():
            for number, partition in about.get("partitions", {}).items():
                if int(number) >= 0 and partition.get("consumer_lag", -1) >= 0:
                    lag[f"{topic}[{number}]"] = partition["consumer_lag"]
        self._lag = lag

    # Fetching -------------------------------------------------------------------

    def _fetch(self, consumer: Consumer) -> list[tuple[Message, int | None]]:
        """Wait briefly for one record, then take what else is ready (room allowing).

        Each record is tagged with its partition's assignment at once, in this
        thread: a rebalance inside the next call must not make it look current.
        """
        first = consumer.poll(POLL_TIMEOUT)
        if first is None:
            return []
        batch = self._tag([first])
        room = self.settings.MAX_IN_FLIGHT - self.stats.in_flight - 1
        if room > 0:
            batch += self._tag(consumer.consume(min(room, self.settings.MAX_BATCH), 0))
        return batch

    def _tag(self, messages: list[Message]) -> list[tuple[Message, int | None]]:
        return [
            (m, self._offsets.add((m.topic(), m.partition()), m.offset()))
            for m in messages
            if self._usable(m)
        ]

    def _usable(self, message: Message) -> bool:
        error = message.error()
        if error is None:
            return True
        if error.code() != KafkaError._PARTITION_EOF:
            log.warning("consume error: %s", error)
        return False

    def _apply_backpressure(self, consumer: Consumer) -> None:
        in_flight, limit = self.stats.in_flight, self.settings.MAX_IN_FLIGHT
        batched, batch_limit = self.stats.batch_waiting, self.settings.BATCH_MAX_WAITING
        if in_flight >= limit or batched >= batch_limit:
            if not self._paused:
                self.stats.pauses += 1
                log.debug("%d records in flight: pausing fetches", in_flight)
            # Again each time: partitions assigned meanwhile must pause too.
            consumer.pause(consumer.assignment())
            self._paused = True
        elif (
            self._paused
            and in_flight <= limit * RESUME_FRACTION
            and batched <= batch_limit * RESUME_FRACTION
        ):
            consumer.resume(consumer.assignment())
            self._paused = False

    # Rebalance callbacks (the polling thread) -----------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("assigned %s", [f"{p.topic}[{p.partition}]" for p in partitions])
        self._offsets.assign([(p.topic, p.partition) for p in partitions])
        # librdkafka keeps a partition's pause through a revocation or loss and a
        # new assignment: set it to what the worker wants now, or a partition
        # paused before a rebalance would never be fetched again.
        if self._paused:
            consumer.pause(partitions)
        else:
            consumer.resume(partitions)
        self.assigned.set()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("revoked %s", [f"{p.topic}[{p.partition}]" for p in partitions])
        revoked = [(p.topic, p.partition) for p in partitions]
        # Let the records in flight finish first (bounded): their new owner would
        # find them pending and pay the model for them a second time.
        # (When the worker is stopping, its runners have finished or been cancelled.)
        grace = 0.0 if self._stop.is_set() else min(self.settings.SHUTDOWN_TIMEOUT, REVOKE_GRACE_MAX)
        if not self._offsets.wait_finished(revoked, grace) and grace:
            log.warning("records of revoked partitions still in flight after %.0fs", grace)
        commits = self._offsets.revoke(revoked)
        self._commit_offsets(consumer, commits, asynchronous=False)
        self._loop.call_soon_threadsafe(self._abandon)

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if error is not None:
            log.debug("commit not confirmed: %s", error)
            return
        for p in partitions:
            if p.error is None and p.offset >= 0:
                self._offsets.committed((p.topic, p.partition), p.offset)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.warning("lost %s", [f"{p.topic}[{p.partition}]" for p in partitions])
        self._offsets.revoke([(p.topic, p.partition) for p in partitions])
        self._loop.call_soon_threadsafe(self._abandon)

    # Dispatching (the event loop) -----------------------------------------------

    def _dispatch(self, message: Message, epoch: int | None) -> None:
        record = _Record(message, epoch, span=self._start_span(message))
        self.stats.consumed += 1
        self.stats.in_flight += 1
        self.stats.peak_in_flight = max(self.stats.peak_in_flight, self.stats.in_flight)
        try:
            request = parse_request(message.key(), message.value(), self.settings.MAX_REQUEST_BYTES)
            record.request = replace(request, deadline=self._deadline(message, request))
            key = str(conversation_id(record.request.user_email, record.request.conversation_id))
        except InvalidRequest as error:
            self._reject(record, error)
            return
        except Exception:  # never let one record stop the worker
            log.exception("unreadable record at %s[%d]@%d", *record.partition, message.offset())
            self._reject(record, InvalidRequest("the record could not be read", request_id_of(message.key())))
            return
        if self.service.batched(record.request):
            # It waits for its batch, maybe for hours: it must not take a slot of
            # MAX_IN_FLIGHT from the requests answered now.
            record.batched = True
            self.stats.in_flight -= 1
            self.stats.batch_waiting += 1
        record.span.set_attributes({
            "chater.request.kind": "vision" if record.request.images else "text",
            "gen_ai.request.model": self.model_label(self.service.model_for(record.request)),
        })
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
            runner = asyncio.create_task(self._run_conversation(key, queue))
            self._runners.add(runner)
            runner.add_done_callback(self._runners.discard)
        queue.append(record)

    @staticmethod
    def _trace_context(message: Message) -> otel_context.Context:
        """The producer's trace context, when the record's headers carry one (W3C)."""
        return propagate.extract({
            name.lower(): value.decode("latin-1")
            for name, value in message.headers() or []
            if isinstance(value, bytes)
        })

    def _start_span(self, message: Message) -> Span:
        """The request's span, a child of the producer's when its headers carry a
        W3C `traceparent`. No key or content in it unless LOG_CONTENT."""
        attributes: dict[str, Any] = {
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.destination.name": message.topic() or "",
            "messaging.destination.partition.id": str(message.partition()),
            "messaging.kafka.offset": message.offset(),
            "messaging.consumer.group.name": self.settings.CONSUMER_GROUP,
        }
        if self.settings.LOG_CONTENT and message.key() is not None:
            attributes["messaging.kafka.message.key"] = message.key().decode("utf-8", "replace")
        return self.tracer.start_span(
            f"process {message.topic()}",
            context=self._trace_context(message),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        )

    @staticmethod
    def _produced_at(message: Message, now: float) -> float:
        """When the record was produced (epoch seconds), or `now` if it carries no time."""
        kind, millis = message.timestamp()
        return millis / 1000 if kind != TIMESTAMP_NOT_AVAILABLE and millis > 0 else now

    def _deadline(self, message: Message, request: ChatRequest) -> float:
        """REQUEST_DEADLINE (BATCH_DEADLINE for a request answered by the Batch API)
        after the record was produced (or fetched, if it has no time)."""
        now = time.time()
        settings = self.settings
        wait = settings.BATCH_DEADLINE if self.service.batched(request) else settings.REQUEST_DEADLINE
        # A producer clock running ahead must not push the deadline out.
        return min(self._produced_at(message, now), now) + wait

    async def _run_conversation(self, key: str, queue: deque[_Record]) -> None:
        """Answer one conversation's records one after another, in fetch order."""
        try:
            while queue:
                record = queue[0]
                if self._offsets.is_current(record.partition, record.epoch):
                    response = await self._answer_unless_abandoned(record)
                    if response is not None and self._offsets.is_current(record.partition, record.epoch):
                        self._respond(record, response)
                    else:
                        self._drop(record)
                else:
                    self._drop(record)
                queue.popleft()
        except (_Stopping, asyncio.CancelledError):
            for record in queue:
                self._drop(record)
            queue.clear()
        except Exception as error:  # a bug or a fatal producer error: stop, do not wedge
            log.exception("conversation %s failed; stopping the worker", key)
            for record in queue:
                self._drop(record)
            queue.clear()
            self._fail(error)
        finally:
            if self._queues.get(key) is queue:
                del self._queues[key]

    async def _answer_unless_abandoned(self, record: _Record) -> ChatResponse | None:
        """The record's response, or None if its partition was taken away
        while it waited (see `_abandon`)."""
        assert record.request is not None
        # The use case's spans (store, model) are children of the request's.
        token = otel_context.attach(trace.set_span_in_context(record.span))
        try:
            task = record.answering = asyncio.create_task(self._answer(record.request))
        finally:
            otel_context.detach(token)
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:  # the worker is stopping
            task.cancel()
            await asyncio.wait({task})  # what it holds (budget, say) is given back first
            raise
        finally:
            record.answering = None
        return None if task.cancelled() else task.result()

    def _abandon(self) -> None:
        """Stop answering records whose partition was revoked or lost.

        A record can wait long (an open circuit, the rate limit, the budget); once
        its partition is another worker's, that worker answers it, so going on
        would pay the model twice. A reply already received is still recorded
        (the use case shields it), so the new owner finds it answered.
        """
        for queue in self._queues.values():
            record = queue[0] if queue else None
            if (
                record is not None
                and record.answering is not None
                and not self._offsets.is_current(record.partition, record.epoch)
            ):
                assert record.request is not None
                log.info("abandoning %s: its partition is no longer ours", record.request.request_id)
                record.answering.cancel()

    async def _answer(self, request: ChatRequest) -> ChatResponse:
        started = time.perf_counter()
        try:
            return await self._persevere(
                f"answering {request.request_id}", lambda: self.service.handle(request)
            )
        except _GaveUp:
            return rejection(
                "internal_error", "The service could not answer this request.", self.clock, started
            )

    async def _persevere(self, doing: str, work: Callable[[], Awaitable[_T]]) -> _T:
        """Do `work`, waiting out a store outage for as long as it lasts; raises _GaveUp
        after UNEXPECTED_ERROR_ATTEMPTS unexpected errors, _Stopping when the worker
        stops meanwhile."""
        attempt = 0
        delay = 0.5
        while True:
            attempt += 1
            try:
                return await work()
            except PersistenceError as error:
                # The store is down: wait for it rather than lose or fail the work.
                log.warning("event store unavailable (%s); retrying in %.1fs", error, delay)
            except Exception as error:
                log.exception("unexpected error %s (attempt %d)", doing, attempt)
                if attempt >= UNEXPECTED_ERROR_ATTEMPTS:
                    raise _GaveUp(type(error).__name__) from error
            if self._stop.is_set():
                raise _Stopping
            await asyncio.sleep(delay)
            delay = min(delay * 2, STORE_RETRY_MAX_DELAY)

    # Producing ------------------------------------------------------------------

    def _respond(self, record: _Record, response: ChatResponse) -> None:
        assert record.request is not None
        if response.ok:
            self.stats.answered += 1
        else:
            self.stats.errors += 1
        self._measure(record, response)
        key = record.message.key() or record.request.request_id.encode()
        self._send(record, self.settings.RESPONSE_TOPIC, key, response.encode())

    def _reject(self, record: _Record, error: InvalidRequest) -> None:
        message = record.message
        self.stats.errors += 1
        self.stats.dead_lettered += 1
        log.warning(
            "invalid record %s[%d]@%d: %s",
            message.topic(), message.partition(), message.offset(), error.message,
        )
        headers = _dead_letter_headers(message, error.message)
        key = message.key() or (error.request_id.encode() if error.request_id else None)
        # Counted before either is sent, so that the first delivery cannot finish the record.
        record.deliveries += 1
        response = rejection("invalid_request", error.message, self.clock, time.perf_counter())
        self._measure(record, response)
        if key is not None:
            self._send(record, self.settings.RESPONSE_TOPIC, key, response.encode())
        else:
            log.warning("invalid record has no key: no error response can be matched to it")
        self._send(record, self.settings.DLQ_TOPIC, message.key(), self._sealed(message), headers)
        record.deliveries -= 1
        if record.deliveries == 0:
            self._finish(record)

    def _dead_letter_erasure(self, message: Message, reason: str) -> None:
        """An erasure request that cannot be carried out: to the DLQ, sealed."""
        trace.get_current_span().set_status(Status(StatusCode.ERROR, reason))
        self.stats.dead_lettered += 1
        self._produce(self.settings.DLQ_TOPIC, message.key(), self._sealed(message),
                      _dead_letter_headers(message, reason), _log_delivery_failure)

    def _sealed(self, message: Message) -> bytes | None:
        """The record's original bytes, encrypted: they may hold anything a user wrote."""
        value = message.value()
        return None if value is None else self._seal.seal(value)

    def _measure(self, record: _Record, response: ChatResponse) -> None:
        """One response for the metrics and the log: outcome, model, kind, time
        since produced, tokens. No message text or e-mail address unless LOG_CONTENT."""
        try:
            self._account(record, response)
        except Exception:  # telemetry must never stop a response
            log.exception("could not record metrics for a response")

    def _account(self, record: _Record, response: ChatResponse) -> None:
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
            "seconds": now - self._produced_at(record.message, now),
        }
        source = "cached" if response.shared else "batch" if response.source == "batch" else "model"
        if self.metrics is not None:
            self.metrics.request_finished(**figures)
            if response.ok:
                self.metrics.reply_served(source=source)
        span = record.span
        span.set_attributes({
            "chater.outcome": figures["outcome"],
            "gen_ai.response.model": model,
            "gen_ai.usage.input_tokens": usage.prompt_tokens,
            "gen_ai.usage.output_tokens": usage.completion_tokens,
        })
        if response.cost_usd is not None:
            span.set_attribute("chater.cost_usd", response.cost_usd)
        if not response.ok:
            span.set_attribute("error.type", figures["outcome"])
            span.set_status(Status(StatusCode.ERROR, figures["outcome"]))
        if request_log.isEnabledFor(logging.INFO):
            line = {
                "key": request.request_id if request else request_id_of(record.message.key()),
                "user": self._user_hash(request.user_email) if request else None,
                **{name: value for name, value in figures.items() if name != "seconds"},
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "latency_ms": round(figures["seconds"] * 1000, 1),
                # The request's trace, for finding it in the tracing backend.
                "trace_id": trace.format_trace_id(span.get_span_context().trace_id),
            }
            if response.ok:  # answered: priced, or plainly marked as not
                line["source"] = source
                line["cost_usd"] = response.cost_usd
                if line["cost_usd"] is None:
                    line["unpriced"] = True
            if self.settings.LOG_CONTENT and request is not None:
                line.update(user_email=request.user_email, message_text=request.message)
            request_log.info("request done", extra=line)

    def _user_hash(self, email: str) -> str:
        """The user as the usage report shows them: an HMAC of the address."""
        assert self.settings.SECRET_KEY is not None
        return user_hash(self.settings.SECRET_KEY.get_secret_value(), email)

    def _send(
        self,
        record: _Record,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Produce; the record is finished once everything it produced is delivered.

        Each record produced carries the `traceparent` of its own send span.
        """

        attempts = 1
        span = self.tracer.start_span(
            f"send {topic}",
            context=trace.set_span_in_context(record.span),
            kind=SpanKind.PRODUCER,
            attributes={"messaging.system": "kafka", "messaging.destination.name": topic,
                        "messaging.operation.type": "send"},
        )
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        headers = [*(headers or []), *((name, value.encode()) for name, value in carrier.items())]

        def delivered(error: KafkaError | None, _message: Message) -> None:
            nonlocal attempts
            if error is not None:
                if attempts >= DELIVERY_ATTEMPTS or error.fatal():
                    log.error("delivery to %s failed %d times (%s)", topic, attempts, error)
                    span.set_status(Status(StatusCode.ERROR, str(error.code())))
                    span.end()
                    self._fail(KafkaException(error))
                    return
                attempts += 1
                log.warning("delivery to %s failed (%s); sending again", topic, error)
                self._produce(topic, key, value, headers, delivered)
                return
            span.end()
            record.deliveries -= 1
            if record.deliveries == 0:
                self._finish(record)

        record.deliveries += 1
        try:
            self._produce(topic, key, value, headers, delivered)
        except KafkaException as error:
            if topic != self.settings.DLQ_TOPIC:
                span.end()
                raise
            # Too large for the broker, say: keep the evidence that can be kept.
            log.error("dead-lettering the original bytes failed (%s); sending headers only", error)
            omitted = [*headers, ("value_omitted", str(error).encode())]
            self._produce(topic, key, None, omitted, delivered)

    def _produce(self, topic, key, value, headers, on_delivery) -> None:  # type: ignore[no-untyped-def]
        while True:
            try:
                self._producer.produce(topic, value, key, headers=headers, on_delivery=on_delivery)
                self._producer.poll(0)
                return
            except BufferError:
                self._producer.poll(0.05)  # the local queue is full: let deliveries drain

    def _release(self, record: _Record) -> None:
        if record.batched:
            self.stats.batch_waiting -= 1
        else:
            self.stats.in_flight -= 1

    def _finish(self, record: _Record) -> None:
        self._release(record)
        self._offsets.finish(record.partition, record.message.offset(), record.epoch)
        record.span.end()

    def _drop(self, record: _Record) -> None:
        """Work of a partition taken away by a rebalance: its new owner answers it."""
        self.stats.dropped += 1
        self._release(record)
        record.span.set_attribute("chater.dropped", True)
        record.span.end()

    # Offsets --------------------------------------------------------------------

    def _commit(self, consumer: Consumer, asynchronous: bool) -> None:
        self._commit_offsets(consumer, self._offsets.to_commit(), asynchronous)

    def _commit_offsets(
        self, consumer: Consumer, commits: list[tuple[tuple[str, int], int]], asynchronous: bool
    ) -> None:
        if not commits:
            return
        offsets = [TopicPartition(topic, partition, offset) for (topic, partition), offset in commits]
        try:
            consumer.commit(offsets=offsets, asynchronous=asynchronous)
        except KafkaException as error:
            if error.args[0].code() != KafkaError._NO_OFFSET:
                # Typically a rebalance took the partition away: its new owner
                # fetches the records again and answers them from the event store.
                log.warning("offset commit failed: %s", error)
            return
        for (topic, partition), offset in commits:
            self.stats.committed[(topic, partition)] = offset
            if not asynchronous:
                self._offsets.committed((topic, partition), offset)


def _dead_letter_headers(message: Message, reason: str) -> list[tuple[str, bytes]]:
    return [
        (SEALED_HEADER, SEALED_WITH),
        ("error_type", b"invalid_request"),
        ("reason", reason.encode()),
        ("source_topic", (message.topic() or "").encode()),
        ("source_partition", str(message.partition()).encode()),
        ("source_offset", str(message.offset()).encode()),
    ]


def _log_delivery_failure(error: KafkaError | None, _message: Message) -> None:
    if error is not None:
        log.error("dead letter of an erasure request not delivered: %s", error)
