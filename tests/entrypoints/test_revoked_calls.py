"""A partition taken away: its records in flight get the revoke grace (SHUTDOWN_TIMEOUT,
at most half of max.poll.interval.ms) to finish; then those still waiting to call the
model are abandoned, and those whose model call is out are left to land (recorded
for their new owner, who waits for it), with no response from this worker."""

from __future__ import annotations

import asyncio

from opentelemetry.trace import INVALID_SPAN

from adapters.kafka_offsets import OffsetTracker
from application.contract import ChatRequest, ChatResponse
from entrypoints.settings import load_settings
from entrypoints.worker.consumer_loop import revoke_grace
from entrypoints.worker.conversation_lanes import ConversationLanes
from entrypoints.worker.held_records import HeldRecords, WorkerStats
from tests.entrypoints.test_conversation_lanes import PARTITION, Message


class Service:
    """Answers once `reply` is set; the call of "sent" is out, that of "held" is not."""

    def __init__(self) -> None:
        self.reply = asyncio.Event()
        self.finished: list[str] = []
        self.cancelled: list[str] = []

    async def handle(self, request: ChatRequest) -> ChatResponse:
        try:
            await self.reply.wait()
        except asyncio.CancelledError:
            self.cancelled.append(request.request_id)
            raise
        self.finished.append(request.request_id)
        return ChatResponse.failure("budget_exceeded", "stand-in answer", "t", 0.0)

    def call_sent(self, request_id: str) -> bool:
        return request_id == "sent"


async def test_a_revoked_record_whose_call_is_out_is_left_to_land_and_one_not_yet_out_is_abandoned():
    offsets = OffsetTracker()
    offsets.assign([PARTITION])
    held = HeldRecords(WorkerStats(), offsets)
    service, answered = Service(), []
    lanes = ConversationLanes(
        service, held,  # type: ignore[arg-type]
        answered=lambda record, response: answered.append(record.request.request_id),
        stopping=lambda: False, fail=lambda error: None, unanswerable=lambda record, error: None,
    )
    for offset, rid in enumerate(["sent", "held"]):
        record = held.hold(Message(offset), offsets.add(PARTITION, offset), INVALID_SPAN)
        record.request = ChatRequest(request_id=rid, user_email=f"{rid}@b.co", message="hi")
        lanes.add(rid, record)  # one conversation each
    await asyncio.sleep(0.05)

    offsets.revoke([PARTITION])  # the grace is over: the partition is another worker's
    lanes.abandon()
    await asyncio.sleep(0.05)
    assert service.cancelled == ["held"] and service.finished == []
    service.reply.set()  # the call that was out lands (and the use case records it)
    await lanes.finish(timeout=5)
    assert service.finished == ["sent"]
    assert answered == []  # its new owner answers it, from what was recorded


def test_the_revoke_grace_is_the_shutdown_timeout_within_half_the_poll_interval(monkeypatch):
    settings = load_settings(MODEL_PROVIDER="offline", SECRET_KEY="x")
    assert settings.SHUTDOWN_TIMEOUT == 60 and revoke_grace(settings) == 60
    monkeypatch.setenv("KAFKA_MAX_POLL_INTERVAL_MS", "100000")
    settings = load_settings(MODEL_PROVIDER="offline", SECRET_KEY="x", SHUTDOWN_TIMEOUT=90)
    assert revoke_grace(settings) == 50
