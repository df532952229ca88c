"""`chater-gpt dead-letters --replay`, with a real worker and broker: records refused
under a bound too low go back to gpt-send once the bound is raised, are answered,
and no dead letter is replayed twice."""

from __future__ import annotations

import json
import re
import signal

import pytest
from confluent_kafka import Producer

from adapters.dead_letters import DeadLetterSeal
from entrypoints.cli import main as chater_gpt
from tests.support.records import produce, read_records
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.integration


def test_dead_letters_go_back_once_and_are_answered_after_their_cause_is_fixed(
        broker, worker_env, topics, tmp_path, monkeypatch, capsys):
    big = json.dumps({"user_email": "ada@example.com", "message": "long " * 400}).encode()
    produce(broker, topics["REQUEST_TOPIC"], [("big-1", big), ("bad-1", b"{not json")])

    # MAX_REQUEST_BYTES too low: both are refused and dead-lettered.
    worker = WorkerProcess({**worker_env, "MAX_REQUEST_BYTES": "1000"}, tmp_path / "worker1.log")
    worker.start()
    try:
        refused = {key: json.loads(value) for key, value, _ in
                   read_records(broker, topics["RESPONSE_TOPIC"], 2)}
        assert refused["big-1"]["error"]["message"] == f"the record is {len(big)} bytes; the limit is 1000"
        assert read_records(broker, topics["DLQ_TOPIC"], 2)
    finally:
        worker.stop(signal.SIGTERM)

    for name, value in worker_env.items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    assert chater_gpt(["dead-letters", "--replay"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"replayed 2 dead letter(s) from {topics['DLQ_TOPIC']}"
    # In the order they were dead-lettered, which is the worker's.
    assert any(re.match(rf"replayed {re.escape(topics['DLQ_TOPIC'])}/0/[01] key='big-1' to "
                        rf"{re.escape(topics['REQUEST_TOPIC'])} \(it was: the record is {len(big)} "
                        "bytes", line) for line in out), out

    # The bound raised: the big request is answered; the bad one is refused again.
    worker = WorkerProcess(worker_env, tmp_path / "worker2.log")
    worker.start()
    try:
        records = read_records(broker, topics["RESPONSE_TOPIC"], 4)
        answered = {key: json.loads(value) for key, value, _ in records[2:]}
        assert answered["big-1"]["response"].startswith("echo: long long")
        assert answered["bad-1"]["error"]["type"] == "invalid_request"
        replayed = read_records(broker, topics["REQUEST_TOPIC"], 4)[2:]
        assert {headers["chater.replay_of"].decode() for _, _, headers in replayed} == {
            f"{topics['DLQ_TOPIC']}/0/0", f"{topics['DLQ_TOPIC']}/0/1"}
        assert [value for key, value, _ in replayed if key == "big-1"] == [big]  # the bytes sent
        assert len(read_records(broker, topics["DLQ_TOPIC"], 3)) == 3  # bad-1 again
    finally:
        worker.stop(signal.SIGTERM)

    # Only what is new since the last replay goes back: bad-1's second dead letter.
    assert chater_gpt(["dead-letters", "--replay"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"replayed 1 dead letter(s) from {topics['DLQ_TOPIC']}"
    assert out[0].startswith(f"replayed {topics['DLQ_TOPIC']}/0/2 key='bad-1'")
    assert chater_gpt(["dead-letters", "--replay"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"replayed 0 dead letter(s) from {topics['DLQ_TOPIC']}"]


def dead_letter(topic: str, **more: str) -> list[tuple[str, bytes]]:
    """The headers the worker gives a dead letter of `topic`."""
    headers = {"value_encryption": "aes-256-gcm;chater-gpt/dead-letters/v1",
               "error_type": "invalid_request", "reason": "a test", "source_topic": topic,
               "source_partition": "0", "source_offset": "0", **more}
    return [(name, text.encode()) for name, text in headers.items()]


def test_a_dead_letter_another_key_sealed_stops_the_replay_until_that_key_is_given(
        broker, worker_env, topics, monkeypatch, capsys):
    old, new = DeadLetterSeal("the-old-secret"), DeadLetterSeal(worker_env["SECRET_KEY"])
    requests, dlq = topics["REQUEST_TOPIC"], topics["DLQ_TOPIC"]
    producer = Producer({"bootstrap.servers": broker.bootstrap_server})
    letters = [
        ("a-1", new.seal(b"first"), dead_letter(requests)),
        ("a-2", old.seal(b"second"), dead_letter(requests)),
        ("a-3", b"", dead_letter(requests, value_omitted="MSG_SIZE_TOO_LARGE")),
        ("a-4", new.seal(b"fourth"), dead_letter("someone-elses-topic")),
    ]
    for key, value, headers in letters:
        producer.produce(dlq, value, key.encode(), headers=headers)
    assert producer.flush(10) == 0
    for name, value in worker_env.items():
        monkeypatch.setenv(name, value)

    capsys.readouterr()
    assert chater_gpt(["dead-letters", "--replay"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith(f"stopped at {dlq}/0/1 key='a-2': sealed with another SECRET_KEY")
    assert out[-1] == (f"replayed 1 dead letter(s) from {dlq}; stopped at {dlq}/0/1, which "
                       "SECRET_KEY cannot open")

    monkeypatch.setenv("SECRET_KEY_PREVIOUS", "the-old-secret")
    assert chater_gpt(["dead-letters", "--replay"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"replayed {dlq}/0/1 key='a-2' to {requests}")
    assert out[1] == f"passed over {dlq}/0/2 key='a-3': kept without its value"
    assert out[2] == (f"passed over {dlq}/0/3 key='a-4': from someone-elses-topic, which the "
                      "service does not read")
    assert out[-1] == f"replayed 1 dead letter(s) from {dlq}; passed over 2 that cannot be replayed"
    # What went back: each once, its bytes opened.
    assert [(key, value) for key, value, _ in read_records(broker, requests, 2)] == [
        ("a-1", b"first"), ("a-2", b"second")]
