"""Which held records are stalled: their turn came, and they are past their deadline
(or past when their turn came, if later) by more than the grace."""

from __future__ import annotations

from dataclasses import replace

from opentelemetry.trace import INVALID_SPAN

from adapters.kafka_offsets import OffsetTracker
from application.contract import ChatRequest
from entrypoints.worker.held_records import HeldRecords, WorkerStats


class Message:
    def __init__(self, offset: int) -> None:
        self._offset = offset

    def timestamp(self) -> tuple[int, int]:
        return (0, -1)  # none

    def topic(self) -> str:
        return "gpt-send"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return b'{"message": "hi"}'

    def key(self) -> bytes:
        return f"r{self._offset}".encode()


REQUEST = ChatRequest(request_id="r", user_email="a@b.co", message="hi")


def held_records() -> HeldRecords:
    return HeldRecords(WorkerStats(), OffsetTracker())


def test_a_record_being_answered_is_stalled_only_past_its_deadline_and_the_grace():
    held = held_records()
    answering = held.hold(Message(0), None, span=INVALID_SPAN)
    answering.request = replace(REQUEST, deadline=1600.0)
    answering.held_at = answering.active_since = 1000.0
    assert held.stalled(grace=300, now=1900.0) == []
    assert held.stalled(grace=300, now=1901.0) == [answering]


def test_a_record_queued_behind_its_lanes_head_is_never_stalled():
    # A head may take long (the model down, say): those behind it are not stalled.
    held = held_records()
    head = held.hold(Message(0), None, span=INVALID_SPAN)
    head.request = replace(REQUEST, batch=True, deadline=1000.0 + 26 * 3600)
    head.held_at = head.active_since = 1000.0
    behind = held.hold(Message(1), None, span=INVALID_SPAN)
    behind.request = replace(REQUEST, deadline=1600.0)
    behind.held_at = 1000.0
    assert held.stalled(grace=300, now=1000.0 + 3600) == []
    behind.active_since = 1000.0 + 3600  # the batch answered: its turn comes
    assert held.stalled(grace=300, now=1000.0 + 3600 + 299) == []
    assert held.stalled(grace=300, now=1000.0 + 3600 + 301) == [behind]
    assert held.oldest_age(now=1010.0) == 10.0


def test_a_rejected_record_counts_from_its_delivery_on():
    held = held_records()
    rejected = held.hold(Message(0), None, span=INVALID_SPAN)  # never read: no deadline
    rejected.held_at = rejected.active_since = 5000.0
    assert held.stalled(grace=60, now=5059.0) == []
    assert held.stalled(grace=60, now=5061.0) == [rejected]


def test_a_finished_or_dropped_record_is_no_longer_held():
    held = held_records()
    record = held.hold(Message(0), None, span=INVALID_SPAN)
    record.held_at = record.active_since = 0.0
    assert held.stalled(grace=1, now=10.0) == [record]
    held.drop(record)
    assert held.stalled(grace=1, now=10.0) == [] and held.oldest_age(now=10.0) == 0.0


def test_the_bytes_of_the_records_held_are_counted_until_they_finish_or_drop():
    held = held_records()
    first, second = held.hold(Message(0), None, INVALID_SPAN), held.hold(Message(1), None, INVALID_SPAN)
    size = len(b'{"message": "hi"}') + len(b"r0")
    assert (held.stats.in_flight_bytes, held.stats.peak_in_flight_bytes) == (2 * size, 2 * size)
    held.drop(first)
    held.drop(first)  # twice changes nothing
    assert held.stats.in_flight_bytes == size
    held.collect_for_batch(second)  # apart from MAX_IN_FLIGHT, not from the bytes
    assert held.stats.in_flight_bytes == size
    held.drop(second)
    assert (held.stats.in_flight_bytes, held.stats.peak_in_flight_bytes) == (0, 2 * size)


def test_a_batch_request_is_held_apart_while_collected_then_parked_and_finished():
    stats = WorkerStats()
    offsets = OffsetTracker()
    offsets.assign([("gpt-send", 0)])
    held = HeldRecords(stats, offsets)
    epoch = offsets.add(("gpt-send", 0), 7)
    record = held.hold(Message(7), epoch, span=INVALID_SPAN)
    held.collect_for_batch(record)
    assert (stats.in_flight, stats.batch_collecting) == (0, 1)  # no slot of MAX_IN_FLIGHT
    held.park(record)
    assert (stats.in_flight, stats.batch_collecting, stats.parked) == (0, 0, 1)
    assert offsets.to_commit() == [(("gpt-send", 0), 8)]  # nothing pins its offset
    assert held.oldest_age() == 0.0
