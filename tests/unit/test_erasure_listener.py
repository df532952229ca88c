"""The erasure listener, record by record: every erasure request ends applied or
dead-lettered with its reason and is committed then; nothing in a record, and no
error of the consumer, ends it while the worker runs."""

from __future__ import annotations

import asyncio
import json
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition
from eventsourcing.persistence import OperationalError
from opentelemetry import trace

from adapters.kafka import KafkaSettings
from application.privacy import Erasure
from entrypoints.worker import erasure_listener
from entrypoints.worker.erasure_listener import (
    ERASURE_STALL_AFTER,
    MAX_ERASURE_BYTES,
    ErasureListener,
    UnreadableErasure,
    read_erasure,
)

TOPIC = "gpt-erase"
SETTINGS = SimpleNamespace(
    BOOTSTRAP_SERVER="127.0.0.1:9", KAFKA=KafkaSettings({"bootstrap.servers": "127.0.0.1:9"}),
    CONSUMER_GROUP="g", ERASE_TOPIC=TOPIC,
)

BOMB = b"[" * 10000 + b"]" * 10000
HOSTILE = {
    "bomb": (BOMB, "nested too deeply"),
    "not-utf8": (b'{"user_email": "\xff\xfe@x.com"}', "not UTF-8"),
    "surrogate": (b'{"user_email": "\\ud800@x.com"}', "invalid 'user_email': the address is not valid text"),
    "list": (b'["a@x.com"]', "must be a JSON object"),
    "missing": (b'{"requested_by": "dpo"}', "'user_email' is required"),
    "number": (b'{"user_email": 17}', "'user_email' is required"),
    "huge": (json.dumps({"user_email": "a@x.com", "pad": "x" * 2_000_000}).encode(), "the limit is"),
    "no-value": (None, "has no value"),
    "not-json": (b"{not an erasure", "not valid JSON"),
    "control": (b'{"user_email": "a\\u0000b@x.com"}', "control characters"),
    "requested-by": (b'{"user_email": "a@x.com", "requested_by": "dpo\\u001b[31m"}', "'requested_by'"),
    "requested-by-long": (json.dumps({"user_email": "a@x.com", "requested_by": "x" * 201}).encode(),
                          "'requested_by'"),
    "requested-by-number": (b'{"user_email": "a@x.com", "requested_by": 5}', "'requested_by'"),
    # An address no version took (one with a bad international domain that earlier
    # versions took is erased under its older form: application/privacy.py).
    "not-an-address": (json.dumps({"user_email": "ada\u0007@example.com"}).encode(), "control characters"),
}
REAL = json.dumps({"user_email": "Grace@Example.com", "requested_by": "dpo ticket 17"}).encode()


def record(offset: int, key: str, value: bytes | None) -> Message:
    return Message(topic=TOPIC, partition=0, offset=offset, key=key.encode(), value=value,
                   headers=None, error=None)


def consumer_error(code: int) -> Message:
    return Message(topic=TOPIC, partition=0, offset=-1, key=None, value=None, headers=None,
                   error=KafkaError(code))


class Worker:
    """What the listener sees of the worker: whether it stops."""

    def __init__(self) -> None:
        self.stop = False

    def stopping(self) -> bool:
        return self.stop


class FakeConsumer:
    """Polls a script: records, error events, or exceptions raised by poll; the
    worker stops once the script is done. Commits are recorded (or fail, as told)."""

    def __init__(self, script: list[Any], worker: Worker) -> None:
        self.script = script
        self.worker = worker
        self.committed: list[int] = []
        self.commit_failures = 0
        self.opened = 0
        self.closed = 0

    def __call__(self, _config: dict[str, Any]) -> FakeConsumer:  # stands for the class
        self.opened += 1
        return self

    def subscribe(self, topics: list[str], on_revoke, on_lost) -> None:
        assert topics == [TOPIC]
        self.on_revoke, self.on_lost = on_revoke, on_lost

    def poll(self, _timeout: float) -> Message | None:
        if not self.script:
            self.worker.stop = True
            return None
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step

    def commit(self, *, message: Message, asynchronous: bool) -> None:
        assert asynchronous is False
        if self.commit_failures:
            self.commit_failures -= 1
            raise KafkaException(KafkaError(KafkaError.REQUEST_TIMED_OUT))
        self.committed.append(message.offset() + 1)

    def close(self) -> None:
        self.closed += 1


