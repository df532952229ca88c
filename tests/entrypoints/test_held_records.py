"""Which held records are stalled: held past their deadline by more than the grace."""

from __future__ import annotations

from dataclasses import replace

from opentelemetry.trace import INVALID_SPAN

from adapters.kafka_offsets import OffsetTracker
from application.contract import ChatRequest
from entrypoints.worker.held_records import HeldRecords, WorkerStats


class Message:
    def __init__(self, offset: int) -> None:
        self._offset = offset

    def topic(self) -> str:
        return "gpt-send"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


REQUEST = ChatRequest(request_id="r", user_email="a@b.co", message="hi")


def test_a_record_is_stalled_only_past_its_deadline_and_the_grace():
    held = HeldRecords(WorkerStats(), OffsetTracker())
    first = held.hold(Message(0), None, span=INVALID_SPAN)
    second = held.hold(Message(1), None, span=INVALID_SPAN)
    first.held_at = second.held_at = 1000.0
    first.request = replace(REQUEST, deadline=1600.0)  # REQUEST_DEADLINE from its production
    second.request = None  # not read (yet): its fetch time counts
    assert held.stalled(grace=300, now=1299.0) == []
    assert held.stalled(grace=300, now=1301.0) == [second]
    assert held.stalled(grace=300, now=1901.0) == [first, second]
    assert held.oldest_age(now=1010.0) == 10.0


def test_a_record_fetched_after_its_deadline_gets_the_grace_from_its_fetch():
    held = HeldRecords(WorkerStats(), OffsetTracker())
    late = held.hold(Message(0), None, span=INVALID_SPAN)
    late.held_at = 5000.0
    late.request = replace(REQUEST, deadline=1000.0)  # a backlog record, long past it
    assert held.stalled(grace=60, now=5059.0) == []
    assert held.stalled(grace=60, now=5061.0) == [late]


def test_a_finished_or_dropped_record_is_no_longer_held():
    held = HeldRecords(WorkerStats(), OffsetTracker())
    record = held.hold(Message(0), None, span=INVALID_SPAN)
    record.held_at = 0.0
    assert held.stalled(grace=1, now=10.0) == [record]
    held.drop(record)
    assert held.stalled(grace=1, now=10.0) == [] and held.oldest_age(now=10.0) == 0.0

