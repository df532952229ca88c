"""Records no worker may stop on, through a real worker and broker: an oversized key,
a large invalid record, a response the cluster refuses, and a stalled lane."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time

import pytest

from adapters.dead_letters import DeadLetterSeal
from tests.support.worker import RunningWorker

pytestmark = pytest.mark.integration


def ask(user: str, message: str, **fields) -> bytes:
    return json.dumps({"user_email": user, "message": message, **fields}).encode()


def opened(value: bytes | None) -> bytes | None:
    return None if value is None else DeadLetterSeal("test-secret").open(value)


def test_an_oversized_key_and_a_large_invalid_record_are_dead_lettered_whole(broker, in_process_settings):
    huge_key = b"k" * 1_000_000
    garbage = b"{" + b"x" * 3_000_000  # invalid JSON, under MAX_REQUEST_BYTES
    with RunningWorker(broker.bootstrap_server, **in_process_settings) as worker:
        worker.send(huge_key, ask("ada@example.com", "hello"))
        worker.send("garbage", garbage)
        worker.send("after", ask("ada@example.com", "still there?"))
        responses = dict(worker.responses(2, timeout=60))
        letters = worker.dead_letters(2, timeout=60)
        assert worker.worker.alive()

    # The oversized key gets no response (none could carry it); the others one each.
    assert set(responses) == {b"garbage", b"after"}
    assert responses[b"garbage"]["error"]["type"] == "invalid_request"
    assert "response" in responses[b"after"]
    by_reason = {headers["reason"].decode(): (key, value) for key, value, headers in letters}
    key, value = by_reason["the record key is 1000000 bytes; the limit is 4096"]
    assert key == huge_key and opened(value) == ask("ada@example.com", "hello")
    key, value = by_reason["the record value is not valid JSON"]
    assert key == b"garbage" and opened(value) == garbage


def test_a_record_the_repartition_topic_refuses_ends_as_an_error_and_a_dead_letter(
    broker, in_process_settings
):
    # With MAX_REQUEST_BYTES=1000 the worker produces records of at most 1,000,000
    # bytes: a 1.2 MB record on gpt-send cannot be handed over whole.
    huge = b"{" + b"x" * 1_200_000
    with RunningWorker(broker.bootstrap_server, MAX_REQUEST_BYTES=1000, **in_process_settings) as worker:
        worker.send("huge", huge)
        worker.send("after", ask("ada@example.com", "still there?"))
        responses = dict(worker.responses(2, timeout=60))
        (key, value, headers), = worker.dead_letters(1, timeout=60)
        assert worker.worker.alive()

    assert responses[b"huge"]["error"]["type"] == "invalid_request"
    assert "could not be handed over" in responses[b"huge"]["error"]["message"]
    assert "response" in responses[b"after"]
    assert key == b"huge" and value is None
    assert headers["value_omitted"] == b"MSG_SIZE_TOO_LARGE"
    assert headers["value_sha256"] == hashlib.sha256(huge).hexdigest().encode()
    assert headers["source_topic"] == worker.settings.REQUEST_TOPIC.encode()
    assert headers["source_offset"] == b"0"


def test_a_response_the_cluster_refuses_becomes_an_error_and_a_dead_letter(
    broker, fake_openai, in_process_settings
):
    # Records beyond MAX_REQUEST_BYTES + MAX_KEY_BYTES + 64 KiB (and 1,000,000 bytes)
    # are refused by the producer, as a broker would refuse them: a 1.5 MB answer is one.
    fake_openai.script([{"match": "long one", "reply": "word " * 300_000}])
    with RunningWorker(broker.bootstrap_server, MAX_REQUEST_BYTES=1000, **in_process_settings) as worker:
        worker.send("long", ask("ada@example.com", "the long one, please"))
        worker.send("short", ask("ada@example.com", "and a short one"))
        responses = dict(worker.responses(2, timeout=60))
        (key, value, headers), = worker.dead_letters(1, timeout=60)
        assert worker.worker.alive()

    assert responses[b"long"]["error"] == {
        "type": "internal_error",
        "message": "The answer could not be delivered (MSG_SIZE_TOO_LARGE); "
                   "the request is kept as a dead letter.",
    }
    assert "response" in responses[b"short"]
    assert key == b"long" and opened(value) == ask("ada@example.com", "the long one, please")
    assert headers["error_type"] == b"undeliverable_response"
    assert headers["reason"] == b"the response could not be produced: MSG_SIZE_TOO_LARGE"


def test_a_request_id_too_long_in_an_envelope_is_refused_without_a_response(broker, in_process_settings):
    envelope = json.dumps({"key": "e" * 5000, "value": {"user_email": "a@b.co", "message": "x"}})
    with RunningWorker(broker.bootstrap_server, **in_process_settings) as worker:
        worker.send(None, envelope.encode())
        worker.send("after", ask("ada@example.com", "hello"))
        (key, _), = worker.responses(1, timeout=60)
        (_, value, headers), = worker.dead_letters(1, timeout=60)
    assert key == b"after"
    assert headers["reason"] == b"the envelope's key is 5000 bytes; the limit is 4096"
    assert opened(value) == envelope.encode()


def test_a_record_the_service_fails_on_every_time_ends_alone(broker, in_process_settings):
    with RunningWorker(broker.bootstrap_server, **in_process_settings) as worker:
        service = worker.worker.service
        answer = service.handle

        async def buggy(request):
            if request.request_id == "buggy":
                raise KeyError("a bug that only this record meets")
            return await answer(request)

        service.handle = buggy
        worker.send("buggy", ask("ada@example.com", "hello"))
        worker.send("after", ask("ada@example.com", "still there?"))  # same conversation
        responses = dict(worker.responses(2, timeout=60))
        (key, value, headers), = worker.dead_letters(1, timeout=60)
        assert worker.worker.alive()

    assert responses[b"buggy"]["error"] == {
        "type": "internal_error", "message": "The service could not answer this request.",
    }
    assert "response" in responses[b"after"]
    assert key == b"buggy" and opened(value) == ask("ada@example.com", "hello")
    assert headers["reason"] == b"the record could not be answered: KeyError"
    assert headers["error_type"] == b"internal_error"


def test_a_lane_that_makes_no_progress_is_reported_and_the_worker_not_alive(broker, in_process_settings):
    with RunningWorker(
        broker.bootstrap_server, REQUEST_DEADLINE=1, STALL_GRACE=1, SHUTDOWN_TIMEOUT=1, **in_process_settings
    ) as worker:
        service = worker.worker.service
        answer = service.handle

        async def hangs(request):
            if request.request_id == "hangs":
                await asyncio.Event().wait()  # a bug that never returns
            return await answer(request)

        service.handle = hangs
        worker.send("hangs", ask("ada@example.com", "hello"))
        worker.send("other", ask("bob@example.com", "hello"))  # another lane goes on
        (key, _), = worker.responses(1, timeout=60)
        assert key == b"other"
        health = worker.container.health()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and health.liveness()[0]:
            asyncio.run_coroutine_threadsafe(health.refresh(), worker._loop).result(10)
            time.sleep(0.2)
        asyncio.run_coroutine_threadsafe(health.refresh(), worker._loop).result(10)
        ready, report = health.report()
        assert health.liveness() == (False, "stalled")  # every dependency answers: a wedge
        assert not ready and report["checks"]["queue_depth"]["error"] == (
            "1 record(s) stalled: held past their deadline by more than STALL_GRACE"
        )
        assert [r.message.key() for r in worker.worker.stalled()] == [b"hangs"]
