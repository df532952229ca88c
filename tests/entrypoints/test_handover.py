"""A record handed over to the repartition topic reads back as the record the
platform produced: its key, its headers, where it was produced; never what a
producer's own headers pretend."""

from __future__ import annotations

import hashlib

from confluent_kafka import TIMESTAMP_CREATE_TIME

from entrypoints.worker.handover import Forwarded, handover_headers, source_of
from entrypoints.worker.responder import dead_letter_headers


class Message:
    def __init__(self, topic, partition, offset, key, value, headers=None):
        self._fields = (topic, partition, offset, key, value, headers)

    def topic(self):
        return self._fields[0]

    def partition(self):
        return self._fields[1]

    def offset(self):
        return self._fields[2]

    def key(self):
        return self._fields[3]

    def value(self):
        return self._fields[4]

    def headers(self):
        return self._fields[5]

    def timestamp(self):
        return (TIMESTAMP_CREATE_TIME, 1_700_000_000_000)

    def error(self):
        return None


def handed_over(original: Message, refused: str | None = None) -> Forwarded:
    """The record as the repartition topic holds it: re-keyed, headers added."""
    return Forwarded(Message(
        "gpt-send-repartition", 7, 42, b"conversation-key",
        None if refused else original.value(), handover_headers(original, refused),
    ))


def test_the_key_headers_and_source_are_the_original_records():
    original = Message("gpt-send", 3, 1234, b"request-1", b"{}", [("traceparent", b"00-ab")])
    record = handed_over(original)
    assert record.key() == b"request-1" and record.value() == b"{}"
    assert record.headers() == [("traceparent", b"00-ab")]
    assert record.source == ("gpt-send", 3, 1234) == source_of(record)
    # The offsets the answering stage tracks and commits are the repartition topic's.
    assert (record.topic(), record.partition(), record.offset()) == ("gpt-send-repartition", 7, 42)
    assert record.timestamp() == original.timestamp() and record.refused is None
    headers = dict(dead_letter_headers(record, "bad"))
    assert (headers["source_topic"], headers["source_partition"], headers["source_offset"]) == (
        b"gpt-send", b"3", b"1234"
    )


def test_a_record_without_a_key_keeps_none():
    assert handed_over(Message("gpt-send", 0, 1, None, b"x")).key() is None


def test_a_producer_cannot_pretend_to_be_the_handover():
    spoofed = [("chater.forwarded", b"1"), ("chater.source_key", b"someone-else"),
               ("chater.source_topic", b"elsewhere"), ("chater.refused", b"LIE")]
    record = handed_over(Message("gpt-send", 1, 5, b"mine", b"{}", spoofed))
    assert record.key() == b"mine" and record.source == ("gpt-send", 1, 5)
    assert record.refused is None
    assert record.headers() == spoofed  # the producer's headers, kept as sent


def test_a_record_handed_over_without_its_value_says_why_and_what_it_was():
    record = handed_over(Message("gpt-send", 0, 9, b"big", b"x" * 10), refused="MSG_SIZE_TOO_LARGE")
    assert record.value() is None and record.refused == "MSG_SIZE_TOO_LARGE"
    headers = dict(dead_letter_headers(record, "too large"))
    assert headers["value_omitted"] == b"MSG_SIZE_TOO_LARGE"
    assert headers["value_sha256"] == hashlib.sha256(b"x" * 10).hexdigest().encode()


def test_a_record_produced_to_the_topic_directly_is_taken_as_it_is():
    record = Forwarded(Message("gpt-send-repartition", 2, 8, b"k", b"{}", [("a", b"b")]))
    assert record.key() == b"k" and record.headers() == [("a", b"b")]
    assert record.source == ("gpt-send-repartition", 2, 8)
