"""The erasure listener: requests to erase a user, from ERASE_TOPIC (`gpt-erase`)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from confluent_kafka import Consumer, KafkaException, Message
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from adapters.kafka import consumer_config
from application.privacy import Privacy
from entrypoints.settings import Settings
from entrypoints.worker.held_records import trace_context, usable
from entrypoints.worker.persevere import GaveUp, Stopping, persevere
from entrypoints.worker.responder import Responder

log = logging.getLogger(__name__)

ERASURE_POLL_TIMEOUT = 0.5


class ErasureListener:
    """Erasure requests in a consumer group of their own (so that their partition
    never takes a replica's share of the requests), one at a time, committed once
    done; an erasure done twice changes nothing. One that cannot be carried out
    is dead-lettered."""

    def __init__(
        self,
        privacy: Privacy,
        settings: Settings,
        responder: Responder,
        tracer: trace.Tracer,
        stopping: Callable[[], bool],
    ) -> None:
        self.privacy = privacy
        self.settings = settings
        self.responder = responder
        self.tracer = tracer
        self.stopping = stopping

    async def serve(self) -> None:
        """Until the worker stops."""
        settings = self.settings
        consumer = Consumer(consumer_config(
            settings.BOOTSTRAP_SERVER, f"{settings.CONSUMER_GROUP}-erase"
        ))
        consumer.subscribe([settings.ERASE_TOPIC])
        polling = ThreadPoolExecutor(1, thread_name_prefix="kafka-erase")
        loop = asyncio.get_running_loop()
        try:
            while not self.stopping():
                message = await loop.run_in_executor(polling, consumer.poll, ERASURE_POLL_TIMEOUT)
                if message is None or not usable(message):
                    continue
                if await self._erase(message):
                    self._commit(consumer, message)
        finally:
            await loop.run_in_executor(polling, consumer.close)
            polling.shutdown()

    @staticmethod
    def _commit(consumer: Consumer, message: Message) -> None:
        try:
            consumer.commit(message=message, asynchronous=False)
        except KafkaException as error:  # fetched again: done again, harmlessly
            log.warning("erasure offset not committed: %s", error)

    async def _erase(self, message: Message) -> bool:
        """One erasure request: the user's conversations get a UserErased event and
        their data keys are destroyed. Waits out a store outage; False if stopped."""
        with self.tracer.start_as_current_span(
            f"process {message.topic()}", context=trace_context(message),
            kind=SpanKind.CONSUMER,
        ) as span:
            try:
                email, requested_by = _read_erasure(message)
            except (ValueError, KeyError, TypeError, AttributeError) as error:
                log.warning("unreadable erasure request at offset %d", message.offset())
                self.responder.dead_letter_erasure(
                    message, f"not an erasure request: {type(error).__name__}"
                )
                return True
            try:
                erasure = await persevere(
                    "erasing a user", self.stopping, self.privacy.erase_user, email, requested_by
                )
            except Stopping:
                return False  # fetched again by whoever runs next
            except GaveUp as error:  # a bug, say: set aside
                self.responder.dead_letter_erasure(message, f"erasure failed: {error}")
                return True
            span.set_attribute("chater.erased_conversations", len(erasure.conversation_ids))
            return True


def _read_erasure(message: Message) -> tuple[str, str]:
    """The address to erase and who asked (default `user`)."""
    request = json.loads(message.value() or b"")
    email, requested_by = request["user_email"], request.get("requested_by") or "user"
    if not isinstance(email, str) or not isinstance(requested_by, str):
        raise TypeError("user_email and requested_by must be strings")
    return email, requested_by
