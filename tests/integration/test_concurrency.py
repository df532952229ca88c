"""Many requests in flight: one conversation in order, others in parallel, and a crash."""

from __future__ import annotations

import json
import signal
from collections import Counter

import pytest

from adapters.event_store import ChatRecords, event_store_env
from domain.conversation import conversation_id
from tests.support.records import produce, read, read_until_all
from tests.support.worker import RunningWorker

pytestmark = pytest.mark.integration


def ask(user: str, message: str) -> bytes:
    return json.dumps({"user_email": user, "message": message}).encode()


def test_one_conversation_is_answered_in_order_while_others_proceed(broker, fake_openai, tmp_path):
    # The first turn of Ada's conversation is slow; nobody else should wait for it.
    fake_openai.script([{"match": "ada-1", "delay": 1.5}])
    with RunningWorker(
        broker.bootstrap_server,
        OPENAI_API_KEY="test-key",
        OPENAI_BASE_URL=fake_openai.base_url,
        DATABASE_URL=f"sqlite:///{tmp_path}/events.sqlite",
    ) as worker:
        worker.send("ada-1", ask("ada@example.com", "ada-1: my name is Ada"))
        worker.send("ada-2", ask("ada@example.com", "ada-2: what is my name?"))
        for n in range(5):
            worker.send(f"other-{n}", ask(f"user{n}@example.com", f"other-{n}: hello"))
        order = [key.decode() for key, _ in worker.responses(7)]
        answers = dict((key.decode(), body) for key, body in worker.responses(7))

    assert order.index("ada-1") < order.index("ada-2")
    assert all(order.index(f"other-{n}") < order.index("ada-1") for n in range(5)), order
    # The second turn reached the model only after the first was answered, with it as context.
    sent = {r["messages"][-1]["content"].split(":")[0]: r for r in fake_openai.requests()}
    assert sent["ada-2"]["messages"][:2] == [
        {"role": "user", "content": "ada-1: my name is Ada"},
        {"role": "assistant", "content": answers["ada-1"]["response"]},
    ]
    assert answers["ada-2"]["response"] == "echo: ada-2: what is my name? | seen: 3 messages"


def test_a_worker_killed_with_hundreds_in_flight_answers_everything_once_after_restart(
    broker, fake_openai, topics, worker, worker_env
):
    fake_openai.set_latency(0.5)
    conversations, turns = 200, 2
    keys = [f"k-{t}-{c}" for t in range(turns) for c in range(conversations)]
    produce(broker, topics["REQUEST_TOPIC"], [
        (key, ask(f"user{key.split('-')[2]}@example.com", f"{key}: question")) for key in keys
    ])
    # Let some be answered, then kill the worker while hundreds are in flight.
    answered_before = {key for key, _ in read(broker, topics["RESPONSE_TOPIC"], 150)}
    worker.stop(signal.SIGKILL)
    calls_at_kill = len(fake_openai.requests())
    assert calls_at_kill - len(answered_before) >= 20, "too little was in flight at the kill"

    worker.start()
    responses = read_until_all(broker, topics["RESPONSE_TOPIC"], set(keys), timeout=120)
    worker.stop()

    # Every request answered; duplicates (responses sent before the kill whose
    # offsets were not committed yet) are byte-for-byte the same answer.
    by_key: dict[str, list[str]] = {}
    for key, value in responses:
        by_key.setdefault(key, []).append(value)
    assert set(by_key) == set(keys)
    assert all(len(set(values)) == 1 for values in by_key.values())

    # No second model call for a request that had been answered before the kill.
    calls = Counter(r["messages"][-1]["content"].split(":")[0] for r in fake_openai.requests())
    assert {key for key in answered_before if calls[key] != 1} == set()
    assert all(calls[key] >= 1 for key in keys)

    # Exactly one recorded outcome per request in the store, and turns in order.
    records = ChatRecords(env=event_store_env(worker_env["DATABASE_URL"], worker_env["SECRET_KEY"]))
    try:
        for c in range(conversations):
            events = list(records.events.get(conversation_id(f"user{c}@example.com")))
            replies = [e.request_id for e in events if type(e).__name__ == "ReplyRecorded"]
            assert replies == [f"k-{t}-{c}" for t in range(turns)], replies
    finally:
        records.close()

