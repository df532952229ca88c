"""Private by design, end to end: a real worker on PostgreSQL keeps no personal data
in clear, erases a user on request (with a request of theirs in flight), and the
audit replays the erased conversation as accounting and "[erased]"."""

from __future__ import annotations

import json
import time

import psycopg
import pytest

from adapters.dead_letters import DeadLetterSeal
from adapters.event_store import ChatRecords, event_store_env
from domain.conversation import ERASED, conversation_id
from entrypoints.cli import main as chater_gpt
from tests.support.records import produce, read_until_all

pytestmark = pytest.mark.integration

EMAIL = "Grace.Hopper@example.com"
TEXTS = ["my blood pressure is 160 over 100", "I live at 12 Cobol Lane", "slow: still there?"]


def all_bytes(postgres, database) -> bytes:
    """Every value of every table of the database, as stored."""
    chunks = []
    with psycopg.connect(postgres.dsn(database)) as connection:
        tables = connection.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
        for (table,) in tables:
            for row in connection.execute(f'SELECT * FROM "{table}"').fetchall():
                for value in row:
                    chunks.append(value if isinstance(value, bytes) else str(value).encode())
    return b"\n".join(chunks)


def events_of(worker_env, email):
    records = ChatRecords(env=event_store_env(worker_env["DATABASE_URL"], worker_env["SECRET_KEY"]))
    try:
        return list(records.events.get(conversation_id(email)))
    finally:
        records.close()


def test_erasure_through_kafka_with_a_request_in_flight(
    broker, topics, fake_openai, postgres, database, worker_env, worker, monkeypatch, capsys
):
    fake_openai.script([{"match": "slow:", "delay": 2.0}])
    produce(broker, topics["REQUEST_TOPIC"], [
        (f"p-{n}", json.dumps({"user_email": EMAIL, "message": text}).encode())
        for n, text in enumerate(TEXTS[:2])
    ])
    read_until_all(broker, topics["RESPONSE_TOPIC"], {"p-0", "p-1"}, timeout=30)
    stored = all_bytes(postgres, database)
    for secret in (b"blood pressure", b"Cobol Lane", b"grace.hopper", b"Grace.Hopper"):
        assert secret not in stored  # encrypted at rest, everywhere

    # A request in flight (the model takes 2 s), then the erasure request.
    produce(broker, topics["REQUEST_TOPIC"], [("p-2", json.dumps({"user_email": EMAIL, "message": TEXTS[2]}).encode())])
    deadline = time.monotonic() + 10
    while not any("slow:" in r["messages"][-1]["content"] for r in fake_openai.requests()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    produce(broker, topics["ERASE_TOPIC"], [
        ("erase-1", json.dumps({"user_email": EMAIL.upper(), "requested_by": "dpo ticket 17"}).encode()),
        ("erase-bad", b"{not an erasure"),
    ])
    answers = dict(read_until_all(broker, topics["RESPONSE_TOPIC"], {"p-0", "p-1", "p-2"}, timeout=30))
    assert "response" in json.loads(answers["p-2"])  # answered, not broken by the erasure
    deadline = time.monotonic() + 20
    while "UserErased" not in [type(e).__name__ for e in events_of(worker_env, EMAIL)]:
        assert time.monotonic() < deadline, "the erasure was not recorded"
        time.sleep(0.2)
    assert worker.liveness()[0] == 200

    events = events_of(worker_env, EMAIL)
    replies = [e for e in events if type(e).__name__ == "ReplyRecorded"]
    erased_at = next(i for i, e in enumerate(events) if type(e).__name__ == "UserErased")
    for event in events[:erased_at]:
        for field in ("user_email", "message", "reply"):
            if hasattr(event, field):
                assert getattr(event, field) == ERASED, (type(event).__name__, field)
    assert all(r.prompt_tokens > 0 and r.model == "gpt-4o-mini" for r in replies)  # accounting
    assert events[erased_at].requested_by == "dpo ticket 17"
    # The request in flight: answered to the user, but kept as accounting only.
    [late] = [e for e in events[erased_at:] if type(e).__name__ == "ReplyRecorded"]
    assert late.request_id == "p-2" and late.reply == ERASED and late.prompt_tokens > 0
    assert json.loads(answers["p-2"])["response"].startswith("echo: slow: still there?")

    # The same address starts afresh: the model sees no earlier turn.
    produce(broker, topics["REQUEST_TOPIC"], [("p-3", json.dumps({"user_email": EMAIL, "message": "hello again"}).encode())])
    answers = dict(read_until_all(broker, topics["RESPONSE_TOPIC"], {"p-3"}, timeout=30))
    assert json.loads(answers["p-3"])["response"] == "echo: hello again | seen: 1 messages"

    # The auditor's replay: accounting and "[erased]", never an exception.
    monkeypatch.setenv("DATABASE_URL", worker_env["DATABASE_URL"])
    monkeypatch.setenv("SECRET_KEY", worker_env["SECRET_KEY"])
    capsys.readouterr()
    assert chater_gpt(["audit", EMAIL]) == 0
    audit = capsys.readouterr().out
    assert "UserErased" in audit and "dpo ticket 17" in audit and '"[erased]"' in audit
    assert "blood pressure" not in audit and "hello again" in audit
    # The unreadable erasure request was dead-lettered.
    dead = dict(read_until_all(broker, topics["DLQ_TOPIC"], {"erase-bad"}, timeout=10))
    assert DeadLetterSeal(worker_env["SECRET_KEY"]).open(dead["erase-bad"]) == b"{not an erasure"
    # Operators read them opened, with SECRET_KEY.
    monkeypatch.setenv("BOOTSTRAP_SERVER", worker_env["BOOTSTRAP_SERVER"])
    monkeypatch.setenv("DLQ_TOPIC", topics["DLQ_TOPIC"])
    capsys.readouterr()
    assert chater_gpt(["dead-letters"]) == 0
    letters = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    [letter] = [d for d in letters if d["key"] == "erase-bad"]
    assert letter["value"] == "{not an erasure" and letter["headers"]["reason"].startswith("not an erasure")
