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

    async def pace() -> None:
        paced.append(len(fake.calls))  # how many calls had been made when it was asked

    model, _ = retrying(fake, max_retries=2, fallback_model="gpt-4.1", pace=pace)
    reply = await model.complete(CALL)
    assert reply.model == "gpt-4.1" and len(fake.calls) == 4
    assert paced == [1, 2, 3]  # before the 2 retries and the fallback, not before the first
