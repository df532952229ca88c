"""Cheaper and smarter, end to end: the real worker, broker, Redis, event store and
the openai SDK over HTTP against the local OpenAI-compatible server."""

from __future__ import annotations

import json
import re
import signal
import time
from typing import Any

import pytest

from application.compaction import SUMMARY_INSTRUCTIONS
from application.context_window import SUMMARY_PREFIX
from domain.conversation import conversation_id
from domain.pricing import DEFAULT_PRICES
from tests.support.records import produce, read
from tests.support.worker import RunningWorker, WorkerProcess

pytestmark = pytest.mark.integration


def ask(user: str, message: str, **fields: Any) -> dict[str, Any]:
    return {"user_email": user, "message": message, **fields}


def live_calls(fake_openai) -> list[dict[str, Any]]:
    return [c for c in fake_openai.calls() if c["kind"] == "ok"]


def worker_for(broker, fake_openai, tmp_path, **settings: Any) -> RunningWorker:
    return RunningWorker(
        broker.bootstrap_server,
        OPENAI_API_KEY="test-key",
        OPENAI_BASE_URL=fake_openai.base_url,
        DATABASE_URL=f"sqlite:///{tmp_path}/events.sqlite",
        **settings,
    )


def test_repeated_requests_are_answered_from_redis_and_an_outage_only_costs_calls(
    broker, fake_openai, redis_url, redis_server, tmp_path
):
    with worker_for(broker, fake_openai, tmp_path, REDIS_URL=redis_url) as worker:
        worker.send("a", ask("ada@example.com", "capital of France?", temperature=0, conversation_id="1"))
        [(_, first)] = worker.responses(1)
        worker.send("b", ask("ada@example.com", "capital of France?", temperature=0, conversation_id="2"))
        worker.send("c", ask("ada@example.com", "capital of France?", conversation_id="3"))  # 0.7
        answers = dict((key.decode(), body) for key, body in worker.responses(3))
        assert answers["b"]["cached"] is True and answers["b"]["response"] == first["response"]
        assert answers["b"]["cost_usd"] == 0.0 and answers["b"]["usage"]["total_tokens"] == 0
        assert "cached" not in answers["c"]
        assert len(live_calls(fake_openai)) == 2  # a and c

        redis_server.stop_for_outage()
        started = time.monotonic()
        worker.send("d", ask("ada@example.com", "capital of France?", temperature=0, conversation_id="4"))
        worker.send("e", ask("ada@example.com", "capital of Spain?", temperature=0, conversation_id="5"))
        outage = dict((key.decode(), body) for key, body in worker.responses(5))
        assert "error" not in outage["d"] and "error" not in outage["e"]
        assert "cached" not in outage["d"]
        assert time.monotonic() - started < 10
        assert len(live_calls(fake_openai)) == 4


def test_identical_requests_in_flight_share_one_model_call(broker, fake_openai, tmp_path):
    fake_openai.set_latency(0.5)
    with worker_for(broker, fake_openai, tmp_path) as worker:
        for n in range(6):
            worker.send(f"k{n}", ask("ada@example.com", "same question", temperature=0,
                                     conversation_id=f"thread-{n}"))
        answers = [body for _, body in worker.responses(6)]
    assert len(live_calls(fake_openai)) == 1
    assert len({a["response"] for a in answers}) == 1
    assert sum(1 for a in answers if a.get("cached")) == 5


def test_long_conversations_are_summarised_by_the_cheapest_model(broker, fake_openai, tmp_path):
    with worker_for(broker, fake_openai, tmp_path, CONTEXT_MAX_TURNS=2,
                    FALLBACK_MODEL="gpt-4.1-nano") as worker:
        for n in range(5):
            worker.send(f"t{n}", ask("ada@example.com", f"turn {n}: tell me more"))
            worker.responses(n + 1)
        events = [type(e).__name__ for e in worker.container.records().events.get(
            conversation_id("ada@example.com"))]
    requests = fake_openai.requests()
    summaries = [r for r in requests if r["messages"][0]["content"].startswith(
        SUMMARY_INSTRUCTIONS.split("{")[0])]
    assert summaries and all(r["model"] == "gpt-4.1-nano" for r in summaries)
    assert events.count("ContextCompacted") == len(summaries)
    last = requests[-1]
    assert last["model"] == "gpt-4o-mini"
    assert last["messages"][0]["role"] == "system"
    assert last["messages"][0]["content"].startswith(SUMMARY_PREFIX)
    assert "turn 0" in last["messages"][0]["content"]  # the summary's echo of what it read


