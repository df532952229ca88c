import pytest

from application.model_retries import RetryingModel
from application.ports import ChatMessage, ModelCall, ModelError
from tests.unit.fakes import FakeModel

CALL = ModelCall("gpt-4o-mini", [ChatMessage("user", "hi")], 10, 0.5)


def retrying(model: FakeModel, **options) -> tuple[RetryingModel, list[float]]:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    return RetryingModel(model, sleep=sleep, **options), slept


async def test_retryable_failures_are_retried_up_to_max_retries_with_backoff():
    fake = FakeModel()
    fake.script = [ModelError("upstream_error", "down", True)] * 2
    model, slept = retrying(fake, max_retries=2, base_delay=1.0)
    reply = await model.complete(CALL)
    assert reply.text == "answer to hi" and len(fake.calls) == 3
    assert 0 <= slept[0] <= 1.0 and 0 <= slept[1] <= 2.0  # full jitter, doubling


async def test_the_providers_wait_is_obeyed_but_capped():
    fake = FakeModel()
    fake.script = [ModelError("rate_limited", "slow down", True, retry_after=40.0),
                   ModelError("rate_limited", "slow down", True, retry_after=600.0)]
    model, slept = retrying(fake, max_retries=3, max_delay=60.0)
    await model.complete(CALL)
    assert slept == [40.0, 60.0]


async def test_non_retryable_errors_are_not_retried_and_bad_requests_get_no_fallback():
    fake = FakeModel()
    fake.script = [ModelError("context_too_long", "too long")]
    model, slept = retrying(fake, max_retries=3, fallback_model="gpt-4.1")
    with pytest.raises(ModelError, match="context_too_long"):
        await model.complete(CALL)
    assert len(fake.calls) == 1 and slept == []


async def test_the_fallback_answers_when_retries_run_out_and_its_failure_reports_the_first():
    fake = FakeModel()
    fake.script = [ModelError("upstream_error", "primary down", True)] * 2
    model, _ = retrying(fake, max_retries=1, fallback_model="gpt-4.1")
    reply = await model.complete(CALL)
    assert reply.model == "gpt-4.1" and [c.model for c in fake.calls] == ["gpt-4o-mini"] * 2 + ["gpt-4.1"]

    fake.script = [ModelError("upstream_error", "primary down"), ModelError("upstream_error", "fallback down")]
    with pytest.raises(ModelError, match="primary down"):
        await model.complete(CALL)


async def test_every_call_it_adds_is_paced_like_the_first_one():
    """Retries and the fallback count against REQUESTS_PER_MINUTE (the first call is the caller's)."""
    fake = FakeModel()
    fake.script = [ModelError("upstream_error", "down", True)] * 3
    paced: list[int] = []

    async def pace(call) -> None:  # type: ignore[no-untyped-def]
        paced.append(len(fake.calls))  # how many calls had been made when it was asked

    model, _ = retrying(fake, max_retries=2, fallback_model="gpt-4.1", pace=pace)
    reply = await model.complete(CALL)
    assert reply.model == "gpt-4.1" and len(fake.calls) == 4
    assert paced == [1, 2, 3]  # before the 2 retries and the fallback, not before the first


async def test_while_the_primarys_circuit_holds_calls_back_the_fallback_answers_at_once():
    fake = FakeModel()
    held = {"gpt-4o-mini"}
    model, slept = retrying(fake, max_retries=3, fallback_model="gpt-4.1", holds_back=held.__contains__)
    reply = await model.complete(CALL)
    assert reply.model == "gpt-4.1" and [c.model for c in fake.calls] == ["gpt-4.1"] and slept == []

    held.add("gpt-4.1")  # both held back: it waits at the primary's circuit
    reply = await model.complete(CALL)
    assert reply.model == "gpt-4o-mini"


async def test_when_the_primarys_circuit_opens_during_its_retries_the_fallback_answers_now():
    fake = FakeModel()
    fake.script = [ModelError("upstream_error", "down", True)] * 2
    held: set[str] = set()

    async def sleep(seconds: float) -> None:
        pass

    def holds_back(name: str) -> bool:
        if len(fake.calls) >= 2:  # the second failure opened the primary's circuit
            held.add("gpt-4o-mini")
        return name in held

    model = RetryingModel(fake, max_retries=5, fallback_model="gpt-4.1", sleep=sleep,
                          holds_back=holds_back)
    reply = await model.complete(CALL)
    assert reply.model == "gpt-4.1"
    assert [c.model for c in fake.calls] == ["gpt-4o-mini", "gpt-4o-mini", "gpt-4.1"]


async def test_a_non_retryable_upstream_error_goes_to_the_fallback_at_once():
    fake = FakeModel()
    fake.script = [ModelError("upstream_error", "the model is gone")]
    model, slept = retrying(fake, max_retries=3, fallback_model="gpt-4.1")
    reply = await model.complete(CALL)
    assert reply.model == "gpt-4.1" and len(fake.calls) == 2 and slept == []


