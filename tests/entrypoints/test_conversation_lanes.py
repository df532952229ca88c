"""A conversation's lane answers its records in the order they were produced, and
goes on after a record that fails unexpectedly: that record ends as unanswerable
(its error response and dead letter), the next one is answered."""

from __future__ import annotations

import asyncio
import time

from confluent_kafka import TIMESTAMP_CREATE_TIME, TIMESTAMP_NOT_AVAILABLE
from opentelemetry.trace import INVALID_SPAN

from adapters.kafka_offsets import OffsetTracker
from application.contract import ChatRequest, ChatResponse
from entrypoints.worker.conversation_lanes import ConversationLanes
from entrypoints.worker.held_records import HeldRecords, WorkerStats
from entrypoints.worker.persevere import GaveUp

PARTITION = ("gpt-send", 0)


class Message:
    def __init__(self, offset: int, produced: float | None = None) -> None:
        self._offset = offset
        self._produced = produced

    def timestamp(self) -> tuple[int, int]:
        if self._produced is None:
            return (TIMESTAMP_NOT_AVAILABLE, -1)
        return (TIMESTAMP_CREATE_TIME, int(self._produced * 1000))

    def topic(self) -> str:
        return PARTITION[0]

    def partition(self) -> int:
        return PARTITION[1]

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return b'{"message": "hi"}'

    def key(self) -> bytes:
        return f"r{self._offset}".encode()


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


def lanes_of(service, held, answered, order_window):
    return ConversationLanes(
        service, held,  # type: ignore[arg-type]
        answered=lambda record, response: answered.append(record.request.request_id),
        stopping=lambda: False, fail=lambda error: None,
        unanswerable=lambda record, error: None, order_window=order_window,
    )


async def test_turns_that_arrive_out_of_order_within_the_window_are_answered_in_the_order_produced():
    offsets = OffsetTracker()
    offsets.assign([PARTITION])
    held = HeldRecords(WorkerStats(), offsets)
    answered: list[str] = []
    service = Service()
    lanes = lanes_of(service, held, answered, order_window=0.3)
    now = time.time()

    def add(offset: int, rid: str, produced: float) -> None:
        record = held.hold(Message(offset, produced), offsets.add(PARTITION, offset), INVALID_SPAN)
        record.request = ChatRequest(request_id=rid, user_email="a@b.co", message="hi")
        lanes.add("one conversation", record)

    # Turn 3 and turn 2 reach this worker first (by way of other partitions) ...
    add(0, "turn-3", now - 0.01)
    add(1, "turn-2", now - 0.02)
    await asyncio.sleep(0.1)
    assert service.calls == []  # ... and wait: an earlier turn may be on its way
    add(2, "turn-1", now - 0.03)
    await lanes.finish(timeout=10)
    assert service.calls == answered == ["turn-1", "turn-2", "turn-3"]


async def test_a_turn_being_answered_is_never_overtaken_and_old_records_do_not_wait():
    offsets = OffsetTracker()
    offsets.assign([PARTITION])
    held = HeldRecords(WorkerStats(), offsets)
    answered: list[str] = []
    started = asyncio.Event()
    service = Service()
    handle = service.handle

    async def slow(request: ChatRequest) -> ChatResponse:
        started.set()
        await asyncio.sleep(0.2)
        return await handle(request)

    service.handle = slow  # type: ignore[method-assign]
    lanes = lanes_of(service, held, answered, order_window=5.0)
    now = time.time()
    record = held.hold(Message(0, now - 10), offsets.add(PARTITION, 0), INVALID_SPAN)
    record.request = ChatRequest(request_id="late", user_email="a@b.co", message="hi")
    lanes.add("c", record)
    began = time.monotonic()
    await asyncio.wait_for(started.wait(), 2)
    assert time.monotonic() - began < 1  # produced long ago: no wait
    record = held.hold(Message(1, now - 20), offsets.add(PARTITION, 1), INVALID_SPAN)
    record.request = ChatRequest(request_id="earlier", user_email="a@b.co", message="hi")
    lanes.add("c", record)  # produced earlier, but "late" is being answered already
    await lanes.finish(timeout=10)
    assert answered == ["late", "earlier"]
