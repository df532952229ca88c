"""A conversation's lane goes on after a record that fails unexpectedly: that record
ends as unanswerable (its error response and dead letter), the next one is answered."""

from __future__ import annotations

from opentelemetry.trace import INVALID_SPAN

from adapters.kafka_offsets import OffsetTracker
from application.contract import ChatRequest, ChatResponse
from entrypoints.worker.conversation_lanes import ConversationLanes
from entrypoints.worker.held_records import HeldRecords, WorkerStats
from entrypoints.worker.persevere import GaveUp

PARTITION = ("gpt-send", 0)


class Message:
    def __init__(self, offset: int) -> None:
        self._offset = offset

    def topic(self) -> str:
        return PARTITION[0]

    def partition(self) -> int:
        return PARTITION[1]

    def offset(self) -> int:
        return self._offset


class Service:
    """Fails unexpectedly, every time, for the request "bad"; answers the others."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def handle(self, request: ChatRequest) -> ChatResponse:
        self.calls.append(request.request_id)
        if request.request_id == "bad":
            raise KeyError("a bug")
        return ChatResponse.failure("budget_exceeded", "stand-in answer", "t", 0.0)


async def test_a_record_that_fails_every_time_ends_alone_and_its_lane_goes_on(monkeypatch):
    monkeypatch.setattr("entrypoints.worker.persevere.OUTAGES.delays", lambda: iter(lambda: 0.0, None))
    offsets = OffsetTracker()
    offsets.assign([PARTITION])
    held = HeldRecords(WorkerStats(), offsets)
    answered, unanswerable, failed = [], [], []
    service = Service()
    lanes = ConversationLanes(
        service, held,  # type: ignore[arg-type]
        answered=lambda record, response: answered.append(record.request.request_id),
        stopping=lambda: False,
        fail=failed.append,
        unanswerable=lambda record, error: unanswerable.append((record.request.request_id, error)),
    )
    for offset, rid in enumerate(["bad", "good"]):
        record = held.hold(Message(offset), offsets.add(PARTITION, offset), INVALID_SPAN)
        record.request = ChatRequest(request_id=rid, user_email="a@b.co", message="hi")
        lanes.add("one conversation", record)
    await lanes.finish(timeout=10)

    assert service.calls == ["bad", "bad", "bad", "good"]  # tried three times, then given up
    [(rid, error)] = unanswerable
    assert rid == "bad" and isinstance(error, GaveUp) and str(error) == "KeyError"
    assert answered == ["good"] and failed == []
