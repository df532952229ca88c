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
