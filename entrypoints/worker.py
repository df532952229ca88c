"""The Kafka worker: `gpt-send` in, the chat use case, `gpt-response` out.

At-least-once: a batch is fetched, its records are answered (different
conversations concurrently, one conversation's records in offset order), every
response is delivered, and only then are the offsets committed. A record seen
again after a crash is answered from the event store, not by the model.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from eventsourcing.persistence import PersistenceError

from adapters.kafka import consumer_config, ensure_topics, producer_config
from application.chat import ChatService, rejection
from application.contract import ChatRequest, InvalidRequest, encode_response, parse_request
from application.ports import Clock
from domain.conversation import conversation_id
from entrypoints.settings import Settings

log = logging.getLogger(__name__)

# Unexpected errors (not the store being down) are retried this often before the
# request gets an `internal_error` response, so that one bad record cannot wedge
# its partition forever.
UNEXPECTED_ERROR_ATTEMPTS = 3
STORE_RETRY_MAX_DELAY = 10.0


@dataclass
class _Outcome:
    """What happened to one consumed record on its way out."""

    message: Message
    delivered: bool | None = None  # None until every record it produced is delivered
    pending: int = 0
    failed: bool = False


@dataclass
class WorkerStats:
    """Counts since start, for tests, the demo and health reports."""

    consumed: int = 0
    answered: int = 0
    errors: int = 0
    dead_lettered: int = 0
    committed: dict[tuple[str, int], int] = field(default_factory=dict)


class KafkaWorker:
    def __init__(self, service: ChatService, settings: Settings, clock: Clock) -> None:
        self.service = service
        self.settings = settings
        self.clock = clock
        self.stats = WorkerStats()
        # Set from librdkafka's callback thread once partitions are assigned.
        self.assigned = threading.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set; the batch in hand is finished first."""
        settings = self.settings
        if settings.CREATE_TOPICS:
            await asyncio.to_thread(
                ensure_topics,
                settings.BOOTSTRAP_SERVER,
                [settings.REQUEST_TOPIC, settings.RESPONSE_TOPIC, settings.DLQ_TOPIC],
                settings.TOPIC_PARTITIONS,
            )
        consumer = Consumer(consumer_config(settings.BOOTSTRAP_SERVER, settings.CONSUMER_GROUP))
        producer = Producer(producer_config(settings.BOOTSTRAP_SERVER))
        consumer.subscribe([settings.REQUEST_TOPIC], on_assign=self._on_assign)
        log.info(
            "worker consuming %s as group %s", settings.REQUEST_TOPIC, settings.CONSUMER_GROUP
        )
        try:
            while not stop.is_set():
                messages = await asyncio.to_thread(self._fetch, consumer)
                batch = [m for m in messages if self._usable(m)]
                if batch:
                    await self._process(batch, consumer, producer)
        finally:
            await asyncio.to_thread(producer.flush, 10)
            await asyncio.to_thread(consumer.close)
            log.info("worker stopped")

    def _fetch(self, consumer: Consumer) -> list[Message]:
        """Wait up to half a second for one record, then take what else is ready."""
        first = consumer.poll(0.5)
        if first is None:
            return []
        return [first, *consumer.consume(self.settings.MAX_BATCH - 1, 0)]

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("assigned %s", [f"{p.topic}[{p.partition}]" for p in partitions])
        self.assigned.set()

    def _usable(self, message: Message) -> bool:
        error = message.error()
        if error is None:
            return True
        if error.code() != KafkaError._PARTITION_EOF:
            log.warning("consume error: %s", error)
        return False

    # One batch ------------------------------------------------------------------

    async def _process(
        self, batch: list[Message], consumer: Consumer, producer: Producer
    ) -> None:
        self.stats.consumed += len(batch)
        outcomes = [_Outcome(m) for m in batch]
        groups: dict[str, list[tuple[_Outcome, ChatRequest | InvalidRequest]]] = defaultdict(list)
        for outcome in outcomes:
            message = outcome.message
            try:
                request: ChatRequest | InvalidRequest = parse_request(
                    message.key(), message.value()
                )
                group = str(conversation_id(request.user_email, request.conversation_id))
            except InvalidRequest as error:
                request = error
                group = f"invalid:{message.partition()}:{message.offset()}"
            groups[group].append((outcome, request))

        # Higher priority first: the order tasks start is the order they queue for
        # the rate limiter.
        ordered = sorted(
            groups.values(),
            key=lambda items: -max(
                r.priority if isinstance(r, ChatRequest) else 0 for _, r in items
            ),
        )
        await asyncio.gather(*(self._run_group(items, producer) for items in ordered))
        remaining = await asyncio.to_thread(producer.flush, 30)
        if remaining:
            log.error("%d responses not delivered; their records will be fetched again", remaining)
        await asyncio.to_thread(self._commit, outcomes, consumer)

    async def _run_group(
        self,
        items: list[tuple[_Outcome, ChatRequest | InvalidRequest]],
        producer: Producer,
    ) -> None:
        for outcome, request in items:
            if isinstance(request, InvalidRequest):
                self._reject(outcome, request, producer)
            else:
                payload = await self._answer(request)
                self._send(outcome, producer, self.settings.RESPONSE_TOPIC,
                           outcome.message.key() or request.request_id.encode(), payload)
                if "error" in payload:
                    self.stats.errors += 1
                else:
                    self.stats.answered += 1
            producer.poll(0)

    async def _answer(self, request: ChatRequest) -> dict[str, Any]:
        started = time.perf_counter()
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self.service.handle(request)
            except PersistenceError as error:
                # The store is down: wait for it rather than lose or fail the request.
                delay = min(0.5 * 2**attempt, STORE_RETRY_MAX_DELAY)
                log.warning("event store unavailable (%s); retrying in %.1fs", error, delay)
            except Exception:
                log.exception("unexpected error answering %s", request.request_id)
                if attempt >= UNEXPECTED_ERROR_ATTEMPTS:
                    return rejection(
                        "internal_error",
                        "The service could not answer this request.",
                        self.clock,
                        started,
                    )
                delay = 0.5 * attempt
            await asyncio.sleep(delay)

    def _reject(self, outcome: _Outcome, error: InvalidRequest, producer: Producer) -> None:
        message = outcome.message
        self.stats.errors += 1
        self.stats.dead_lettered += 1
        log.warning(
            "invalid record %s[%d]@%d: %s",
            message.topic(), message.partition(), message.offset(), error.message,
        )
        self._send(
            outcome,
            producer,
            self.settings.DLQ_TOPIC,
            message.key(),
            message.value(),
            headers=[
                ("error_type", b"invalid_request"),
                ("reason", error.message.encode()),
                ("source_topic", (message.topic() or "").encode()),
                ("source_partition", str(message.partition()).encode()),
                ("source_offset", str(message.offset()).encode()),
            ],
        )
        key = message.key() or (error.request_id.encode() if error.request_id else None)
        if key is None:
            log.warning("invalid record has no key: no error response can be matched to it")
            return
        payload = rejection("invalid_request", error.message, self.clock, time.perf_counter())
        self._send(outcome, producer, self.settings.RESPONSE_TOPIC, key, payload)

    def _send(
        self,
        outcome: _Outcome,
        producer: Producer,
        topic: str,
        key: bytes | None,
        value: dict[str, Any] | bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        def delivered(error: KafkaError | None, _message: Message) -> None:
            outcome.pending -= 1
            if error is not None:
                log.error("delivery to %s failed: %s", topic, error)
                outcome.failed = True

        body = encode_response(value) if isinstance(value, dict) else value
        outcome.pending += 1
        while True:
            try:
                producer.produce(topic, body, key, headers=headers, on_delivery=delivered)
                return
            except BufferError:
                producer.poll(0.1)  # the local queue is full: let deliveries drain

    # Offsets --------------------------------------------------------------------

    def _commit(self, outcomes: list[_Outcome], consumer: Consumer) -> None:
        """Commit, per partition, up to the first record not fully delivered."""
        by_partition: dict[tuple[str, int], list[_Outcome]] = defaultdict(list)
        for outcome in outcomes:
            m = outcome.message
            by_partition[(m.topic(), m.partition())].append(outcome)
        commits: list[TopicPartition] = []
        for (topic, partition), items in by_partition.items():
            items.sort(key=lambda o: o.message.offset())
            next_offset = None
            for outcome in items:
                if outcome.failed or outcome.pending > 0:
                    consumer.seek(TopicPartition(topic, partition, outcome.message.offset()))
                    break
                next_offset = outcome.message.offset() + 1
            if next_offset is not None:
                commits.append(TopicPartition(topic, partition, next_offset))
        if not commits:
            return
        try:
            consumer.commit(offsets=commits, asynchronous=False)
        except KafkaException as error:
            if error.args[0].code() == KafkaError._NO_OFFSET:
                return
            # Typically a rebalance took the partition away: its new owner fetches
            # the records again and answers them from the event store.
            log.warning("offset commit failed: %s", error)
            return
        for tp in commits:
            self.stats.committed[(tp.topic, tp.partition)] = tp.offset