async def test_with_the_real_breaker_a_down_primary_sends_every_call_to_the_fallback():
    """Twenty calls while the primary fails: after the threshold none waits at its circuit."""
    import asyncio
    from dataclasses import replace

    from application.circuit_breaker import CircuitBreaker

    class PrimaryDown(FakeModel):
        async def complete(self, call: ModelCall):
            if call.model == "gpt-4o-mini":
                self.calls.append(call)
                await asyncio.sleep(0.01)
                raise ModelError("upstream_error", "503", True)
            return await super().complete(call)

    fake = PrimaryDown()
    breaker = CircuitBreaker(fake, failure_threshold=3, probe_interval=60)
    model, _ = retrying(breaker, max_retries=2, fallback_model="gpt-4.1",
                        holds_back=breaker.holds_back)
    replies = await asyncio.wait_for(
        asyncio.gather(*(model.complete(replace(CALL)) for _ in range(20))), 5
    )
    assert {r.model for r in replies} == {"gpt-4.1"}
    assert breaker.state("gpt-4o-mini") == "open" and breaker.waiting() == {"gpt-4o-mini": 0}
    late = await asyncio.wait_for(model.complete(replace(CALL)), 1)
    assert late.model == "gpt-4.1"
    # Each call tried the primary once; a retry only until the circuit opened.
    assert sum(c.model == "gpt-4o-mini" for c in fake.calls) <= 20 + 3


async def test_an_account_wide_refusal_is_never_tried_on_the_fallback():
    """The breaker pauses the provider for it: the fallback would meet the same account."""
    import asyncio

    from application.circuit_breaker import CircuitBreaker

    fake = FakeModel()
    fake.script = [ModelError("upstream_error", "quota", pause="insufficient_quota")] * 3
    breaker = CircuitBreaker(fake, probe_interval=0.05)
    model, _ = retrying(breaker, max_retries=2, fallback_model="gpt-4.1",
                        holds_back=breaker.holds_back)
    reply = await asyncio.wait_for(model.complete(CALL), 2)
    assert reply.model == "gpt-4o-mini" and {c.model for c in fake.calls} == {"gpt-4o-mini"}
    assert len(fake.calls) == 4  # the call and two refused probes, then the answer


async def test_when_the_circuit_opens_while_a_retry_sleeps_the_fallback_answers_without_waiting_there():
    fake = FakeModel()
    fake.script = [ModelError("upstream_error", "down", True)]
    held: set[str] = set()

    async def sleep(seconds: float) -> None:
        held.add("gpt-4o-mini")  # other calls' failures opened it meanwhile

    model = RetryingModel(fake, max_retries=5, fallback_model="gpt-4.1", sleep=sleep,
                          holds_back=held.__contains__)
    reply = await model.complete(CALL)
    assert reply.model == "gpt-4.1" and [c.model for c in fake.calls] == ["gpt-4o-mini", "gpt-4.1"]


async def test_a_retry_that_goes_to_the_fallback_takes_one_rate_limit_token_not_two():
    """The primary's circuit opens during the backoff: the fallback answers, and only
    the call actually made takes a token."""
    fake = FakeModel()
    fake.script = [ModelError("upstream_error", "down", True)]
    held: set[str] = set()
    paced: list[int] = []

    async def pace(call) -> None:  # type: ignore[no-untyped-def]
        paced.append(len(fake.calls))

    async def sleep(seconds: float) -> None:
        held.add("gpt-4o-mini")  # it opened while this call waited

    model = RetryingModel(fake, max_retries=3, fallback_model="gpt-4.1", sleep=sleep,
                          pace=pace, holds_back=held.__contains__)
    reply = await model.complete(CALL)
    assert reply.model == "gpt-4.1" and [c.model for c in fake.calls] == ["gpt-4o-mini", "gpt-4.1"]
    assert paced == [1]  # the fallback's token only


async def test_each_attempt_counts_the_calls_worst_case_and_the_one_that_answered_is_settled():
    """As the container wires it: the retries and the fallback each take the rate
    limiter's admission with the call's tokens; the reply settles the last one."""
    from functools import partial

    from application.model_slots import ModelSlots, admit
    from tests.unit.fakes import CountingLimiter

    fake = FakeModel()
    fake.script = [ModelError("upstream_error", "down", True)] * 2
    limiter = CountingLimiter()
    slots = ModelSlots(limiter)
    model, _ = retrying(fake, max_retries=1, fallback_model="gpt-4.1", pace=partial(admit, limiter))
    call = ModelCall("gpt-4o-mini", [ChatMessage("user", "hi")], 10, 0.5)  # a progress of its own
    call.progress.tokens = 40
    async with slots.slot(0, call):
        reply = await model.complete(call)
    slots.settle(call, reply)
    assert limiter.tokens == [40, 40, 40]  # the call, its retry, the fallback
    assert limiter.settled == {2: reply.prompt_tokens + reply.completion_tokens}


async def test_retries_and_fallbacks_are_counted_for_the_metrics():
    fake = FakeModel()
    fake.script = [ModelError("rate_limited", "slow", True), ModelError("upstream_error", "down", True),
                   ModelError("upstream_error", "down", True)]
    held: set[str] = set()
    model, _ = retrying(fake, max_retries=2, fallback_model="gpt-4.1", holds_back=held.__contains__)
    reply = await model.complete(CALL)  # two retries, then the fallback
    assert reply.model == "gpt-4.1"
    assert model.retries == {("gpt-4o-mini", "rate_limited"): 1, ("gpt-4o-mini", "upstream_error"): 1}
    assert model.fallbacks == {("gpt-4o-mini", "gpt-4.1", "upstream_error"): 1}
    held.add("gpt-4o-mini")  # the primary's circuit holds calls back: straight to the fallback
    await model.complete(CALL)
    assert model.fallbacks[("gpt-4o-mini", "gpt-4.1", "circuit_open")] == 1
    assert sum(model.retries.values()) == 2
