"""How a `gpt-send` record travels through the repartition topic.

The repartition stage re-keys each request record by its conversation and hands
it over unchanged otherwise: same value, same timestamp, the producer's headers
first, then the handover's own headers, which say where the record came from and
what its key was. The answering stage reads it back as `Forwarded`: a record that
looks like the one the platform produced (key, headers, source coordinates), while
its offset is the repartition topic's, which is what the answering stage commits.
"""

from __future__ import annotations

import hashlib

from confluent_kafka import Message

Headers = list[tuple[str, bytes]]

# The first of the handover's own headers; everything from its last occurrence on
# is the handover's (a producer's header of the same name comes before it).
FORWARDED = "chater.forwarded"
SOURCE_TOPIC = "chater.source_topic"
SOURCE_PARTITION = "chater.source_partition"
SOURCE_OFFSET = "chater.source_offset"
SOURCE_KEY = "chater.source_key"  # absent when the record had no key
# A record the repartition topic would not take (too large for it, say) is handed
# over without its value: why, and the SHA-256 of the value it had.
REFUSED = "chater.refused"
VALUE_SHA256 = "chater.value_sha256"


def handover_headers(message: Message, refused: str | None = None) -> Headers:
    """The record's own headers, then the handover's."""
    key = message.key()
    own: Headers = [
        (FORWARDED, b"1"),
        (SOURCE_TOPIC, (message.topic() or "").encode()),
        (SOURCE_PARTITION, str(message.partition()).encode()),
        (SOURCE_OFFSET, str(message.offset()).encode()),
    ]
    if key is not None:
        own.append((SOURCE_KEY, key))
    if refused is not None:
        own.append((REFUSED, refused.encode()))
        value = message.value()
        if value:
            own.append((VALUE_SHA256, hashlib.sha256(value).hexdigest().encode()))
    return [*(message.headers() or []), *own]


class Forwarded:
    """A record of the repartition topic, read as the request record it carries.

    `key()`, `headers()` and `source` are the original record's; `topic()`,
    `partition()` and `offset()` are the repartition topic's (the offsets the
    answering stage tracks and commits); `value()` and `timestamp()` are the
    same in both. A record without the handover's headers is taken as it is.
    """

    __slots__ = ("_message", "_key", "_headers", "source", "refused", "value_sha256")

    def __init__(self, message: Message) -> None:
        self._message = message
        headers = message.headers() or []
        start = max((i for i, (name, _) in enumerate(headers) if name == FORWARDED), default=None)
        if start is None:
            self._key = message.key()
            self._headers = headers
            self.source = (message.topic() or "", message.partition() or 0, message.offset() or 0)
            self.refused: str | None = None
            self.value_sha256: bytes | None = None
            return
        own = dict(headers[start:])
        self._headers = headers[:start]
        self._key = own.get(SOURCE_KEY)
        self.source = (
            (own.get(SOURCE_TOPIC) or b"").decode(errors="replace"),
            _number(own.get(SOURCE_PARTITION)),
            _number(own.get(SOURCE_OFFSET)),
        )
        refused = own.get(REFUSED)
        self.refused = refused.decode(errors="replace") if refused is not None else None
        self.value_sha256 = own.get(VALUE_SHA256)

    def key(self) -> bytes | None:
        return self._key

    def headers(self) -> Headers:
        return self._headers

    def value(self) -> bytes | None:
        return self._message.value()

    def timestamp(self) -> tuple[int, int]:
        return self._message.timestamp()

    def topic(self) -> str | None:
        return self._message.topic()

    def partition(self) -> int | None:
        return self._message.partition()

    def offset(self) -> int | None:
        return self._message.offset()

    def error(self) -> object:
        return self._message.error()


def source_of(message: Message | Forwarded) -> tuple[str, int, int]:
    """Where the platform produced the record: topic, partition, offset."""
    if isinstance(message, Forwarded):
        return message.source
    return (message.topic() or "", message.partition() or 0, message.offset() or 0)


def _number(value: bytes | None) -> int:
    try:
        return int(value or b"-1")
    except ValueError:
        return -1