class FakePrivacy:
    def __init__(self) -> None:
        self.erased: list[tuple[str, str]] = []
        self.errors: list[BaseException] = []

    async def erase_user(self, user_email: str, requested_by: str) -> Erasure:
        if self.errors:
            raise self.errors.pop(0)
        self.erased.append((user_email, requested_by))
        return Erasure(["c-1"], 1)


class FakeResponder:
    """Dead letters delivered at once, unless told otherwise."""

    def __init__(self) -> None:
        self.letters: list[tuple[bytes | None, bytes | None, str]] = []
        self.failures: list[BaseException] = []
        self.never_delivered = False
        self.failed: list[BaseException] = []
        self.attempts = 0

    def dead_letter_erasure(self, message: Message, reason: str) -> asyncio.Future[None]:
        self.attempts += 1
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        value = message.value()
        if self.never_delivered:
            return done
        if self.failures:
            done.set_exception(self.failures.pop(0))
        else:
            self.letters.append((message.key(), value, reason))
            done.set_result(None)
        return done

    def fail(self, error: BaseException) -> None:
        self.failed.append(error)


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(erasure_listener, "PAUSE_MIN", 0.01)
    monkeypatch.setattr(erasure_listener, "PAUSE_MAX", 0.02)
    monkeypatch.setattr(erasure_listener, "STOP_CHECK_INTERVAL", 0.01)


def listener_for(script, monkeypatch, responder=None, privacy=None):
    worker = Worker()
    consumer = FakeConsumer(script, worker)
    monkeypatch.setattr(erasure_listener, "Consumer", consumer)
    listener = ErasureListener(
        privacy or FakePrivacy(), SETTINGS, responder or FakeResponder(),
        trace.get_tracer(__name__), worker.stopping,
    )
    return listener, consumer, worker


async def serve(listener: ErasureListener) -> None:
    await asyncio.wait_for(listener.serve(), 20)


async def test_every_hostile_record_is_dead_lettered_with_its_reason_and_the_real_one_applied(
    monkeypatch, caplog
):
    script = [record(n, key, value) for n, (key, (value, _)) in enumerate(HOSTILE.items())]
    script.append(record(len(script), "real", REAL))
    listener, consumer, _ = listener_for(script, monkeypatch)
    caplog.set_level(logging.INFO)

    await serve(listener)

    letters = {key.decode(): (value, reason) for key, value, reason in listener.responder.letters}
    assert set(letters) == set(HOSTILE)
    for key, (value, expected) in HOSTILE.items():
        assert letters[key][0] == value, key  # the original bytes (the responder seals them)
        assert expected in letters[key][1], (key, letters[key][1])
    assert listener.privacy.erased == [("Grace@Example.com", "dpo ticket 17")]
    assert consumer.committed == list(range(1, len(HOSTILE) + 2))  # each one, in order
    assert (listener.applied, listener.dead_lettered) == (1, len(HOSTILE))
    assert not [r for r in caplog.records if r.exc_info]  # no traceback for a record
    assert "\ud800" not in caplog.text and "Grace" not in caplog.text
    assert listener.status()["running"] is False


async def test_an_unexpected_error_of_the_erasure_is_a_dead_letter_not_a_dead_task(monkeypatch):
    privacy = FakePrivacy()
    privacy.errors = [RuntimeError("bug"), KeyError("bug")]
    monkeypatch.setattr(erasure_listener, "persevere", _once)
    script = [record(0, "e-1", REAL), record(1, "e-2", REAL), record(2, "e-3", REAL)]
    listener, consumer, _ = listener_for(script, monkeypatch, privacy=privacy)

    await serve(listener)

    reasons = {key: reason for key, _, reason in listener.responder.letters}
    assert reasons == {b"e-1": "erasure failed: RuntimeError", b"e-2": "erasure failed: KeyError"}
    assert len(privacy.erased) == 1 and consumer.committed == [1, 2, 3]


async def _once(_doing, _stopping, work, *args):
    return await work(*args)  # no retries: the error itself reaches the listener


