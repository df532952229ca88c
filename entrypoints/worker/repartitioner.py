"""The repartition stage: `gpt-send` records re-keyed by conversation onto the
repartition topic, at least once.

The platform's producers key `gpt-send` by request id, so one conversation's turns
land on different partitions, and so with different replicas. This stage (in every
worker, consumer group CONSUMER_GROUP) hands each record over to the repartition
topic keyed by its conversation, so that the default partitioner puts all of a
conversation's turns on one partition, read by one answering consumer in order.

Hand-over is at least once: a batch of records is produced (idempotent producer,
`acks=all`, in order) and only once every one of them is delivered are the source
offsets after them committed. A crash between the two hands that batch over again;
the copies land on the same partition, behind the originals, in the same
conversation lane, and are answered from the event store (the request's recorded
outcome), so the model is never paid twice. Kafka transactions would also avoid the
copies; they were tried and left out: after a broker outage,
`send_offsets_to_transaction` blocked past its timeout on the embedded broker,
stopping the stage, and a stage that cannot be stuck matters more than a copy
answered from the store.

A record that cannot be read is handed over under its own key: the answering
stage gives it its error response and dead letter, as before. A record the
repartition topic refuses (too large) is handed over without its value, saying
why, and ends there as an error and a dead letter.

It runs in a daemon thread of its own: librdkafka's calls block, and it never
waits for the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
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
FLUSH_SLICE = 0.5  # seconds per wait for deliveries, between looks at `stop`
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
    repartition topic, then commits. `fail` stops the worker (from this thread)."""

    def __init__(self, settings: Settings, fail: Callable[[BaseException], None]) -> None:
        self.settings = settings
        self.fail = fail
        self.handed_over = 0
        self._stop = threading.Event()
        self._pause = RETRY_PAUSE

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Until `stop`: consume, hand over, commit; in the caller's thread."""
        try:
            self._run()
        except BaseException as error:  # noqa: BLE001 - reported to the worker, which stops
            if self._stop.is_set():  # cut short while stopping: the next owner goes on
                log.info("the repartition stage stopped before its last hand-over (%s)", error)
                return
            log.exception("the repartition stage stopped")
            self.fail(error)

    def start(self) -> asyncio.Future[None]:
        """Run in a daemon thread (a hand-over stuck on an unreachable cluster must
        not keep the process from exiting); the future is done when it ends."""
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[None] = loop.create_future()

        def run() -> None:
            try:
                self.run()
            finally:
                loop.call_soon_threadsafe(lambda: ended.done() or ended.set_result(None))

        threading.Thread(target=run, name="repartition", daemon=True).start()
        return ended

    def _run(self) -> None:
        settings = self.settings
        producer = Producer(producer_config(settings.KAFKA, largest_record(settings)))
        consumer = Consumer(
            consumer_config(settings.KAFKA, settings.CONSUMER_GROUP, settings.prefetch_bytes)
        )
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
        # Nothing is half done: a batch is delivered and committed before the next consume.
        log.info("no longer repartitioning %s", [f"{p.topic}[{p.partition}]" for p in partitions])

    def _hand_over(self, consumer: Consumer, producer: Producer, records: list[Message]) -> None:
        """The records to the repartition topic, then the offsets after them. When a
        delivery fails, the partitions are rewound to the batch's first records and
        the next consume fetches them again."""
        failed = self._deliver(producer, records)
        if failed is not None:
            if self._stop.is_set():
                return  # not committed: whoever consumes the partitions next hands them over
            log.warning("handing %d records over failed (%s); trying again", len(records), failed)
            self._rewind(consumer, records)
            self._stop.wait(self._pause)
            self._pause = min(self._pause * 2, RETRY_PAUSE_MAX)
            return
        self._pause = RETRY_PAUSE
        self.handed_over += len(records)
        ends: dict[tuple[str, int], int] = {}
        for message in records:
            ends[(message.topic(), message.partition())] = message.offset() + 1
        try:
            consumer.commit(
                offsets=[TopicPartition(t, p, end) for (t, p), end in ends.items()],
                asynchronous=False,
            )
        except KafkaException as error:
            # The partition moved (or the broker went away): its next owner starts
            # from the last commit and hands these records over again.
            log.warning("hand-over commit failed (%s): the records may be handed over twice",
                        error.args[0])

    def _deliver(self, producer: Producer, records: list[Message]) -> KafkaError | None:
        """Produce the records (one the topic refuses, again without its value) and
        wait until each is delivered; the first error that is not about the record
        itself, if any (or a stop meanwhile)."""
        topic = self.settings.repartition_topic
        outcomes: dict[int, KafkaError | None] = {}
        pending = set(range(len(records)))

        def send(index: int, refused: str | None = None) -> None:
            def delivered(error: KafkaError | None, _message: Message) -> None:
                if error is not None and error.code() in REFUSED_RECORD and refused is None:
                    send(index, error.name())  # the record goes on without its value
                    return
                outcomes[index] = error
                pending.discard(index)

            self._produce(producer, topic, records[index], refused, delivered)

        for index in range(len(records)):
            send(index)
        while pending and not self._stop.is_set():
            producer.flush(FLUSH_SLICE)
        if pending:
            return KafkaError(KafkaError._TIMED_OUT, "stopped while delivering")
        return next((error for error in outcomes.values() if error is not None), None)

    def _produce(
        self,
        producer: Producer,
        topic: str,
        message: Message,
        refused: str | None,
        on_delivery: Callable[[KafkaError | None, Message], None],
    ) -> None:
        """The record, re-keyed; without its value when the topic refused it."""
        kind, millis = message.timestamp()
        timestamp = millis if kind and millis > 0 else 0
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
                          "over without its value", message.topic(), message.partition(),
                          message.offset(), error.name())
                refused = error.name()

    @staticmethod
    def _rewind(consumer: Consumer, records: list[Message]) -> None:
        """Back to the batch's first record, per partition."""
        first: dict[tuple[str, int], int] = {}
        for message in records:
            first.setdefault((message.topic(), message.partition()), message.offset())
        for (topic, partition), offset in first.items():
            try:
                consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException:
                pass  # no longer ours: its committed offset is where its next owner starts