def test_higher_priority_waiting_for_a_model_slot_goes_first(broker, fake_openai, tmp_path):
    fake_openai.set_latency(0.4)
    lows = 10
    with worker_for(broker, fake_openai, tmp_path, MODEL_CONCURRENCY=1) as worker:
        for n in range(lows):
            worker.send(f"low-{n}", ask(f"user{n}@example.com", f"low {n}", priority=0))
            time.sleep(0.003)  # record times (milliseconds) tell them apart
        worker.responses(1)  # the lows are fetched: one answered, the others wait for the slot
        worker.send("urgent", ask("boss@example.com", "urgent", priority=10))
        order = [key.decode() for key, _ in worker.responses(lows + 1, timeout=60)]
    # Sent after the first answer, it overtakes every low still waiting: at most the
    # call in progress (and one more that took the slot while it was being fetched).
    assert order.index("urgent") <= 3, order
    # First come, first served among equals: in the order produced, whatever
    # partition of the repartition topic each came by (the first fetched took the
    # free slot at once).
    first, *waiting = [key for key in order if key.startswith("low")]
    assert waiting == [f"low-{n}" for n in range(lows) if f"low-{n}" != first]


def test_batch_requests_go_through_the_batch_api_at_half_price(broker, fake_openai, tmp_path):
    fake_openai.batch_settings(delay=0.5)
    # MAX_IN_FLIGHT 2: records waiting for a batch must not hold up the others.
    with worker_for(broker, fake_openai, tmp_path, BATCH_WINDOW=0.3, BATCH_POLL_INTERVAL=0.1,
                    BATCH_PRIORITY=0, MAX_IN_FLIGHT=2) as worker:
        worker.send("b1", ask("ada@example.com", "no hurry 1", batch=True))
        worker.send("b2", ask("bob@example.com", "no hurry 2", priority=-1))
        worker.send("b3", ask("cy@example.com", "no hurry 3", batch=True))
        worker.send("now", ask("dee@example.com", "right now"))
        responses = worker.responses(4, timeout=30)
        order = [key.decode() for key, _ in responses]
        answers = dict((key.decode(), body) for key, body in responses)
        events = [type(e).__name__ for e in worker.container.records().events.get(
            conversation_id("ada@example.com"))]
        stats = worker.worker.stats
        deadline = time.monotonic() + 5  # the last delivery reports come in, the index is polled
        while (stats.batch_waiting, stats.in_flight) != (0, 0) and time.monotonic() < deadline:
            time.sleep(0.05)
        # Parked (their records finished without a response), then answered by the
        # poller; nothing held, nothing parked any more.
        assert (stats.batch_waiting, stats.in_flight) == (0, 0)
        assert (stats.parked, stats.batch_answered) == (3, 3)
    assert order[0] == "now"
    batches = fake_openai.batches()
    assert len(batches) == 1 and len(set(batches[0]["custom_ids"])) == 3
    assert sorted(body["messages"][-1]["content"] for body in batches[0]["bodies"]) == [
        "no hurry 1", "no hurry 2", "no hurry 3"
    ]
    # The provider learns nothing of whose each call is.
    assert all(re.fullmatch("[0-9a-f]{32}", custom_id) for custom_id in batches[0]["custom_ids"])
    assert [c["kind"] for c in fake_openai.calls()].count("batch") == 3
    assert len(live_calls(fake_openai)) == 1
    for key in ("b1", "b2", "b3"):
        answer = answers[key]
        assert answer["batch"] is True and answer["response"].startswith("echo: no hurry")
        usage = answer["usage"]
        full = DEFAULT_PRICES["gpt-4o-mini"].cost(usage["prompt_tokens"], 0, usage["completion_tokens"])
        assert answer["cost_usd"] == pytest.approx(full / 2)
    assert events == ["Started", "UserMessageReceived", "BatchSubmitted", "ReplyRecorded"]


def test_a_batch_request_survives_a_killed_worker_without_a_second_batch(
    broker, fake_openai, topics, worker_env, tmp_path
):
    fake_openai.batch_settings(delay=4.0)
    env = {**worker_env, "BATCH_WINDOW": "0.2", "BATCH_POLL_INTERVAL": "0.1"}
    worker = WorkerProcess(env, tmp_path / "worker.log")
    worker.start()
    try:
        produce(broker, topics["REQUEST_TOPIC"], [
            ("slow", json.dumps(ask("ada@example.com", "whenever", batch=True)).encode())
        ])
        deadline = time.monotonic() + 30
        while not fake_openai.batches() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # BatchSubmitted is recorded
        worker.stop(signal.SIGKILL)  # the record was never answered nor committed
        worker.start()
        [(key, answer)] = read(broker, topics["RESPONSE_TOPIC"], 1, timeout=60)
    finally:
        worker.stop()
    assert key == "slow" and answer["batch"] is True and answer["response"] == "echo: whenever | seen: 1 messages"
    assert len(fake_openai.batches()) == 1
    assert [c["kind"] for c in fake_openai.calls()].count("batch") == 1
