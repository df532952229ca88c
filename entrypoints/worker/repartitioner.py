"""The repartition stage: `gpt-send` records re-keyed by conversation onto the
repartition topic, exactly once.

The platform's producers key `gpt-send` by request id, so one conversation's turns
land on different partitions, and so with different replicas. This stage (in every
worker, consumer group CONSUMER_GROUP) hands each record over to the repartition
topic keyed by its conversation, so that the default partitioner puts all of a
conversation's turns on one partition, read by one answering consumer in order.

Handover is transactional (Kafka's exactly-once, KIP-447): the records handed over
and the source offsets they consumed are committed in one transaction. A crash at
any point either hands a record over and commits its offset, or does neither; the
answering stage reads committed transactions only (librdkafka's default
`isolation.level=read_committed`). A record that cannot be read is handed over
under its own key: the answering stage gives it its error response and dead letter,
as before. A record the repartition topic refuses (too large) is handed over
without its value, saying why, and ends there as an error and a dead letter.

It runs in a thread of its own: librdkafka's calls block, and it never waits for
the event loop.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from adapters.kafka import consumer_config, producer_config
from application.contract import parse_request
from domain.conversation import conversation_id
from entrypoints.settings import Settings
from entrypoints.worker.handover import handover_headers
from entrypoints.worker.held_records import usable
from entrypoints.worker.responder import REFUSED_RECORD, largest_record

log = logging.getLogger(__name__)

POLL_TIMEOUT = 0.1
TRANSACTION_TIMEOUT = 30.0  # seconds a transaction call may take before it is tried again
RETRY_PAUSE = 0.1
RETRY_PAUSE_MAX = 5.0


def conversation_key(message: Message, settings: Settings) -> bytes | None:
    """The record's key on the repartition topic: its conversation, or its own key
    when it is no request (its error response and dead letter are the answering
    stage's, wherever it lands)."""
    try:
        request = parse_request(
            message.key(), message.value(), settings.MAX_REQUEST_BYTES, settings.MAX_KEY_BYTES
        )
        return str(conversation_id(request.user_email, request.conversation_id)).encode()
    except Exception:  # whatever it is, it is handed over: the answering stage says why
        key = message.key()  # (travelling in a header as well: not twice when too long)
        return key if key is not None and len(key) <= settings.MAX_KEY_BYTES else None


class Repartitioner:
    """Consumes REQUEST_TOPIC as CONSUMER_GROUP; hands every record over to the
    repartition topic in transactions. `fail` stops the worker (from this thread)."""

    def __init__(self, settings: Settings, fail: Callable[[BaseException], None]) -> None:
        self.settings = settings
        self.fail = fail
        self.handed_over = 0
        self._stop = threading.Event()
        # Records the repartition topic refused: handed over without their value
        # when their transaction is tried again.
        self._refused: dict[tuple[str, int, int], str] = {}
        self._pause = RETRY_PAUSE

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Until `stop`: consume, hand over, commit; in the caller's thread."""
        try:
            self._run()
        except BaseException as error:  # noqa: BLE001 - reported to the worker, which stops
            log.exception("the repartition stage stopped")
            self.fail(error)

    def _run(self) -> None:
        settings = self.settings
        producer = Producer({
            # A transaction takes seconds at most: one a crashed process left open
            # holds the partitions' readers back this long (librdkafka: 60 s).
            "transaction.timeout.ms": 10_000,
            **producer_config(settings.KAFKA, largest_record(settings)),
            # Unique per process: a restarted process in the same pod (pid 1 again)
            # takes over, and aborts, what its predecessor left open.
            "transactional.id": f"{settings.CONSUMER_GROUP}-repartition-{socket.gethostname()}-{os.getpid()}",
        })
        self._retrying("starting transactions", lambda: producer.init_transactions(TRANSACTION_TIMEOUT))
        consumer = Consumer(consumer_config(settings.KAFKA, settings.CONSUMER_GROUP))
        consumer.subscribe(
            [settings.REQUEST_TOPIC], on_assign=self._on_assign, on_revoke=self._on_revoke,
        )
        try:
            while not self._stop.is_set():
                records = [m for m in consumer.consume(settings.MAX_BATCH, POLL_TIMEOUT) if usable(m)]
                if records:
                    self._hand_over(consumer, producer, records)
        finally:
            consumer.close()
            producer.flush(5)

    @staticmethod
    def _on_assign(_consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("repartitioning %s", [f"{p.topic}[{p.partition}]" for p in partitions])

    @staticmethod
    def _on_revoke(_consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Nothing is open: a transaction ends before the next consume.
        log.info("no longer repartitioning %s", [f"{p.topic}[{p.partition}]" for p in partitions])

    def _hand_over(self, consumer: Consumer, producer: Producer, records: list[Message]) -> None:
        """One transaction: the records to the repartition topic and the offsets
        after them. When it fails it is aborted and the partitions are rewound to
        its first records: the next consume fetches them again (and serves a
        rebalance first, if that is why it failed)."""
        try:
            self._transaction(consumer, producer, records)
        except KafkaException as exception:
            error: KafkaError = exception.args[0]
            if error.fatal():
                raise
            log.warning("handing %d records over failed (%s); trying again", len(records), error)
            try:
                self._retrying("aborting a transaction",
                               lambda: producer.abort_transaction(TRANSACTION_TIMEOUT))
            except KafkaException as again:
                if again.args[0].fatal():
                    raise  # else none was open
            self._rewind(consumer, records)
            self._stop.wait(self._pause)
            self._pause = min(self._pause * 2, RETRY_PAUSE_MAX)
            return
        self.handed_over += len(records)
        self._pause = RETRY_PAUSE

    def _transaction(self, consumer: Consumer, producer: Producer, records: list[Message]) -> None:
        settings = self.settings
        topic = settings.repartition_topic
        producer.begin_transaction()
        ends: dict[tuple[str, int], int] = {}
        for message in records:
            where = (message.topic(), message.partition(), message.offset())
            self._produce(producer, topic, message, self._refused.get(where))
            ends[where[:2]] = where[2] + 1
        offsets = [TopicPartition(t, p, end) for (t, p), end in ends.items()]
        self._retrying("committing offsets", lambda: producer.send_offsets_to_transaction(
            offsets, consumer.consumer_group_metadata(), TRANSACTION_TIMEOUT
        ))
        self._retrying("committing a transaction",
                       lambda: producer.commit_transaction(TRANSACTION_TIMEOUT))
        for message in records:
            self._refused.pop((message.topic(), message.partition(), message.offset()), None)

    def _produce(self, producer: Producer, topic: str, message: Message, refused: str | None) -> None:
        """The record, re-keyed; without its value when the topic refused it."""
        kind, millis = message.timestamp()
        timestamp = millis if kind and millis > 0 else 0
        where = (message.topic(), message.partition(), message.offset())

        def on_delivery(error: KafkaError | None, _message: Message) -> None:
            if error is not None and error.code() in REFUSED_RECORD:
                # The transaction fails; tried again, the record goes without its value.
                self._refused[where] = error.name()

        while True:
            try:
                producer.produce(
                    topic,
                    None if refused else message.value(),
                    conversation_key(message, self.settings),
                    headers=handover_headers(message, refused),
                    timestamp=timestamp,
                    on_delivery=on_delivery,
                )
                return
            except BufferError:
                producer.poll(0.05)  # the local queue is full: let deliveries drain
            except KafkaException as exception:  # refused before sending: too large
                error = exception.args[0]
                if refused is not None or error.code() not in REFUSED_RECORD:
                    raise
                log.error("record %s[%d]@%d refused by the repartition topic (%s); handing it "
                          "over without its value", *where, error.name())
                refused = error.name()

    def _retrying(self, what: str, call: Callable[[], object]) -> None:
        """`call` until it succeeds, while it fails with retriable errors."""
        pause = RETRY_PAUSE
        while True:
            try:
                call()
                return
            except KafkaException as exception:
                error: KafkaError = exception.args[0]
                if not error.retriable() or self._stop.is_set():
                    raise
                log.warning("%s failed (%s); trying again", what, error)
                time.sleep(pause)
                pause = min(pause * 2, RETRY_PAUSE_MAX)

    @staticmethod
    def _rewind(consumer: Consumer, records: list[Message]) -> None:
        """Back to the first record not handed over, per partition."""
        first: dict[tuple[str, int], int] = {}
        for message in records:
            first.setdefault((message.topic(), message.partition()), message.offset())
        for (topic, partition), offset in first.items():
            try:
                consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException:
                pass  # no longer ours: its committed offset is where its next owner starts
