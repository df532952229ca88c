import asyncio

import pytest

from application.circuit_breaker import CircuitBreaker
from application.ports import ChatMessage, ModelCall, ModelError
from tests.unit.fakes import FakeModel

CALL = ModelCall("gpt-4o-mini", [ChatMessage("user", "hi")], 10, 0.5)
DOWN = ModelError("upstream_error", "down", True)


async def test_repeated_failures_open_the_circuit_and_callers_wait_instead_of_failing():
    fake = FakeModel()
    fake.script = [DOWN] * 3
    breaker = CircuitBreaker(fake, failure_threshold=3, probe_interval=0.1)
    for _ in range(3):
        with pytest.raises(ModelError):
            await breaker.complete(CALL)
    assert breaker.state("gpt-4o-mini") == "open"
    waiting = [asyncio.create_task(breaker.complete(CALL)) for _ in range(5)]
    await asyncio.sleep(0.05)
    assert not any(task.done() for task in waiting) and len(fake.calls) == 3
    assert breaker.waiting() == {"gpt-4o-mini": 5}
    replies = await asyncio.wait_for(asyncio.gather(*waiting), 2)
    assert all(r.text == "answer to hi" for r in replies)
    assert breaker.state("gpt-4o-mini") == "closed" and len(fake.calls) == 3 + 5
    assert breaker.waiting() == {}


async def test_a_failed_probe_keeps_it_open_with_one_probe_at_a_time():
    fake = FakeModel()
    fake.script = [DOWN, DOWN, DOWN]
    now = [0.0]
    breaker = CircuitBreaker(fake, failure_threshold=2, probe_interval=1.0, monotonic=lambda: now[0])
    for _ in range(2):
        with pytest.raises(ModelError):
            await breaker.complete(CALL)
    now[0] = 1.5
    with pytest.raises(ModelError):  # the probe fails
        await breaker.complete(CALL)
    assert breaker.state("gpt-4o-mini") == "open"
    task = asyncio.create_task(breaker.complete(CALL))
    await asyncio.sleep(0.1)
    assert not task.done() and len(fake.calls) == 3  # no call before the next probe time
    now[0] = 3.0
    assert (await asyncio.wait_for(task, 2)).text == "answer to hi"
    assert breaker.state("gpt-4o-mini") == "closed"


async def test_bad_requests_do_not_count_against_the_provider():
    fake = FakeModel()
    fake.script = [ModelError("invalid_request", "bad")] * 5
    breaker = CircuitBreaker(fake, failure_threshold=2)
    for _ in range(5):
        with pytest.raises(ModelError):
            await breaker.complete(CALL)
    assert breaker.state("gpt-4o-mini") == "closed"


async def test_permanent_failures_do_not_open_it_and_each_model_has_its_own():
    from dataclasses import replace

    fake = FakeModel()
    fake.script = [ModelError("upstream_error", "bad key")] * 3 + [DOWN, DOWN]
    breaker = CircuitBreaker(fake, failure_threshold=2, probe_interval=60)
    for _ in range(3):
        with pytest.raises(ModelError):
            await breaker.complete(CALL)
    assert breaker.state("gpt-4o-mini") == "closed"
    for _ in range(2):
        with pytest.raises(ModelError):
            await breaker.complete(CALL)
    assert breaker.state("gpt-4o-mini") == "open"
    other = await asyncio.wait_for(breaker.complete(replace(CALL, model="gpt-4.1")), 1)
    assert other.model == "gpt-4.1"


QUOTA = ModelError("upstream_error", "The model provider's quota is exhausted.", pause="insufficient_quota")


async def test_an_account_wide_refusal_pauses_every_model_with_one_error_line_and_one_probe_per_interval(caplog):
    import time
    from dataclasses import replace

    fake = FakeModel()
    fake.script = [QUOTA, QUOTA]  # the first call, then the first probe
    sent_at: list[float] = []
    complete = fake.complete

    async def timed(call: ModelCall):
        sent_at.append(time.monotonic())
        return await complete(call)

    fake.complete = timed
    breaker = CircuitBreaker(fake, failure_threshold=2, probe_interval=0.3)
    call = replace(CALL)
    first = asyncio.create_task(breaker.complete(call))  # meets the refusal: waits, not fails
    await asyncio.sleep(0.05)
    assert not first.done() and breaker.paused() == "insufficient_quota"
    assert not call.progress.sent  # refused: never billed, a deadline here costs nothing
    others = [asyncio.create_task(breaker.complete(replace(CALL, model=m)))
              for m in ("gpt-4o-mini", "gpt-4.1", "gpt-4.1")]  # every model waits
    await asyncio.sleep(0.05)
    assert len(fake.calls) == 1 and breaker.paused_waiting() == 4
    assert not any(t.done() for t in others)
    replies = await asyncio.wait_for(asyncio.gather(first, *others), 5)
    assert sorted(r.model for r in replies) == ["gpt-4.1", "gpt-4.1", "gpt-4o-mini", "gpt-4o-mini"]
    # The first call, a refused probe, an answered probe, then the three others.
    assert len(fake.calls) == 3 + 3
    assert sent_at[1] - sent_at[0] >= 0.3 - 0.01 and sent_at[2] - sent_at[1] >= 0.3 - 0.01
    assert breaker.paused() is None and breaker.paused_waiting() == 0
    assert breaker.states() == {"gpt-4o-mini": "closed", "gpt-4.1": "closed"}
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "insufficient_quota" in errors[0].getMessage()
    assert "accepts this account again" in caplog.text


