"""One person, one address, end to end: a real worker keeps an address written with
the KELVIN SIGN apart from the ASCII one it lower-cases to, so the look-alike's
model call never carries the other user's words (domain/addresses.py)."""

from __future__ import annotations

import json

import pytest

from adapters.event_store import ChatRecords, event_store_env
from domain.conversation import conversation_id
from tests.support.records import produce, read_until_all

pytestmark = pytest.mark.integration

KARL = "karl@example.com"
KELVIN = "\u212Aarl@example.com"  # "\u212Aarl@example.com".lower() == KARL


def ask(broker, topics, request_id: str, email: str, message: str) -> dict:
    produce(broker, topics["REQUEST_TOPIC"], [
        (request_id, json.dumps({"user_email": email, "message": message}).encode()),
    ])
    answers = dict(read_until_all(broker, topics["RESPONSE_TOPIC"], {request_id}, timeout=30))
    return json.loads(answers[request_id])


def events_of(worker_env, email: str) -> list:
    records = ChatRecords(env=event_store_env(worker_env["DATABASE_URL"], worker_env["SECRET_KEY"]))
    try:
        return list(records.events.get(conversation_id(email)))
    finally:
        records.close()


def test_a_look_alike_address_never_sees_the_other_users_conversation(
    broker, topics, fake_openai, worker_env, worker
):
    first = ask(broker, topics, "karl-1", KARL, "my secret PIN is 4711")
    assert first["response"] == "echo: my secret PIN is 4711 | seen: 1 messages"

    second = ask(broker, topics, "kelvin-1", KELVIN, "what is my PIN?")
    assert second["response"] == "echo: what is my PIN? | seen: 1 messages"  # no history
    [call] = [r for r in fake_openai.requests() if "what is my PIN?" in json.dumps(r)]
    assert "4711" not in json.dumps(call["messages"], ensure_ascii=False)
    assert len(call["messages"]) == 1

    # The same mailbox in other ASCII case is still the same conversation.
    third = ask(broker, topics, "karl-2", "Karl@EXAMPLE.com", "and again?")
    assert third["response"] == "echo: and again? | seen: 3 messages"

    # Two aggregates, each with its own address and only its own words.
    karls, kelvins = events_of(worker_env, KARL), events_of(worker_env, KELVIN)
    assert conversation_id(KARL) != conversation_id(KELVIN)
    assert karls[0].originator_id == conversation_id(KARL)
    assert kelvins[0].originator_id == conversation_id(KELVIN)
    assert karls[0].user_email == KARL and kelvins[0].user_email == KELVIN
    said = {
        email: [e.message for e in events if type(e).__name__ == "UserMessageReceived"]
        for email, events in ((KARL, karls), (KELVIN, kelvins))
    }
    assert said == {KARL: ["my secret PIN is 4711", "and again?"], KELVIN: ["what is my PIN?"]}
    assert worker.liveness()[0] == 200
