"""Rebalances never pay twice: a partition moving while model calls take 20 s.

Real broker, real worker processes, the real openai SDK over HTTP to the local model
server, which delays every reply 20 s and logs every call as it arrives. Requests
are produced to the request topic and counted at the model server, so the tests
hold however the worker routes them inside (the repartition topic and its group).

- A second worker joins while the first has every call out: the partitions that
  move take their requests along. With a revoke grace longer than the calls, the
  first worker answers them before it lets go; with a grace shorter than the calls,
  it lets go with the calls out, leaves them to land, and the new owner waits for
  their outcome instead of calling the model again.
- The first worker is stopped (SIGTERM) with its calls out (6 s here): it finishes them
  within SHUTDOWN_TIMEOUT, records and answers them before it leaves.
- The first worker is killed (SIGKILL) with its calls out: those calls can never
  land, and the request is called for again, but not before the killed worker's
  call's time (TIMEOUT, no retries here) was up.
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter

import pytest

from tests.support.records import private_topics, produce, read_until_all
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.integration

CALL_SECONDS = 20.0
TIMEOUT = 30.0  # the worker's TIMEOUT: a call of 20 s is normal
# The stop and the kill prove the same with shorter calls (the suite stays fast).
SHORT_CALL_SECONDS = 6.0
SHORT_TIMEOUT = 9.0
REQUESTS = 8


def _env(worker_env, broker, **settings: str) -> dict[str, str]:
    return {
        **worker_env,
        **private_topics(broker.bootstrap_server, request_partitions=4),
        "TOPIC_PARTITIONS": "4",
        "TIMEOUT": str(TIMEOUT),
        "MAX_RETRIES": "0",
        **settings,
    }


def _send_requests(broker, env) -> list[str]:
    """REQUESTS requests, each of a conversation of its own; their ids."""
    keys = [f"slow-{n}" for n in range(REQUESTS)]
    produce(broker, env["REQUEST_TOPIC"], [
        (key, json.dumps({"user_email": f"{key}@example.com", "message": f"{key}: hi"}).encode())
        for key in keys
    ])
    return keys


def _model_calls(fake_openai) -> list[dict]:
    """Every completion call the model server received (paid for, whether or not
    its reply reached anyone: a reply to a client gone is logged as "timeout")."""
    return [call for call in fake_openai.calls() if call["kind"] != "batch"]


def _calls_per_request(fake_openai) -> Counter[str]:
    return Counter(call["text"].split(":")[0] for call in _model_calls(fake_openai))


def _wait_until_all_calls_are_out(fake_openai, keys, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while set(_calls_per_request(fake_openai)) < set(keys):
        assert time.monotonic() < deadline, f"calls out: {_calls_per_request(fake_openai)}"
        time.sleep(0.1)
    assert not any(call["answered_at"] for call in fake_openai.calls())  # all still out


def _answers(broker, env, keys, timeout: float) -> dict[str, dict]:
    records = read_until_all(broker, env["RESPONSE_TOPIC"], set(keys), timeout=timeout)
    answers = {key: json.loads(value) for key, value in records}
    assert set(answers) == set(keys), sorted(answers)
    assert all("response" in answers[key] for key in keys), answers
    return answers


def _short_calls(worker_env, broker, fake_openai, tmp_path):
    """Settings and two (not yet started) workers for calls of SHORT_CALL_SECONDS."""
    env = _env(worker_env, broker, TIMEOUT=str(SHORT_TIMEOUT))
    fake_openai.set_latency(SHORT_CALL_SECONDS)
    return env, WorkerProcess(env, tmp_path / "first.log"), WorkerProcess(env, tmp_path / "second.log")


def _stop_all(*workers: WorkerProcess) -> None:
    for worker in workers:
        if worker.process is not None:
            worker.stop(signal.SIGKILL)


@pytest.mark.parametrize("shutdown_timeout", ["60", "2"], ids=["grace-covers-calls", "grace-shorter"])
def test_a_partition_moving_while_model_calls_take_20s_sends_no_request_to_the_model_twice(
    broker, fake_openai, worker_env, tmp_path, shutdown_timeout
):
    env = _env(worker_env, broker, SHUTDOWN_TIMEOUT=shutdown_timeout)
    first = WorkerProcess(env, tmp_path / "first.log")
    second = WorkerProcess(env, tmp_path / "second.log")
    fake_openai.set_latency(CALL_SECONDS)
    first.start()
    try:
        keys = _send_requests(broker, env)
        _wait_until_all_calls_are_out(fake_openai, keys)

        second.start()  # the groups rebalance: partitions move to it, with calls out
        _answers(broker, env, keys, timeout=3 * CALL_SECONDS)
        time.sleep(2.0)  # a late second call would show now

        assert _calls_per_request(fake_openai) == Counter({key: 1 for key in keys}), fake_openai.calls()
        moved = "revoked [" in first.log()
        assert moved, first.log()[-3000:]
        if shutdown_timeout == "2":  # it let go with the calls out: the new owner waited
            assert "leaving" in first.log() and "waiting for its outcome" in second.log(), (
                first.log()[-3000:], second.log()[-3000:])
    finally:
        _stop_all(first, second)


def test_a_worker_stopped_while_model_calls_are_out_finishes_them_and_none_is_sent_twice(
    broker, fake_openai, worker_env, tmp_path
):
    # SHUTDOWN_TIMEOUT: its default, 60 s
    env, first, second = _short_calls(worker_env, broker, fake_openai, tmp_path)
    first.start()
    second.start()
    try:
        keys = _send_requests(broker, env)
        _wait_until_all_calls_are_out(fake_openai, keys)

        assert first.stop(signal.SIGTERM) == 0  # waits for its calls, then leaves
        _answers(broker, env, keys, timeout=3 * SHORT_CALL_SECONDS)
        time.sleep(2.0)

        assert _calls_per_request(fake_openai) == Counter({key: 1 for key in keys}), fake_openai.calls()
    finally:
        _stop_all(first, second)


def test_a_worker_killed_while_model_calls_are_out_is_not_called_for_again_before_its_calls_time_is_up(
    broker, fake_openai, worker_env, tmp_path
):
    env, first, second = _short_calls(worker_env, broker, fake_openai, tmp_path)
    first.start()
    try:
        keys = _send_requests(broker, env)
        _wait_until_all_calls_are_out(fake_openai, keys)
        first.stop(signal.SIGKILL)  # its calls can never land now
        fake_openai.set_latency(0.0)

        second.start()
        _answers(broker, env, keys, timeout=3 * SHORT_TIMEOUT)

        calls = _model_calls(fake_openai)
        for key in keys:
            made = sorted(call["received_at"] for call in calls if call["text"].startswith(f"{key}:"))
            assert len(made) == 2, calls  # the killed worker's, and the one answered
            # Not before the first call could no longer land (TIMEOUT; a little slack
            # for the moments between receiving the request and sending the call).
            assert made[1] - made[0] >= SHORT_TIMEOUT - 1.0, (key, made)
    finally:
        _stop_all(first, second)