async def test_an_erasure_that_keeps_failing_is_given_up_and_dead_lettered(monkeypatch):
    privacy = FakePrivacy()
    privacy.errors = [ValueError("bug")] * 3
    listener, consumer, _ = listener_for([record(0, "e-1", REAL)], monkeypatch, privacy=privacy)

    await serve(listener)

    assert [(k, r) for k, _, r in listener.responder.letters] == [(b"e-1", "erasure failed: ValueError")]
    assert consumer.committed == [1]


async def test_the_worker_stopping_while_the_store_is_down_commits_nothing(monkeypatch):
    privacy = FakePrivacy()
    privacy.errors = [OperationalError("down")] * 100
    listener, consumer, worker = listener_for([record(0, "e-1", REAL)], monkeypatch, privacy=privacy)
    asyncio.get_running_loop().call_later(0.3, setattr, worker, "stop", True)

    await serve(listener)

    assert consumer.committed == [] and listener.responder.letters == []
    assert consumer.closed == 1


async def test_a_dead_letter_not_delivered_is_sent_again_before_its_record_is_committed(monkeypatch):
    responder = FakeResponder()
    responder.failures = [KafkaException(KafkaError(KafkaError._MSG_TIMED_OUT))] * 2
    listener, consumer, _ = listener_for([record(0, "bad", b"[]")], monkeypatch, responder=responder)

    await serve(listener)

    assert responder.attempts == 3 and len(responder.letters) == 1
    assert consumer.committed == [1] and listener.dead_lettered == 1
    assert responder.failed == []


async def test_a_fatal_producer_error_stops_the_worker_and_commits_nothing(monkeypatch):
    responder = FakeResponder()
    fatal = KafkaError(KafkaError._FENCED, fatal=True)
    responder.failures = [KafkaException(fatal)] * 100
    listener, consumer, worker = listener_for([record(0, "bad", b"[]")], monkeypatch,
                                              responder=responder)
    responder.fail = lambda error: (responder.failed.append(error), setattr(worker, "stop", True))

    await serve(listener)

    assert len(responder.failed) == 1 and consumer.committed == []


async def test_a_dead_letter_the_cluster_refuses_even_without_its_value_is_logged_and_gone_past(
    monkeypatch, caplog
):
    responder = FakeResponder()
    responder.failures = [KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))]
    script = [record(0, "bad", b"[]"), record(1, "real", REAL)]
    listener, consumer, _ = listener_for(script, monkeypatch, responder=responder)

    await serve(listener)

    assert responder.attempts == 1 and consumer.committed == [1, 2]
    assert (listener.refused, listener.dead_lettered, listener.applied) == (1, 0, 1)
    assert "refused even without its value (MSG_SIZE_TOO_LARGE)" in caplog.text


async def test_when_the_worker_stops_before_the_dead_letter_is_delivered_nothing_is_committed(monkeypatch):
    responder = FakeResponder()
    responder.never_delivered = True
    listener, consumer, worker = listener_for([record(0, "bad", b"[]")], monkeypatch, responder=responder)
    asyncio.get_running_loop().call_later(0.2, setattr, worker, "stop", True)

    await serve(listener)

    assert consumer.committed == [] and listener.dead_lettered == 0


async def test_consumer_errors_are_logged_and_waited_out(monkeypatch, caplog):
    script = [
        consumer_error(KafkaError._TRANSPORT),
        RuntimeError("poll broke"),  # the consumer is closed and opened again
        consumer_error(KafkaError._PARTITION_EOF),
        KafkaException(KafkaError(KafkaError._FATAL, fatal=True)),
        record(7, "e-1", REAL),
        None,
        record(8, "e-2", REAL),
    ]
    listener, consumer, _ = listener_for(script, monkeypatch)
    consumer.commit_failures = 1  # e-1's commit fails: tried again before the next poll

    await serve(listener)

    assert listener.applied == 2 and consumer.committed == [8, 9]
    assert consumer.opened == 3 and consumer.closed == 3
    assert "erasure consumer failed" in caplog.text and "not committed yet" in caplog.text


