"""Random fault injection of the fake OpenAI server: chaos, outages and the call log.

Driven with the real ``openai`` SDK (no SDK retries, short timeouts) and with
plain ``http.client``, so what the client saw can be compared, call by call,
with what the server says it did.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import math
import time
from collections import Counter

import openai
import pytest

from tests.support.fake_openai import FakeOpenAIServer

pytestmark = pytest.mark.integration

RATES = {"429": 0.08, "500": 0.06, "503": 0.02, "timeout": 0.04, "disconnect": 0.04, "malformed": 0.04}


def _client(server: FakeOpenAIServer, timeout: float = 1.0) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url, api_key="k", max_retries=0, timeout=timeout)


async def _ask(client: openai.AsyncOpenAI, text: str) -> str | None:
    completion = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": text}]
    )
    return completion.choices[0].message.content


async def _observe(client: openai.AsyncOpenAI, text: str) -> tuple[str, BaseException | None]:
    """Call the model once; return the kind of answer the client saw, and the error."""
    try:
        reply = await _ask(client, text)
    except openai.RateLimitError as error:
        return "429", error
    except openai.InternalServerError as error:  # any 5xx
        return str(error.status_code), error
    except openai.APITimeoutError as error:  # before APIConnectionError: it is a subclass
        return "timeout", error
    except openai.APIConnectionError as error:
        return "disconnect", error
    except json.JSONDecodeError as error:  # the SDK does not wrap a 200 whose body is not JSON
        return "malformed", error
    assert reply == f"echo: {text} | seen: 1 messages"
    return "ok", None


def _raw_call(server: FakeOpenAIServer, text: str, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """POST one completion with http.client: (status, lower-cased headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]})
        conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


async def test_chaos_injects_each_fault_at_its_rate_and_logs_what_the_client_saw(fake_openai):
    # The client gives up after 3 s, a timeout fault answers after 6 s: a normal answer
    # slowed by a busy machine (the suite runs beside other processes) is still "ok".
    fake_openai.chaos(RATES, seed=7, retry_after=(0.1, 1.0), timeout_delay=6.0)
    n = 400
    gate = asyncio.Semaphore(50)
    observed: dict[str, str] = {}
    errors: dict[str, BaseException | None] = {}

    async with _client(fake_openai, timeout=3.0) as client:
        async def one(i: int) -> None:
            text = f"req-{i}"
            async with gate:
                observed[text], errors[text] = await _observe(client, text)

        await asyncio.gather(*(one(i) for i in range(n)))

    counts = Counter(observed.values())
    # Seeded, so these counts are the same on every run; the bounds are only loose
    # (3 standard deviations) so that they state the intent, not the seed's luck.
    for kind, rate in RATES.items():
        expected = n * rate
        assert abs(counts[kind] - expected) <= 3 * math.sqrt(expected * (1 - rate)) + 1, (kind, counts)
        assert counts[kind] > 0, (kind, counts)
    assert abs(counts["ok"] - n * (1 - sum(RATES.values()))) <= 3 * math.sqrt(n * 0.28 * 0.72) + 1

    for text, kind in observed.items():
        error = errors[text]
        if kind == "429":
            assert isinstance(error, openai.RateLimitError)
            headers = error.response.headers
            seconds = float(headers["retry-after"])
            assert 0.1 <= seconds <= 1.0
            assert len(headers["retry-after"].partition(".")[2]) <= 3
            assert int(headers["retry-after-ms"]) == round(seconds * 1000)
            assert error.code == "rate_limit_exceeded"
        elif kind == "disconnect":
            assert type(error) is openai.APIConnectionError

    # The server's log agrees with the client, one for one.
    calls = fake_openai.calls()
    assert len(calls) == n
    assert {c["text"]: c["kind"] for c in calls} == observed
    assert fake_openai.faults() == {k: v for k, v in counts.items() if k != "ok"}
    assert len(fake_openai.requests()) == n  # the request log still records every body
    for c in calls:
        assert c["received_at"] <= time.time()
        if c["kind"] in ("ok", "429", "500", "503", "malformed"):
            assert c["answered_at"] is not None and c["answered_at"] >= c["received_at"]
        else:  # disconnect; timeout: not answered yet (1.5 s) or answered to nobody
            assert c["answered_at"] is None


async def test_late_answers_go_to_nobody_and_a_patient_client_still_gets_them(fake_openai):
    fake_openai.chaos({"timeout": 1.0}, timeout_delay=0.6)
    async with _client(fake_openai, timeout=0.2) as impatient, _client(fake_openai, timeout=5.0) as patient:
        with pytest.raises(openai.APITimeoutError):
            await _ask(impatient, "gave up")
        # The patient call waits out the delay; by then the first late answer found no one.
        assert await _ask(patient, "waited") == "echo: waited | seen: 1 messages"

        fake_openai.chaos(None)
        fake_openai.set_latency(0.5)
        with pytest.raises(openai.APITimeoutError):  # slow but not a fault: still nobody got it
            await _ask(impatient, "slow")
        await asyncio.sleep(0.6)

    calls = {c["text"]: c for c in fake_openai.calls()}
    assert calls["gave up"]["kind"] == "timeout" and calls["gave up"]["answered_at"] is None
    # A chaos timeout stays a timeout even when it was answered; answered_at shows it was.
    assert calls["waited"]["kind"] == "timeout"
    assert calls["waited"]["answered_at"] - calls["waited"]["received_at"] >= 0.6
    # A normal completion the client was no longer waiting for is not "ok".
    assert calls["slow"]["kind"] == "timeout" and calls["slow"]["answered_at"] is None
    assert fake_openai.faults() == {"timeout": 3}


