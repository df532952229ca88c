"""The consumer loop: fetch, hand each record to the intake, pause fetching when
full, commit what is finished; the rebalance callbacks; start and shutdown."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition
from opentelemetry import trace

from adapters.kafka import consumer_config
from adapters.kafka_offsets import OffsetTracker
from application.chat import ChatService
from application.contract import ChatResponse
from application.ports import Clock, Metrics
from application.privacy import Privacy
from entrypoints.settings import Settings
from entrypoints.worker.batch_completions import BatchCompletions
from entrypoints.worker.conversation_lanes import ConversationLanes
from entrypoints.worker.erasure_listener import ErasureListener
from entrypoints.worker.handover import Forwarded
from entrypoints.worker.held_records import HeldRecord, HeldRecords, WorkerStats, usable
from entrypoints.worker.offset_commits import OffsetCommits
from entrypoints.worker.persevere import GaveUp
from entrypoints.worker.repartitioner import Repartitioner
from entrypoints.worker.request_accounting import RequestAccounting
from entrypoints.worker.request_intake import RequestIntake
from entrypoints.worker.responder import Responder
from entrypoints.worker.retention_runs import RetentionRuns
from entrypoints.worker.topics import prepare_topics

log = logging.getLogger(__name__)

COMMIT_INTERVAL = 0.2
REPARTITION_STOP_TIMEOUT = 15.0
POLL_TIMEOUT = 0.1
RESUME_FRACTION = 0.75
# The revoke grace is SHUTDOWN_TIMEOUT, but at most this share of max.poll.interval.ms:
# the revoke callback holds the poll thread, and a consumer that does not poll within
# that interval leaves the group.
REVOKE_GRACE_SHARE_OF_POLL_INTERVAL = 0.5
STALL_MARGIN = 60.0
LAG_REPORT_INTERVAL_MS = 5000
COMMITTED_TIMEOUT = 5.0  # seconds for the committed offsets of partitions assigned


def revoke_grace(settings: Settings) -> float:
    """Seconds a revoked partition's records in flight get to finish, answered and
    committed by this worker, before the partition goes: SHUTDOWN_TIMEOUT (what a
    pod stopping gives them too), at most half of max.poll.interval.ms, since
    the poll thread waits meanwhile (the group's rebalance does too)."""
    config = consumer_config(settings.KAFKA, settings.answering_group)
    poll_interval = float(config.get("max.poll.interval.ms", 300_000)) / 1000
    return max(min(settings.SHUTDOWN_TIMEOUT, poll_interval * REVOKE_GRACE_SHARE_OF_POLL_INTERVAL), 0.0)


class WorkerFailed(RuntimeError):
    """The worker stopped on an error it cannot recover from; a restart is needed."""


def _unlabelled(model: str) -> str:
    return model


class KafkaWorker:
    """`gpt-send` in, the chat use case, `gpt-response` out (see the package's doc)."""

    def __init__(
        self,
        service: ChatService,
        settings: Settings,
        clock: Clock,
        metrics: Metrics | None = None,
        tracer: trace.Tracer | None = None,
        privacy: Privacy | None = None,
        model_label: Callable[[str], str] = _unlabelled,
    ) -> None:
        self.service = service
        self.settings = settings
        self.clock = clock
        self.stats = WorkerStats()
        # Set from librdkafka's callback thread once partitions are assigned.
        self.assigned = threading.Event()
        tracer = tracer or trace.get_tracer(__name__)
        self._offsets = OffsetTracker()
        self._held = HeldRecords(self.stats, self._offsets)
        self._commits = OffsetCommits(self._offsets, self.stats)
        self._accounting = RequestAccounting(service, settings, self.stats, tracer, metrics, model_label)
        self._responder = Responder(settings, self._held, tracer, self._fail)
        self._batch_completions = BatchCompletions(
            service, settings, self._responder, self.stats, self._stopping, metrics, model_label
        )
        self._lanes = ConversationLanes(
            service, self._held, self._respond, self._stopping, self._fail,
            self._unanswerable, settings.ORDER_WINDOW,
        )
        self._intake = RequestIntake(
            service, settings, clock, self._held, self._accounting, self._lanes, self._responder
        )
        self._repartitioner = Repartitioner(settings, self._fail_from_thread)
        self._privacy = privacy
        self._erasures: ErasureListener | None = None
        self._retention: RetentionRuns | None = None
        if privacy is not None:
            self._erasures = ErasureListener(privacy, settings, self._responder, tracer, self._stopping)
            self._retention = RetentionRuns(privacy, settings)
        self._paused = False
        self._stop = asyncio.Event()
        # The consumer waits in a thread of its own, so that its polls never
        # queue behind (or hold up) the store's work in the default executor.
        self._polling = ThreadPoolExecutor(1, thread_name_prefix="kafka-poll")
        self._fatal: BaseException | None = None
        # Consumer lag per partition, as librdkafka's statistics last reported it.
        self._lag: dict[str, int] = {}
        self._backlog: dict[tuple[str, int], dict[str, int]] = {}

    # Lifecycle ------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set, then finish what is in flight and commit."""
        self._stop = stop
        self._loop = asyncio.get_running_loop()
        await self._prepare_topics()
        self._responder.open()
        consumer = self._subscribe()
        deliveries = asyncio.create_task(self._responder.serve_deliveries())
        repartitioning = self._repartitioner.start()
        erasures = asyncio.create_task(self._erasures.serve()) if self._erasures is not None else None
        # Parked batch requests' answers, produced by whichever replica records them.
        completions = (
            asyncio.create_task(self._batch_completions.serve())
            if self._batch_completions.active else None
        )
        try:
            last_commit = time.monotonic()
            while not stop.is_set():
                self._apply_backpressure(consumer)
                for message, epoch in await self._loop.run_in_executor(
                    self._polling, self._fetch, consumer
                ):
                    self._intake.take(message, epoch)
                if time.monotonic() - last_commit >= COMMIT_INTERVAL:
                    await self._between_fetches(consumer)
                    last_commit = time.monotonic()
        finally:
            self._repartitioner.stop()
            if completions is not None:  # an answer recorded, not delivered: see DELIVERY_GRACE
                completions.cancel()
                await asyncio.wait({completions})
            deliveries.cancel()  # the final flush serves the last delivery callbacks
            if erasures is not None:
                await asyncio.wait({erasures})
            if self._retention is not None:
                await self._retention.finish()
            await self._shut_down(consumer)
            # Its last transaction ends or is cut short within a few seconds.
            await asyncio.wait({repartitioning}, timeout=REPARTITION_STOP_TIMEOUT)
        if self._fatal is not None:
            raise WorkerFailed("the worker stopped after an unexpected error") from self._fatal

    async def _prepare_topics(self) -> None:
        requests = await prepare_topics(self.settings, erasures=self._erasures is not None)
        if requests == 1:
            # All turns come by way of one partition, in the order produced: no need to wait.
            self._lanes.order_window = 0.0

    def _subscribe(self) -> Consumer:
        settings = self.settings
        consumer = Consumer({
            **consumer_config(settings.KAFKA, settings.answering_group, settings.prefetch_bytes),
            "on_commit": self._commits.on_commit,
            "statistics.interval.ms": LAG_REPORT_INTERVAL_MS,
            "stats_cb": self._on_statistics,
        })
        consumer.subscribe(
            [settings.repartition_topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        log.info("worker handing %s over to %s as group %s, answering it as group %s",
                 settings.REQUEST_TOPIC, settings.repartition_topic, settings.CONSUMER_GROUP,
                 settings.answering_group)
        return consumer

    async def _between_fetches(self, consumer: Consumer) -> None:
        """Every COMMIT_INTERVAL: commit, the use case's housekeeping, other
        replicas' erasures, retention."""
        self._commits.commit(consumer, asynchronous=True)
        await self.service.housekeeping()
        if self._privacy is not None:
            await self._privacy.follow_erasures()
        if self._retention is not None:
            self._retention.start_if_due()

    def _respond(self, record: HeldRecord, response: ChatResponse) -> None:
        """A lane's answer to a record whose partition is still ours (none for a
        request parked in a batch: its record is finished now)."""
        if response.parked:
            self._held.park(record)
            return
        self._accounting.account_for(record, response)
        self._responder.respond(record, response)

    def _unanswerable(self, record: HeldRecord, error: Exception) -> None:
        """A record that failed unexpectedly: an internal_error response and a dead
        letter saying which error (never what it said), instead of a worker stopped
        on it again and again."""
        response = ChatResponse.rejection(
            "internal_error", "The service could not answer this request.",
            self.clock.now(), time.perf_counter(),
        )
        self._accounting.account_for(record, response)
        cause = str(error) if isinstance(error, GaveUp) else type(error).__name__
        self._responder.respond(record, response, dead_letter=f"the record could not be answered: {cause}")

    def _stopping(self) -> bool:
        return self._stop.is_set()

    def _fail_from_thread(self, error: BaseException) -> None:
        self._loop.call_soon_threadsafe(self._fail, error)

    def _fail(self, error: BaseException) -> None:
        """Stop the worker: what is not committed is fetched again by its successor."""
        if self._fatal is None:
            self._fatal = error
        self._stop.set()

    async def _shut_down(self, consumer: Consumer) -> None:
        await self._lanes.finish(self.settings.SHUTDOWN_TIMEOUT)
        self._responder.flush(10)
        self._commits.commit(consumer, asynchronous=False)
        await asyncio.get_running_loop().run_in_executor(self._polling, consumer.close)
        self._polling.shutdown()
        self._responder.close()
        await self.service.close()
        log.info("worker stopped")

    # Health ---------------------------------------------------------------------

    def alive(self) -> bool:
        """False once the worker stopped on an error it cannot recover from."""
        return self._fatal is None

    def stalled(self) -> list[HeldRecord]:
        """Records being answered (or delivered) for longer than any request may
        take: past their deadline, or the moment their turn came if that was
        later, by more than STALL_GRACE (by default every attempt of a model call
        and of its fallback at TIMEOUT, and a minute to record it). A lane whose
        head is one makes no progress; records queued behind a head are not
        counted."""
        settings = self.settings
        grace = settings.STALL_GRACE or (
            settings.TIMEOUT * (settings.MAX_RETRIES + 1) * 2 + STALL_MARGIN
        )
        return self._held.stalled(grace)

    def probe_broker(self, timeout: float) -> int:
        """The number of brokers that answered for the request topic within `timeout`
        seconds; raises KafkaException when none did (or the worker is not running)."""
        return self._responder.probe_broker(self.settings.REQUEST_TOPIC, timeout)

    def queue_depth(self) -> dict[str, Any]:
        """Records held now, the limit, whether fetching is paused, consumer lag,
        and the records that make no progress (with the age of the oldest held)."""
        return {
            "stalled": len(self.stalled()),
            "oldest_held_seconds": round(self._held.oldest_age(), 1),
            "in_flight": self.stats.in_flight,
            "max_in_flight": self.settings.MAX_IN_FLIGHT,
            "batch_waiting": self.stats.batch_waiting,
            "batch_parked_here": self.stats.parked,
            "batch_collecting": self.stats.batch_collecting,
            "paused": self._paused,
            "handed_over": self._repartitioner.handed_over,
            "consumer_lag": dict(self._lag),
        }

    def erasure_health(self) -> dict[str, Any] | None:
        """The erasure consumer's status (ErasureListener.status); None without one."""
        return None if self._erasures is None else self._erasures.status()

    def _on_statistics(self, report: str) -> None:
        """librdkafka's periodic statistics: keep the lag of the partitions we own.

        Lag comes from the broker's high watermark; embedded test brokers may
        report wrong watermarks, so tests check what was fetched and answered.
        """
        lag, backlog = {}, {}
        for topic, about in json.loads(report).get("topics", {}).items():
            for number, partition in about.get("partitions", {}).items():
                if int(number) < 0:
                    continue  # librdkafka's internal "unassigned" partition
                if partition.get("consumer_lag", -1) >= 0:
                    lag[f"{topic}[{number}]"] = partition["consumer_lag"]
                backlog[(topic, int(number))] = _backlog_of(partition)
        self._lag = lag
        self._backlog = backlog

    def backlog(self) -> dict[tuple[str, int], dict[str, int]]:
        """(topic, partition) -> records not yet fetched ("unfetched": the high
        watermark less the next offset to fetch) and fetched but not committed
        ("uncommitted": the next offset to fetch less the committed one), as
        librdkafka's last statistics said; a figure it did not know is left out."""
        return dict(self._backlog)

    # Fetching (the polling thread) ----------------------------------------------

    def _fetch(self, consumer: Consumer) -> list[tuple[Forwarded, int | None]]:
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

    def _tag(self, messages: list[Message]) -> list[tuple[Forwarded, int | None]]:
        return [
            (Forwarded(m), self._offsets.add((m.topic(), m.partition()), m.offset()))
            for m in messages
            if usable(m)
        ]

    def _apply_backpressure(self, consumer: Consumer) -> None:
        # Parked batch requests hold nothing here: BATCH_MAX_WAITING sends batch
        # requests beyond it live instead (see ChatService._hold).
        in_flight, limit = self.stats.in_flight, self.settings.MAX_IN_FLIGHT
        held, byte_limit = self.stats.in_flight_bytes, self.settings.in_flight_bytes
        if in_flight >= limit or held >= byte_limit:
            if not self._paused:
                self.stats.pauses += 1
                log.debug("%d records (%d bytes) in flight: pausing fetches", in_flight, held)
            # Again each time: partitions assigned meanwhile must pause too.
            consumer.pause(consumer.assignment())
            self._paused = True
        elif (self._paused and in_flight <= limit * RESUME_FRACTION
              and held <= byte_limit * RESUME_FRACTION):
            consumer.resume(consumer.assignment())
            self._paused = False

    # Rebalance callbacks (the polling thread) -----------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("assigned %s", [f"{p.topic}[{p.partition}]" for p in partitions])
        self._offsets.assign([(p.topic, p.partition) for p in partitions], self._committed(consumer, partitions))
        # librdkafka keeps a partition's pause through a revocation or loss and a
        # new assignment: set it to what the worker wants now, or a partition
        # paused before a rebalance would never be fetched again.
        if self._paused:
            consumer.pause(partitions)
        else:
            consumer.resume(partitions)
        self.assigned.set()

    @staticmethod
    def _committed(consumer: Consumer, partitions: list[TopicPartition]) -> dict[tuple[str, int], int]:
        """The group's committed offsets of newly assigned partitions (where fetching
        begins), so that records never fetched are told in the log; none if the
        broker does not answer at once."""
        if not partitions:
            return {}
        try:
            found = consumer.committed(partitions, timeout=COMMITTED_TIMEOUT)
        except KafkaException as error:
            log.debug("committed offsets not known: %s", error)
            return {}
        return {(p.topic, p.partition): p.offset for p in found if p.error is None and p.offset >= 0}

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("revoked %s", [f"{p.topic}[{p.partition}]" for p in partitions])
        # Let the records in flight finish first (see `revoke_grace`); calls still
        # out after that are left to land (`ConversationLanes.abandon`), and their
        # new owner waits for their outcome instead of paying the model again.
        # (When the worker is stopping, its runners have finished or been cancelled.)
        grace = 0.0 if self._stop.is_set() else revoke_grace(self.settings)
        # A worker told to stop meanwhile stops waiting: its own shutdown gives the
        # calls SHUTDOWN_TIMEOUT, within the pod's termination grace.
        self._commits.commit_revoked(
            consumer, [(p.topic, p.partition) for p in partitions], grace, self._stopping
        )
        self._loop.call_soon_threadsafe(self._lanes.abandon)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.warning("lost %s", [f"{p.topic}[{p.partition}]" for p in partitions])
        self._offsets.revoke([(p.topic, p.partition) for p in partitions])
        self._loop.call_soon_threadsafe(self._lanes.abandon)


def _backlog_of(partition: dict[str, Any]) -> dict[str, int]:
    """A partition's unfetched and uncommitted records, from librdkafka's statistics
    (an offset it does not know is negative: -1001)."""
    high, following, committed = (
        partition.get(name, -1) for name in ("hi_offset", "next_offset", "committed_offset")
    )
    figures = {}
    if high >= 0 and following >= 0:
        figures["unfetched"] = max(high - following, 0)
    if following >= 0 and committed >= 0:
        figures["uncommitted"] = max(following - committed, 0)
    return figures
