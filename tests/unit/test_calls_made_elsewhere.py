"""A request whose model call another worker made (its partition moved meanwhile,
or that worker stopped or crashed) is not sent to the model again while that
call can still land: the worker waits for its outcome and answers from it, and
calls the model itself only once that call was abandoned or its time is up
(ChatPolicy.call_timeout and call_slack from when the call last went out,
bounded by the request's deadline).

Two ChatServices on one event store stand for two worker processes; the clock is
the real one, because the waits are."""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from adapters.event_store import ChatRecords
from adapters.system_clock import SystemClock
from domain.conversation import Conversation, conversation_id
from tests.unit.fakes import FakeModel, ask, make_service, wire


SLACK = 1.0  # ChatPolicy.call_slack here (5 s by default)


def two_workers(call_timeout: float = 60.0, delay: float = 0.0):
    records = ChatRecords(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    clock = SystemClock()
    first, first_model = make_service(
        FakeModel(delay), records=records, clock=clock, call_timeout=call_timeout, call_slack=SLACK
    )
    second, second_model = make_service(
        records=records, clock=clock, call_timeout=call_timeout, call_slack=SLACK
    )
    return records, (first, first_model), (second, second_model)


async def until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def received_elsewhere(records: ChatRecords, request_id: str, message: str, worker: str) -> None:
    """A request received by a worker that is gone now (crashed: nothing more of
    its call is recorded), just now."""
    conversation = Conversation("ada@example.com")
    conversation.receive_message(
        request_id=request_id, message=message, image_digests=[], model="gpt-4o-mini",
        max_tokens=4000, temperature=0.7, system_prompt=None, caller_context=None,
        history_turns=0, received_at=datetime.now(UTC).isoformat(), worker=worker,
    )
    records.save(conversation)


async def test_a_call_out_from_another_worker_is_waited_for_and_its_reply_is_the_answer():
    _, (first, first_model), (second, second_model) = two_workers(delay=1.0)
    first_answer = asyncio.create_task(wire(first, ask("r1", "hello")))
    await until(lambda: first_model.calls)  # the first worker's call is out ...
    second_answer = await wire(second, ask("r1", "hello"))  # ... when the record moves
    assert second_answer == await first_answer
    assert second_answer["response"] == "answer to hello"
    assert len(first_model.calls) == 1 and second_model.calls == []


async def test_a_call_that_can_no_longer_land_is_made_again_once_its_time_is_up():
    records, _, (second, second_model) = two_workers(call_timeout=0.6)
    received_elsewhere(records, "r1", "hello", worker="crashed-worker")
    started = time.monotonic()
    answer = await wire(second, ask("r1", "hello"))
    assert time.monotonic() - started >= 1.5  # it waited for the other call's time
    assert answer["response"] == "answer to hello" and len(second_model.calls) == 1
    events = records.events.get(conversation_id("ada@example.com"))
    assert [type(e).__name__ for e in events][-2:] == ["ModelCallTakenOver", "ReplyRecorded"]


async def test_a_worker_that_took_a_call_over_is_waited_for_in_turn():
    """The taken-over call is the one out now: a third worker waits for it, not
    for the first call's (long past) time."""
    records, _, (second, second_model) = two_workers(call_timeout=0.6)
    received_elsewhere(records, "r1", "hello", worker="crashed-worker")
    second_model.delay = 1.5
    second_answer = asyncio.create_task(wire(second, ask("r1", "hello")))
    await until(lambda: second_model.calls, timeout=3)
    third, third_model = make_service(
        records=records, clock=SystemClock(), call_timeout=5.0, call_slack=SLACK
    )
    assert await wire(third, ask("r1", "hello")) == await second_answer
    assert third_model.calls == [] and len(second_model.calls) == 1


async def test_a_call_its_worker_abandoned_is_made_again_at_once():
    _, (first, first_model), (second, second_model) = two_workers(delay=30.0)
    first_answer = asyncio.create_task(wire(first, ask("r1", "hello")))
    await until(lambda: first_model.calls)
    first_answer.cancel()  # its partition moved before it was sent, or the worker stopped
    await asyncio.gather(first_answer, return_exceptions=True)
    started = time.monotonic()
    answer = await wire(second, ask("r1", "hello"))
    assert time.monotonic() - started < 2.0  # not the call's 60 s
    assert answer["response"] == "answer to hello" and len(second_model.calls) == 1
    await first.close()


async def test_a_call_this_worker_made_and_that_ended_is_not_waited_for():
    """Received by this very worker, whose call for it is no longer out (a
    conflict, a cancellation whose record was lost): nothing can land, no wait."""
    records, _, (second, second_model) = two_workers()
    received_elsewhere(records, "r1", "hello", worker=second.worker)
    started = time.monotonic()
    answer = await wire(second, ask("r1", "hello"))
    assert time.monotonic() - started < 1.0
    assert answer["response"] == "answer to hello" and len(second_model.calls) == 1


async def test_the_wait_ends_at_the_requests_deadline():
    records, _, (second, second_model) = two_workers(call_timeout=60.0)
    received_elsewhere(records, "r1", "hello", worker="crashed-worker")
    started = time.monotonic()
    answer = await wire(second, ask("r1", "hello", deadline=time.time() + 0.5))
    assert 0.4 <= time.monotonic() - started < 3.0
    assert answer["error"]["type"] == "upstream_error" and second_model.calls == []


class LateSlots:
    """Every call waits `wait` seconds for its turn (the rate limit, say)."""

    def __init__(self, wait: float) -> None:
        self.wait = wait

    @asynccontextmanager
    async def slot(self, priority=0, call=None, since=None):
        await asyncio.sleep(self.wait)
        yield

    def settle(self, call, reply) -> None:
        pass


async def test_a_call_sent_well_after_it_was_received_is_waited_for_from_when_it_was_sent():
    """Received at t, sent at t + 1.3 (it waited for its turn), answered at t + 2.5:
    with calls of at most 1.25 s (and 1 s of slack), a call counted from t would
    be over at t + 2.25."""
    records = ChatRecords(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    clock = SystemClock()
    first, first_model = make_service(
        FakeModel(1.2), service_parts={"slots": LateSlots(1.3)}, records=records, clock=clock,
        call_timeout=1.25, call_slack=SLACK,
    )
    second, second_model = make_service(
        records=records, clock=clock, call_timeout=1.25, call_slack=SLACK
    )
    first_answer = asyncio.create_task(wire(first, ask("r1", "hello")))
    await until(lambda: records.conversation(conversation_id("ada@example.com")) is not None)
    second_answer = await wire(second, ask("r1", "hello"))
    assert second_answer == await first_answer
    assert len(first_model.calls) == 1 and second_model.calls == []
    events = records.events.get(conversation_id("ada@example.com"))
    assert [type(e).__name__ for e in events][-3:] == [
        "UserMessageReceived", "ModelCallSent", "ReplyRecorded"
    ]


async def test_a_call_still_waiting_for_its_turn_when_another_worker_took_it_over_is_not_sent():
    """Received at t, still waiting for its turn at t + 1.5, when its time as
    counted from t is up: the worker that took it over calls, and this one,
    its turn come at t + 2, sends nothing and answers from that call."""
    records = ChatRecords(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    clock = SystemClock()
    first, first_model = make_service(
        service_parts={"slots": LateSlots(2.0)}, records=records, clock=clock,
        call_timeout=0.5, call_slack=SLACK,
    )
    second, second_model = make_service(
        FakeModel(0.3), records=records, clock=clock, call_timeout=0.5, call_slack=SLACK
    )
    first_answer = asyncio.create_task(wire(first, ask("r1", "hello")))
    await until(lambda: records.conversation(conversation_id("ada@example.com")) is not None)
    second_answer = await wire(second, ask("r1", "hello"))
    assert await first_answer == second_answer
    assert first_model.calls == [] and len(second_model.calls) == 1
    events = records.events.get(conversation_id("ada@example.com"))
    assert [type(e).__name__ for e in events][-3:] == [
        "UserMessageReceived", "ModelCallTakenOver", "ReplyRecorded"
    ]


async def test_a_retry_going_out_well_after_the_first_attempt_is_recorded_as_sent():
    """The first attempt fails at once, the retry goes 1.2 s later: from then on,
    others wait for the retry's whole time, not for the first attempt's."""
    from application.model_retries import RetryingModel
    from application.ports import ModelError

    records = ChatRecords(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    model = FakeModel()
    model.script.append(ModelError("upstream_error", "try again", retryable=True))

    async def backoff(_seconds: float) -> None:
        await asyncio.sleep(1.2)

    retrying = RetryingModel(model, max_retries=1, sleep=backoff)  # type: ignore[arg-type]
    service, _ = make_service(
        retrying, records=records, clock=SystemClock(), call_timeout=5.0, call_slack=SLACK
    )
    answer = await wire(service, ask("r1", "hello"))
    assert answer["response"] == "answer to hello" and len(model.calls) == 2
    events = records.events.get(conversation_id("ada@example.com"))
    assert [type(e).__name__ for e in events][-3:] == [
        "UserMessageReceived", "ModelCallSent", "ReplyRecorded"
    ]


async def test_a_call_held_back_at_an_open_circuit_says_so_before_it_goes():
    """CallProgress.going_again is awaited when a held call finally goes (the use
    case records it then), and may stop it (another worker took it over)."""
    from application.circuit_breaker import CircuitBreaker
    from application.ports import ChatMessage, ModelCall, ModelError

    model = FakeModel()
    model.script.append(ModelError("upstream_error", "down", retryable=True))
    breaker = CircuitBreaker(model, failure_threshold=1, probe_interval=0.2)  # type: ignore[arg-type]
    first = ModelCall("gpt-4o-mini", [ChatMessage("user", "a")], 10, 0.7)
    try:
        await breaker.complete(first)
    except ModelError:
        pass  # the circuit is open now
    held = ModelCall("gpt-4o-mini", [ChatMessage("user", "b")], 10, 0.7)
    going = []

    async def note() -> None:
        going.append(len(model.calls))

    held.progress.resending = note
    await breaker.complete(held)  # waits for the probe interval, then goes as the probe
    assert going == [1] and len(model.calls) == 2

    class TakenOver(Exception):
        pass

    async def stop() -> None:
        raise TakenOver

    model.script.append(ModelError("upstream_error", "down", retryable=True))
    try:
        await breaker.complete(ModelCall("gpt-4o-mini", [ChatMessage("user", "c")], 10, 0.7))
    except ModelError:
        pass  # open again
    stopped = ModelCall("gpt-4o-mini", [ChatMessage("user", "d")], 10, 0.7)
    stopped.progress.resending = stop
    try:
        await breaker.complete(stopped)
        raise AssertionError("it went")
    except TakenOver:
        pass
    assert len(model.calls) == 3  # it did not go; and the next probe may go
    assert await breaker.complete(ModelCall("gpt-4o-mini", [ChatMessage("user", "e")], 10, 0.7))