def test_the_same_seed_gives_the_same_faults_in_the_same_order(fake_openai):
    rates = {"429": 0.2, "500": 0.2, "503": 0.1, "malformed": 0.1, "disconnect": 0.1}

    def run() -> list[str]:
        fake_openai.reset()
        fake_openai.chaos(rates, seed=42, retry_after=(0.25, 0.5))
        seen = []
        for i in range(60):
            try:
                status, headers, body = _raw_call(fake_openai, f"raw-{i}")
            except (http.client.RemoteDisconnected, ConnectionResetError):
                seen.append("disconnect")
                continue
            if status == 200:
                try:
                    json.loads(body)
                    seen.append("ok")
                except ValueError:
                    seen.append("malformed")
                continue
            error = json.loads(body)["error"]
            assert set(error) == {"message", "type", "param", "code"}
            if status == 429:
                assert 0.25 <= float(headers["retry-after"]) <= 0.5
                assert int(headers["retry-after-ms"]) == round(float(headers["retry-after"]) * 1000)
            seen.append(str(status))
        assert [c["kind"] for c in fake_openai.calls()] == seen
        return seen

    first = run()
    assert first == run()
    assert set(first) == {"ok", "429", "500", "503", "malformed", "disconnect"}


async def test_an_outage_fails_everything_then_ends(fake_openai):
    fake_openai.script([{"reply": "scripted after the outage"}])
    fake_openai.chaos({"500": 1.0})
    fake_openai.outage(1.0)
    started = time.monotonic()
    statuses = []
    async with _client(fake_openai) as client:
        while time.monotonic() - started < 0.8:
            with pytest.raises(openai.InternalServerError) as caught:
                await _ask(client, f"down-{len(statuses)}")
            statuses.append(caught.value.status_code)
            await asyncio.sleep(0.05)
        await asyncio.sleep(max(0.0, 1.05 - (time.monotonic() - started)))
        # The outage consumed neither the step nor chaos draws; both apply again now.
        assert await _ask(client, "back") == "scripted after the outage"
        fake_openai.chaos(None)
        assert await _ask(client, "normal") == "echo: normal | seen: 1 messages"

        fake_openai.outage(5.0, status=502)
        with pytest.raises(openai.InternalServerError) as caught:
            await _ask(client, "bad gateway")
        assert caught.value.status_code == 502
        fake_openai.outage(0)  # ends it early
        assert await _ask(client, "again") == "echo: again | seen: 1 messages"

    assert len(statuses) >= 5 and set(statuses) == {503}
    kinds = [c["kind"] for c in fake_openai.calls()]
    assert kinds == ["outage"] * len(statuses) + ["ok", "ok", "outage", "ok"]
    assert fake_openai.faults() == {"outage": len(statuses) + 1}


async def test_steps_beat_chaos_and_are_logged_as_scripted(fake_openai):
    fake_openai.chaos({"503": 1.0})
    fake_openai.script([{"reply": "from the script"}, {"status": 429}, {"malformed": True}])
    async with _client(fake_openai) as client:
        assert await _ask(client, "a") == "from the script"
        with pytest.raises(openai.RateLimitError):
            await _ask(client, "b")
        with pytest.raises(json.JSONDecodeError):
            await _ask(client, "c")
        with pytest.raises(openai.InternalServerError):  # the script is used up: chaos again
            await _ask(client, "d")
    assert [c["kind"] for c in fake_openai.calls()] == ["ok", "scripted", "scripted", "503"]
    assert fake_openai.faults() == {"scripted": 2, "503": 1}


async def test_chaos_off_reset_and_bad_settings(fake_openai):
    async with _client(fake_openai) as client:
        fake_openai.chaos({"500": 1.0})
        with pytest.raises(openai.InternalServerError):
            await _ask(client, "x")
        fake_openai.chaos({})
        assert await _ask(client, "y") == "echo: y | seen: 1 messages"

        fake_openai.chaos({"disconnect": 1.0})
        fake_openai.outage(30)
        fake_openai.reset()
        assert fake_openai.calls() == [] and fake_openai.faults() == {}
        assert await _ask(client, "z") == "echo: z | seen: 1 messages"
    [call] = fake_openai.calls()
    assert call["kind"] == "ok" and call["text"] == "z"

    for rates in ({"418": 0.1}, {"500": 0.7, "503": 0.7}, {"500": -0.1}):
        with pytest.raises(RuntimeError, match="400"):
            fake_openai.chaos(rates)
    with pytest.raises(RuntimeError, match="400"):
        fake_openai.chaos({"429": 0.1}, retry_after=(2.0, 1.0))
