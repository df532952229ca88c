"""The erasure listener: requests to erase a user, from ERASE_TOPIC (`gpt-erase`).

Every record ends applied or dead-lettered with its reason, and is committed
then; nothing a record holds, and no error of the consumer, ends the listener
while the worker runs (errors outside a record are logged and waited out).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from pydantic import ValidationError

from adapters.kafka import consumer_config
from application.contract import MAX_REQUESTED_BY, ErasureBody
from application.privacy import Privacy, owners_of
from domain.addresses import InvalidAddress
from entrypoints.settings import Settings
from entrypoints.worker.held_records import trace_context
from entrypoints.worker.persevere import GaveUp, Stopping, persevere
from entrypoints.worker.responder import REFUSED_RECORD, Responder

log = logging.getLogger(__name__)
_T = TypeVar("_T")

ERASURE_POLL_TIMEOUT = 0.5
# Failing health: no poll for this long (while not stopping). An erasure being
# carried out holds the next poll back, so this is far above the poll timeout.
ERASURE_STALL_AFTER = 30.0
# An erasure request is a few hundred bytes; anything far larger is not one.
MAX_ERASURE_BYTES = 64 * 1024
# Pauses after a consumer error, or before a dead letter is sent again: doubled
# each time up to the maximum, from the minimum again once things work.
PAUSE_MIN = 0.5
PAUSE_MAX = 30.0
# Waiting for a dead letter's delivery, how often the worker's stop is looked at.
STOP_CHECK_INTERVAL = 0.5


class UnreadableErasure(ValueError):
    """Not an erasure request this service can carry out; the message is the
    dead letter's reason (it never quotes the record)."""