async def test_a_fatal_consumer_error_event_opens_a_new_consumer(monkeypatch):
    fatal = Message(topic=TOPIC, partition=0, offset=-1, key=None, value=None, headers=None,
                    error=KafkaError(KafkaError._FATAL, fatal=True))
    listener, consumer, _ = listener_for([fatal, record(0, "e-1", REAL)], monkeypatch)

    await serve(listener)

    assert consumer.opened == 2 and consumer.committed == [1]


async def test_opening_the_consumer_failing_is_tried_again(monkeypatch):
    worker = Worker()
    consumer = FakeConsumer([record(0, "e-1", REAL)], worker)
    failures = [KafkaException(KafkaError(KafkaError._INVALID_ARG))] * 2

    def open_consumer(config):
        if failures:
            raise failures.pop()
        return consumer(config)

    monkeypatch.setattr(erasure_listener, "Consumer", open_consumer)
    listener = ErasureListener(FakePrivacy(), SETTINGS, FakeResponder(),
                               trace.get_tracer(__name__), worker.stopping)
    await serve(listener)
    assert consumer.committed == [1]


def test_status_fails_when_not_running_or_not_polling_unless_the_worker_stops():
    worker = Worker()
    now = [100.0]
    listener = ErasureListener(FakePrivacy(), SETTINGS, FakeResponder(),
                               trace.get_tracer(__name__), worker.stopping, now=lambda: now[0])
    assert listener.status() == {"running": False, "seconds_since_poll": None, "applied": 0,
                                 "dead_lettered": 0, "refused": 0,
                                 "problem": "the erasure consumer is not running"}
    listener._running, listener._started_at = True, 100.0
    now[0] = 100.0 + ERASURE_STALL_AFTER + 1
    assert "has not polled" in listener.status()["problem"]
    listener._last_poll = now[0] - 0.4
    assert "problem" not in listener.status() and listener.status()["seconds_since_poll"] == 0.4
    now[0] += ERASURE_STALL_AFTER + 1
    assert listener.status()["problem"].startswith("the erasure consumer has not polled for")
    worker.stop = True
    assert "problem" not in listener.status()


@pytest.mark.parametrize("value", [v for v, _ in HOSTILE.values()])
def test_a_hostile_value_is_refused_with_a_reason_that_does_not_quote_it(value):
    with pytest.raises(UnreadableErasure) as refused:
        read_erasure(value)
    assert "@" not in str(refused.value) and len(str(refused.value)) < 200


def test_a_request_reads_as_sent_with_a_default_requester():
    assert read_erasure(b'{"user_email": " A@B\\u00fccher.de "}') == (" A@B\u00fccher.de ", "user")
    assert read_erasure(b'{"user_email": "a@b.c", "requested_by": null}') == ("a@b.c", "user")
    assert read_erasure(b'{"user_email": "a@b.c", "requested_by": "DPO \\u00e9"}') == ("a@b.c", "DPO \u00e9")
    with pytest.raises(UnreadableErasure):
        read_erasure(b" " * (MAX_ERASURE_BYTES + 1))


async def test_a_commit_still_pending_is_tried_once_more_when_the_partition_is_revoked_then_dropped(
    monkeypatch,
):
    script = [record(0, "e-1", REAL)]
    listener, consumer, _ = listener_for(script, monkeypatch)
    consumer.commit_failures = 2  # after e-1, and again before the next poll
    revoke = []

    def poll(_timeout):  # a rebalance takes the partition during the poll after e-1
        if script:
            return script.pop(0)
        if not revoke:
            revoke.append(True)
            consumer.on_revoke(consumer, [TopicPartition(TOPIC, 0)])
            return None
        consumer.worker.stop = True
        return None

    monkeypatch.setattr(consumer, "poll", poll)
    await serve(listener)
    assert consumer.committed == [1] and listener._pending_commit is None


async def test_a_lost_partition_drops_the_pending_commit(monkeypatch):
    listener, consumer, _ = listener_for([], monkeypatch)
    listener._pending_commit = record(3, "e", REAL)
    listener._on_lost(consumer, [TopicPartition("other", 0)])
    assert listener._pending_commit is not None
    listener._on_lost(consumer, [TopicPartition(TOPIC, 0)])
    assert listener._pending_commit is None