async def test_a_probe_answered_with_a_bad_request_resumes_and_that_request_gets_its_error():
    fake = FakeModel()
    fake.script = [QUOTA, ModelError("invalid_request", "bad")]
    breaker = CircuitBreaker(fake, probe_interval=0.05)
    with pytest.raises(ModelError, match="invalid_request"):
        await asyncio.wait_for(breaker.complete(CALL), 2)
    assert breaker.paused() is None
    assert (await breaker.complete(CALL)).text == "answer to hi"


async def test_a_probe_meeting_an_outage_keeps_the_pause_and_fails_as_an_outage_does():
    fake = FakeModel()
    fake.script = [QUOTA, DOWN]
    breaker = CircuitBreaker(fake, probe_interval=0.05)
    with pytest.raises(ModelError, match="down"):
        await asyncio.wait_for(breaker.complete(CALL), 2)
    assert breaker.paused() == "insufficient_quota"  # an outage says nothing about the quota
    assert (await asyncio.wait_for(breaker.complete(CALL), 2)).text == "answer to hi"
    assert breaker.paused() is None


async def test_a_call_cancelled_at_the_pause_lets_the_next_probe_go():
    fake = FakeModel(delay=0.2)
    fake.script = [QUOTA]
    breaker = CircuitBreaker(fake, probe_interval=0.05)
    first = asyncio.create_task(breaker.complete(CALL))
    await asyncio.sleep(0.3)  # paused; its probe is under way
    first.cancel()
    await asyncio.sleep(0)
    assert (await asyncio.wait_for(breaker.complete(CALL), 2)).text == "answer to hi"


def test_holds_back_while_open_until_the_probe_is_due():
    from application.circuit_breaker import _Circuit

    now = [10.0]
    breaker = CircuitBreaker(FakeModel(), probe_interval=5.0, monotonic=lambda: now[0])
    assert not breaker.holds_back("gpt-4o-mini")
    circuit = breaker._circuits["gpt-4o-mini"] = _Circuit()
    circuit.opened_at = 10.0
    assert breaker.holds_back("gpt-4o-mini")
    now[0] = 15.0  # the probe is due: a call goes as the probe
    assert not breaker.holds_back("gpt-4o-mini")
    circuit.probing = True
    assert breaker.holds_back("gpt-4o-mini")


async def test_a_probe_meeting_an_outage_lets_the_next_probe_go_one_interval_later_not_every_call_at_once():
    fake = FakeModel()
    fake.script = [QUOTA, DOWN]  # the first call is refused; its probe meets an outage
    now = [0.0]
    breaker = CircuitBreaker(fake, probe_interval=1.0, monotonic=lambda: now[0])
    first = asyncio.create_task(breaker.complete(CALL))
    await asyncio.sleep(0.01)
    assert breaker.paused() == "insufficient_quota"
    others = [asyncio.create_task(breaker.complete(CALL)) for _ in range(3)]
    await asyncio.sleep(0.01)
    now[0] = 1.0  # the probe is due
    breaker._provider.notify()  # wake the waiters as their timers would
    with pytest.raises(ModelError, match="down"):
        await asyncio.wait_for(first, 1)
    await asyncio.sleep(0.05)
    # Still paused, and no other call went out as a probe at once.
    assert breaker.paused() == "insufficient_quota" and len(fake.calls) == 2
    assert not any(t.done() for t in others)
    now[0] = 2.0  # one interval later: one probe, answered, and all resume
    breaker._provider.notify()
    replies = await asyncio.wait_for(asyncio.gather(*others), 2)
    assert len(replies) == 3 and len(fake.calls) == 2 + 3 and breaker.paused() is None


async def test_another_calls_refusal_does_not_let_a_second_probe_run_beside_the_first():
    from dataclasses import replace

    fake = FakeModel()
    now = [0.0]
    breaker = CircuitBreaker(fake, probe_interval=1.0, monotonic=lambda: now[0])
    released = asyncio.Event()
    complete = fake.complete
    sent: list[str] = []

    async def model(call: ModelCall):
        text = call.messages[-1].text
        sent.append(text)
        if text == "probe":
            await released.wait()  # the probe is under way
        elif len(sent) == 1:
            raise QUOTA
        return await complete(call)

    fake.complete = model

    def asking(text: str) -> ModelCall:
        return replace(CALL, messages=[ChatMessage("user", text)])

    first = asyncio.create_task(breaker.complete(asking("first")))
    await asyncio.sleep(0.01)
    assert breaker.paused() == "insufficient_quota"
    now[0] = 1.0  # due: the next call goes as the probe
    probe = asyncio.create_task(breaker.complete(asking("probe")))
    await asyncio.sleep(0.01)
    assert sent == ["first", "probe"] and breaker._provider.probing
    # A call sent before the pause comes back refused while the probe runs.
    breaker._pause("insufficient_quota", probe=False)
    await asyncio.sleep(0.05)
    assert sent == ["first", "probe"]  # no second probe beside the first
    assert breaker._provider.probing
    released.set()
    assert (await asyncio.wait_for(probe, 1)).text == "answer to probe"
    assert (await asyncio.wait_for(first, 1)).text == "answer to first"
    assert breaker.paused() is None


async def test_a_call_refused_on_every_probe_ends_at_its_deadline_and_lets_the_others_probe():
    fake = FakeModel()
    fake.script = [QUOTA] * 100
    breaker = CircuitBreaker(fake, probe_interval=0.05)
    call = ModelCall("gpt-4o-mini", [ChatMessage("user", "hi")], 10, 0.5)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):  # the request's deadline, as the use case sets it
            await breaker.complete(call)
    assert not call.progress.sent  # refused every time: nothing billed
    assert 2 <= len(fake.calls) <= 0.3 / 0.05 + 2  # one probe per interval, not more
    assert not breaker._provider.probing and breaker.paused_waiting() == 0
    fake.script = []
    assert (await asyncio.wait_for(breaker.complete(CALL), 2)).text == "answer to hi"
    assert breaker.paused() is None