class ErasureListener:
    """Erasure requests in a consumer group of their own (so that their partition
    never takes a replica's share of the requests), one at a time, committed once
    done; an erasure done twice changes nothing. One that cannot be carried out
    is dead-lettered, with its reason, before it is committed."""

    def __init__(
        self,
        privacy: Privacy,
        settings: Settings,
        responder: Responder,
        tracer: trace.Tracer,
        stopping: Callable[[], bool],
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.privacy = privacy
        self.settings = settings
        self.responder = responder
        self.tracer = tracer
        self.stopping = stopping
        self.now = now
        self.applied = 0
        self.dead_lettered = 0
        self.refused = 0  # dead letters the cluster would not take, even without a value
        self._running = False
        self._started_at: float | None = None
        self._last_poll: float | None = None
        self._pending_commit: Message | None = None
        self._polling: ThreadPoolExecutor | None = None
        self._pauses = _pauses()

    # Health ---------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Running or not, seconds since the last poll, erasures applied and
        dead-lettered since start (and dead letters the cluster refused, of which
        only a log line is left); `problem` says why it is failing, when it is:
        not running, or not polling for ERASURE_STALL_AFTER, while the worker runs."""
        now = self.now()
        since = None if self._last_poll is None else round(now - self._last_poll, 1)
        figure: dict[str, Any] = {
            "running": self._running,
            "seconds_since_poll": since,
            "applied": self.applied,
            "dead_lettered": self.dead_lettered,
            "refused": self.refused,
        }
        if self.stopping():
            return figure
        if not self._running:
            figure["problem"] = "the erasure consumer is not running"
        elif since is None:
            waited = now - (self._started_at if self._started_at is not None else now)
            if waited > ERASURE_STALL_AFTER:
                figure["problem"] = (
                    f"the erasure consumer has not polled in the {waited:.0f}s since it started"
                )
        elif since > ERASURE_STALL_AFTER:
            figure["problem"] = f"the erasure consumer has not polled for {since:.0f}s"
        return figure

    # Consuming ------------------------------------------------------------------

    async def serve(self) -> None:
        """Until the worker stops: a consumer that fails is closed and opened again."""
        self._running = True
        self._started_at = self.now()
        self._polling = ThreadPoolExecutor(1, thread_name_prefix="kafka-erase")
        try:
            while not self.stopping():
                try:
                    await self._consume()
                except Exception:  # outside any record: the consumer itself
                    log.exception("erasure consumer failed; opening it again")
                    await self._pause(next(self._pauses))
        finally:
            self._running = False
            self._polling.shutdown(wait=False)

    async def _consume(self) -> None:
        """One consumer, from subscribing until the worker stops (or it fails)."""
        consumer = await self._in_thread(self._open_consumer)
        self._pending_commit = None
        try:
            while not self.stopping():
                await self._commit_pending(consumer)
                message = await self._in_thread(consumer.poll, ERASURE_POLL_TIMEOUT)
                self._last_poll = self.now()
                if message is None:
                    continue
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        continue
                    if error.fatal():
                        raise KafkaException(error)
                    log.warning("erasure consumer: %s", error)
                    await self._pause(next(self._pauses))
                    continue
                self._pauses = _pauses()  # the consumer works
                if not await self._handle(message):
                    return  # stopping: fetched again by whoever runs next
                self._pending_commit = message
                await self._commit_pending(consumer)
        finally:
            try:
                await self._in_thread(consumer.close)
            except Exception as error:
                log.warning("erasure consumer not closed cleanly: %s", _safe(error))

    def _open_consumer(self) -> Consumer:
        settings = self.settings
        consumer = Consumer(consumer_config(
            settings.KAFKA, f"{settings.CONSUMER_GROUP}-erase"
        ))
        consumer.subscribe(
            [settings.ERASE_TOPIC], on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        return consumer

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Before its partition goes, the last record's commit is tried once more;
        never later, when it could move back a new owner's offset."""
        message = self._pending_of(partitions)
        if message is None:
            return
        self._pending_commit = None
        try:
            consumer.commit(message=message, asynchronous=False)
        except KafkaException as error:  # fetched again by the new owner: done again
            log.warning("erasure offset %d not committed before a rebalance: %s",
                        message.offset(), _safe(error))

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._pending_of(partitions) is not None:
            self._pending_commit = None

    def _pending_of(self, partitions: list[TopicPartition]) -> Message | None:
        message = self._pending_commit
        if message is None or not any(
            (p.topic, p.partition) == (message.topic(), message.partition()) for p in partitions
        ):
            return None
        return message

    async def _commit_pending(self, consumer: Consumer) -> None:
        """Commit past the last record done; if that fails, it is tried again
        before the next poll (or a later record's commit covers it)."""
        message = self._pending_commit
        if message is None:
            return
        try:
            await self._in_thread(lambda: consumer.commit(message=message, asynchronous=False))
        except KafkaException as error:
            log.warning("erasure offset %d not committed yet: %s", message.offset(), _safe(error))
            return
        if self._pending_commit is message:
            self._pending_commit = None

    # One record -----------------------------------------------------------------

    async def _handle(self, message: Message) -> bool:
        """Apply one erasure request or dead-letter it; False only when the worker
        stops first (then nothing may be committed)."""
        try:
            context = trace_context(message)
        except Exception:  # headers that are no trace context
            context = None
        with self.tracer.start_as_current_span(
            f"process {message.topic()}", context=context, kind=SpanKind.CONSUMER,
        ) as span:
            try:
                reason = await self._erase(message, span)
            except Stopping:
                return False
            except Exception as error:  # whatever it was, the record is set aside
                log.error("erasure request at offset %d failed: %s",
                          message.offset(), type(error).__name__)
                reason = f"erasure failed: {type(error).__name__}"
            if reason is None:
                self.applied += 1
                return True
            return await self._dead_letter(message, reason)

    async def _erase(self, message: Message, span: trace.Span) -> str | None:
        """None once the user is erased (their conversations get a UserErased event
        and their data keys are destroyed), else the reason it cannot be. Waits
        out a store outage; raises Stopping if the worker stops meanwhile."""
        try:
            email, requested_by = read_erasure(message.value())
        except UnreadableErasure as error:
            return str(error)
        try:
            erasure = await persevere(
                "erasing a user", self.stopping, self.privacy.erase_user, email, requested_by
            )
        except GaveUp as error:  # a bug, say: set aside
            return f"erasure failed: {error}"
        span.set_attribute("chater.erased_conversations", len(erasure.conversation_ids))
        return None

    async def _dead_letter(self, message: Message, reason: str) -> bool:
        """To the DLQ, sealed, with its reason (the responder sends it without its
        value when the cluster refuses it whole); True once delivered, False when
        the worker stops first. A failed delivery is tried again after a pause; one
        the cluster refuses even without its value is logged and gone past, as the
        requests' dead letters are."""
        log.warning("erasure request at offset %d dead-lettered: %s", message.offset(), reason)
        pauses = _pauses()
        while True:
            try:
                await self._delivered(self.responder.dead_letter_erasure(message, reason))
                self.dead_lettered += 1
                return True
            except Stopping:
                return False
            except Exception as error:
                kafka_error = _kafka_error(error)
                if kafka_error is not None and kafka_error.code() in REFUSED_RECORD:
                    log.error("dead letter of erasure request %s[%d]@%d refused even without its "
                              "value (%s): only this log line and the source offset are left "
                              "(reason: %s)", message.topic(), message.partition(),
                              message.offset(), kafka_error.name(), reason)
                    self.refused += 1
                    return True
                if kafka_error is not None and kafka_error.fatal():
                    self.responder.fail(error)  # the producer cannot go on: the worker stops
                log.warning("dead letter of erasure request at offset %d not delivered (%s); "
                            "trying again", message.offset(), _safe(error))
            if self.stopping():
                return False
            await self._pause(next(pauses))

    async def _delivered(self, delivery: Awaitable[None]) -> None:
        """Wait for a delivery; raises Stopping if the worker stops first (its
        delivery reports are then no longer served)."""
        future = asyncio.ensure_future(delivery)
        while not future.done():
            if self.stopping():
                future.add_done_callback(_ignore_outcome)
                raise Stopping
            await asyncio.wait({future}, timeout=STOP_CHECK_INTERVAL)
        future.result()

    # Helpers --------------------------------------------------------------------

    async def _in_thread(self, function: Callable[..., _T], *args: Any) -> _T:
        """Consumer calls block: in the listener's own thread, never the loop's."""
        return await asyncio.get_running_loop().run_in_executor(self._polling, function, *args)

    async def _pause(self, seconds: float) -> None:
        """Sleep, but no longer than the worker runs."""
        deadline = time.monotonic() + seconds
        while not self.stopping() and time.monotonic() < deadline:
            await asyncio.sleep(min(STOP_CHECK_INTERVAL, deadline - time.monotonic()))


def read_erasure(value: bytes | None) -> tuple[str, str]:
    """The address to erase (as sent, validated by the rule requests follow) and who
    asked (default `user`); raises UnreadableErasure with a reason safe to show."""
    if not value:
        raise UnreadableErasure("not an erasure request: the record has no value")
    if len(value) > MAX_ERASURE_BYTES:
        raise UnreadableErasure(
            f"not an erasure request: {len(value)} bytes; the limit is {MAX_ERASURE_BYTES}"
        )
    try:
        request = json.loads(value.decode("utf-8"))
    except UnicodeDecodeError:
        raise UnreadableErasure("not an erasure request: the value is not UTF-8 text") from None
    except RecursionError:
        raise UnreadableErasure("not an erasure request: the JSON is nested too deeply") from None
    except ValueError:
        raise UnreadableErasure("not an erasure request: the value is not valid JSON") from None
    if not isinstance(request, dict):
        raise UnreadableErasure("not an erasure request: the value must be a JSON object")
    no_address = UnreadableErasure(
        "not an erasure request: 'user_email' is required and must be a non-empty string"
    )
    bad_asker = UnreadableErasure(
        f"invalid 'requested_by': it must be printable text of at most {MAX_REQUESTED_BY} characters"
    )
    try:
        valid = ErasureBody.model_validate(request)
    except ValidationError as error:
        wrong = {str(item["loc"][0]) for item in error.errors() if item["loc"]}
        raise (no_address if "user_email" in wrong else bad_asker) from None
    email = valid.user_email
    if not email.strip():
        raise no_address
    try:
        owners_of(email)  # what Privacy.erase_user will erase, or why it cannot
    except InvalidAddress as error:
        raise UnreadableErasure(f"invalid 'user_email': {error}") from None
    requested_by = valid.requested_by or "user"
    if not requested_by.isprintable():
        raise bad_asker
    return email, requested_by


def _pauses() -> Iterator[float]:
    pause = PAUSE_MIN
    while True:
        yield pause
        pause = min(pause * 2, PAUSE_MAX)


def _kafka_error(error: BaseException) -> KafkaError | None:
    if isinstance(error, KafkaException) and error.args and isinstance(error.args[0], KafkaError):
        return error.args[0]
    return None


def _safe(error: BaseException) -> str:
    """librdkafka's error name, or the exception's type: never a record's content."""
    kafka_error = _kafka_error(error)
    return kafka_error.name() if kafka_error is not None else type(error).__name__


def _ignore_outcome(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: no "exception was never retrieved" warning
