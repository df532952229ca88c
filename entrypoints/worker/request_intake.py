"""Request intake: each fetched record is held, read and queued in its
conversation's lane, or rejected when it is not a request."""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from confluent_kafka import Message

from application.chat import ChatService
from application.contract import (
    ChatRequest,
    ChatResponse,
    InvalidRequest,
    parse_request,
    request_id_of,
)
from application.ports import Clock
from domain.conversation import conversation_id
from entrypoints.settings import Settings
from entrypoints.worker.conversation_lanes import ConversationLanes
from entrypoints.worker.handover import Forwarded
from entrypoints.worker.held_records import HeldRecord, HeldRecords, produced_at
from entrypoints.worker.request_accounting import RequestAccounting
from entrypoints.worker.responder import Responder

log = logging.getLogger(__name__)


class RequestIntake:
    """Takes the records the consumer loop fetched, one by one, on the event loop."""

    def __init__(
        self,
        service: ChatService,
        settings: Settings,
        clock: Clock,
        held: HeldRecords,
        accounting: RequestAccounting,
        lanes: ConversationLanes,
        responder: Responder,
    ) -> None:
        self.service = service
        self.settings = settings
        self.clock = clock
        self.held = held
        self.accounting = accounting
        self.lanes = lanes
        self.responder = responder

    def take(self, message: Message | Forwarded, epoch: int | None) -> None:
        """Hold the record and queue it in its conversation's lane (or reject it)."""
        record = self.held.hold(message, epoch, self.accounting.start_span(message))
        try:
            record.request = self._read(message)
            conversation = str(conversation_id(record.request.user_email, record.request.conversation_id))
        except InvalidRequest as error:
            self._reject(record, error)
            return
        except Exception:  # never let one record stop the worker
            log.exception("unreadable record at %s[%d]@%d", *record.partition, message.offset())
            self._reject(record, InvalidRequest(
                "the record could not be read",
                request_id_of(message.key(), self.settings.MAX_KEY_BYTES),
            ))
            return
        if self.service.batched(record.request) and self.service.batches.has_room(
            self.held.stats.batch_collecting
        ):  # to be parked: see HeldRecord.batched
            self.held.collect_for_batch(record)
        self.accounting.describe(record)
        self.lanes.add(conversation, record)

    def _read(self, message: Message | Forwarded) -> ChatRequest:
        """The request, with its deadline: REQUEST_DEADLINE (BATCH_DEADLINE for one
        answered by the Batch API) after the record was produced (or fetched, if it
        has no time)."""
        settings = self.settings
        if isinstance(message, Forwarded) and message.refused is not None:
            raise InvalidRequest(
                f"the record could not be handed over to its conversation ({message.refused}): "
                "it is larger than the topics take",
                request_id_of(message.key(), settings.MAX_KEY_BYTES),
            )
        request = parse_request(
            message.key(), message.value(), settings.MAX_REQUEST_BYTES, settings.MAX_KEY_BYTES
        )
        now = time.time()
        wait = settings.BATCH_DEADLINE if self.service.batched(request) else settings.REQUEST_DEADLINE
        # A producer clock running ahead must not push the deadline out.
        produced = min(produced_at(message, now), now)
        return replace(request, deadline=produced + wait, produced_at=produced)

    def _reject(self, record: HeldRecord, error: InvalidRequest) -> None:
        """Not a request: an `invalid_request` response and a dead letter."""
        record.start()  # straight to delivery
        message = record.message
        log.warning(
            "invalid record %s[%d]@%d: %s",
            message.topic(), message.partition(), message.offset(), error.message,
        )
        response = ChatResponse.rejection(
            "invalid_request", error.message, self.clock.now(), time.perf_counter()
        )
        self.accounting.account_for(record, response)
        self.responder.reject(record, error, response)
