"""A rotated OPENAI_API_KEY_FILE is used without a restart: the real openai SDK over HTTP
against the local model server, which accepts only the keys a test names."""

from __future__ import annotations

import asyncio
import logging

import pytest

from adapters import secret_file
from adapters.openai_model import OpenAIModel
from adapters.secret_file import SecretFile
from application.model_retries import RetryingModel
from application.ports import ChatMessage, ModelCall, ModelError
from entrypoints.container import build_container
from entrypoints.settings import load_settings
from tests.support.mounted_secret import ManualClock, MountedSecret

pytestmark = pytest.mark.integration

KEY_A = "sk-rotation-key-aaaa-1111"
KEY_B = "sk-rotation-key-bbbb-2222"
KEY_C = "sk-rotation-key-cccc-3333"


def call(text: str = "hello") -> ModelCall:
    return ModelCall(model="gpt-4o-mini", messages=[ChatMessage("user", text)], max_tokens=20,
                     temperature=0.0)


@pytest.fixture
def secret(tmp_path) -> MountedSecret:
    return MountedSecret(tmp_path / "secret", "openai-api-key", KEY_A)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """The paths of the key files read, in order."""
    read, paths = secret_file.read_secret_file, []

    def counting(path: str) -> str:
        paths.append(path)
        return read(path)

    monkeypatch.setattr(secret_file, "read_secret_file", counting)
    return paths


@pytest.fixture
async def model(fake_openai, secret, clock, reads):
    fake_openai.accept_api_keys([KEY_A])
    key = SecretFile(secret.path, name="OPENAI_API_KEY_FILE", check_interval=1.0, clock=clock)
    model = OpenAIModel(api_key=key, base_url=fake_openai.base_url, timeout=5)
    yield model
    await model.close()


def kinds(fake_openai) -> list[str]:
    return [c["kind"] for c in fake_openai.calls()]


async def test_a_key_rotated_a_while_ago_is_noticed_before_the_call(model, fake_openai, secret, clock, reads):
    assert (await model.complete(call("with A"))).text.startswith("echo: with A")
    secret.update(KEY_B)
    fake_openai.accept_api_keys([KEY_B])
    clock.advance(1.0)  # the file changed long enough ago for the periodic check
    assert (await model.complete(call("with B"))).text.startswith("echo: with B")
    assert kinds(fake_openai) == ["ok", "ok"]  # never refused: B was sent at once
    assert len(reads) == 2  # at start, and once after the change
    assert model.client.api_key == KEY_B


async def test_a_refused_key_makes_the_file_read_again_and_the_call_sent_once_more(
    model, fake_openai, secret, reads, caplog
):
    assert (await model.complete(call("with A"))).text.startswith("echo: with A")
    secret.update(KEY_B)
    fake_openai.accept_api_keys([KEY_B])  # the provider switched before our check came round
    with caplog.at_level(logging.DEBUG):
        reply = await model.complete(call("with B"))
    assert reply.text.startswith("echo: with B")
    assert kinds(fake_openai) == ["ok", "unauthorized", "ok"]
    assert len(reads) == 2
    assert "refused the API key; sending the call again with the new key" in caplog.text
    assert KEY_A not in caplog.text and KEY_B not in caplog.text


async def test_an_unchanged_file_and_a_401_give_the_auth_error_after_one_reread(
    model, fake_openai, reads, caplog
):
    fake_openai.accept_api_keys([KEY_C])  # the provider revoked A; the file still holds it
    # At DEBUG: the SDK's and the HTTP clients' own lines are searched for the key too.
    with caplog.at_level(logging.DEBUG), pytest.raises(ModelError) as caught:
        await model.complete(call())
    error = caught.value
    assert (error.error_type, error.retryable) == ("upstream_error", False)
    assert error.message == "The service is not allowed to use the model provider."
    assert kinds(fake_openai) == ["unauthorized"]  # not sent again
    assert len(reads) == 2  # at start, and the one re-read after the 401
    assert error.__cause__ is None and error.__suppress_context__
    for shown in (str(error), repr(error), error.message, caplog.text, repr(model), repr(model.key_source)):
        assert KEY_A not in shown and KEY_C not in shown
        assert "Incorrect API key" not in shown  # the provider's text (a masked key) stays out


async def test_our_retry_loop_does_not_retry_a_401(model, fake_openai, reads):
    fake_openai.accept_api_keys([KEY_C])

    async def sleep(seconds: float) -> None:
        pass

    retrying = RetryingModel(model, max_retries=3, sleep=sleep)
    with pytest.raises(ModelError, match="not allowed"):
        await retrying.complete(call())
    assert kinds(fake_openai) == ["unauthorized"]
    assert len(reads) == 2


async def test_a_burst_of_refused_calls_reads_the_file_once(model, fake_openai, secret, reads):
    secret.update(KEY_B)
    fake_openai.accept_api_keys([KEY_B])
    replies = await asyncio.gather(*(model.complete(call(f"call {i}")) for i in range(20)))
    assert all(reply.text.startswith(f"echo: call {i}") for i, reply in enumerate(replies))
    assert kinds(fake_openai).count("ok") == 20 and set(kinds(fake_openai)) == {"ok", "unauthorized"}
    assert len(reads) == 2  # the first 401 read it; the others found the new key already read


async def test_a_key_from_the_environment_and_a_401_give_the_auth_error(fake_openai):
    fake_openai.accept_api_keys([KEY_B])
    model = OpenAIModel(api_key=KEY_A, base_url=fake_openai.base_url, timeout=5)
    try:
        with pytest.raises(ModelError, match="not allowed") as caught:
            await model.complete(call())
    finally:
        await model.close()
    assert kinds(fake_openai) == ["unauthorized"]
    assert KEY_A not in str(caught.value)


async def test_the_worker_wiring_follows_a_mounted_secret(fake_openai, secret, monkeypatch, tmp_path):
    for name in ("OPENAI_API_KEY", "MODEL_PROVIDER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env
    settings = load_settings(
        OPENAI_API_KEY_FILE=secret.path, OPENAI_BASE_URL=fake_openai.base_url, SECRET_KEY="s3cret"
    )
    model = build_container(settings).model_client()
    fake_openai.accept_api_keys([KEY_A])
    try:
        assert (await model.complete(call("with A"))).text.startswith("echo: with A")
        secret.update(KEY_B)
        fake_openai.accept_api_keys([KEY_B])
        assert (await model.complete(call("with B"))).text.startswith("echo: with B")
    finally:
        await model.close()
    assert kinds(fake_openai) in (["ok", "unauthorized", "ok"], ["ok", "ok"])  # 401 path, or the check
