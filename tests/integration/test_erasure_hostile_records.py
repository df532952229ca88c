"""Hostile records on `gpt-erase` never stop erasures: a real worker dead-letters
each (sealed, with its reason), commits past it, stays ready, and erases the user
asked for after them."""

from __future__ import annotations

import json
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from adapters.dead_letters import DeadLetterSeal
from domain.conversation import ERASED
from tests.integration.test_erasure_end_to_end import events_of
from tests.support.records import produce, read_records, read_until_all

pytestmark = pytest.mark.integration

EMAIL = "Ada.Lovelace@example.com"
HOSTILE = {
    "bomb": (b"[" * 10000 + b"]" * 10000, "nested too deeply"),
    "not-utf8": (b'{"user_email": "\xff\xfe@example.com"}', "not UTF-8"),
    "surrogate": (b'{"user_email": "\\ud800@x.com"}', "invalid 'user_email'"),
    "not-an-object": (b'"ada.lovelace@example.com"', "must be a JSON object"),
    "no-address": (b'{"requested_by": "dpo"}', "'user_email' is required"),
    "two-megabytes": (
        json.dumps({"user_email": EMAIL, "requested_by": "x" * 2_000_000}).encode(), "the limit is"
    ),
}


def produce_in_order(bootstrap_server: str, topic: str, records: list[tuple[str, bytes]]) -> None:
    """One producer, large records allowed (a default one refuses 2 MB before sending)."""
    producer = Producer({"bootstrap.servers": bootstrap_server, "message.max.bytes": 8_000_000,
                         "enable.idempotence": True})
    for key, value in records:
        producer.produce(topic, value, key.encode())
    assert producer.flush(20) == 0


def committed_offset(bootstrap_server: str, group: str, topic: str) -> int:
    """The group's committed offset of the topic's partition 0 (without joining it)."""
    consumer = Consumer({"bootstrap.servers": bootstrap_server, "group.id": group,
                         "enable.auto.commit": False})
    try:
        [partition] = consumer.committed([TopicPartition(topic, 0)], timeout=10)
        return partition.offset
    finally:
        consumer.close()


def metric_samples(worker) -> dict[tuple[str, tuple], float]:
    status, _, body = worker.fetch("/metrics")
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def test_hostile_erasure_requests_are_dead_lettered_and_the_next_erasure_is_applied(
    broker, topics, fake_openai, worker_env, worker
):
    produce(broker, topics["REQUEST_TOPIC"], [
        ("q-1", json.dumps({"user_email": EMAIL, "message": "my secret is 42"}).encode())
    ])
    read_until_all(broker, topics["RESPONSE_TOPIC"], {"q-1"}, timeout=30)

    records = [(key, value) for key, (value, _) in HOSTILE.items()]
    records.append(("real", json.dumps({"user_email": EMAIL.lower(), "requested_by": "dpo 9"}).encode()))
    produce_in_order(broker.bootstrap_server, topics["ERASE_TOPIC"], records)

    # The real one, after all of them, is applied: the conversation reads as erased.
    deadline = time.monotonic() + 60
    while "UserErased" not in [type(e).__name__ for e in events_of(worker_env, EMAIL)]:
        assert time.monotonic() < deadline, f"the erasure was not applied:\n{worker.log()[-3000:]}"
        time.sleep(0.2)
    events = events_of(worker_env, EMAIL)
    [erased] = [e for e in events if type(e).__name__ == "UserErased"]
    assert erased.requested_by == "dpo 9"
    for event in events:
        for field in ("user_email", "message", "reply"):
            if hasattr(event, field):
                assert getattr(event, field) == ERASED, (type(event).__name__, field)

    # Every hostile one is in the DLQ with its reason and its original bytes, sealed.
    seal = DeadLetterSeal(worker_env["SECRET_KEY"])
    letters = {key: (value, headers)
               for key, value, headers in read_records(broker, topics["DLQ_TOPIC"], len(HOSTILE), 30)}
    assert set(letters) == set(HOSTILE)
    for key, (original, expected) in HOSTILE.items():
        sealed, headers = letters[key]
        reason = headers["reason"].decode()
        assert expected in reason, (key, reason)
        assert headers["source_topic"].decode() == topics["ERASE_TOPIC"]
        assert "value_omitted" not in headers, (key, headers)
        assert seal.open(sealed) == original, key

    # The erasure consumer's group has committed past every record.
    group, topic = f"{topics['CONSUMER_GROUP']}-erase", topics["ERASE_TOPIC"]
    deadline = time.monotonic() + 20
    while (offset := committed_offset(broker.bootstrap_server, group, topic)) < len(records):
        assert time.monotonic() < deadline, f"committed offset {offset} of {len(records)}"
        time.sleep(0.2)
    assert offset == len(records)

    # Ready, with the erasures check ok and counting; the metrics agree.
    deadline = time.monotonic() + 20
    while True:
        status, body = worker.readiness()
        erasures = body["checks"].get("erasures", {})
        if status == 200 and erasures.get("applied") == 1:
            break
        assert time.monotonic() < deadline, (status, body)
        time.sleep(0.2)
    assert erasures["status"] == "ok" and erasures["running"] is True
    assert erasures["dead_lettered"] == len(HOSTILE) and erasures["refused"] == 0
    assert erasures["seconds_since_poll"] < 5
    samples = metric_samples(worker)
    assert samples[("chater_gpt_erasure_consumer_up", ())] == 1
    assert samples[("chater_gpt_erasures", (("outcome", "applied"),))] == 1
    assert samples[("chater_gpt_erasures", (("outcome", "dead_lettered"),))] == len(HOSTILE)
    assert samples[("chater_gpt_erasures", (("outcome", "refused"),))] == 0
    assert worker.liveness()[0] == 200
    assert "Traceback" not in worker.log()
