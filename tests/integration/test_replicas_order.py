"""One conversation, one order, any number of replicas: requests keyed by request id
through the default partitioner (the platform's keying) land on every partition,
and still each conversation's turns reach the model in turn order, each with the
whole earlier conversation, while all three replicas answer."""

from __future__ import annotations

import json
import re
import signal
import threading
import time
import uuid
from collections import Counter

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from tests.support.records import private_topics, read_until_all, where_are
from tests.support.replicas import text, wait_until_settled
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.integration

WORKERS, PARTITIONS, CONVERSATIONS, TURNS = 3, 6, 40, 4


@pytest.mark.timeout(240)
def test_three_replicas_answer_every_conversation_in_order_with_its_whole_history(
    broker, fake_openai, worker_env, tmp_path, request
):
    topics = private_topics(broker.bootstrap_server, request_partitions=PARTITIONS)
    # ORDER_WINDOW covers the hand-over's delay, milliseconds on an idle machine. Here
    # three replicas share two cores with the broker, the model server and the suite's
    # other process, and one hand-over once took longer than the default 0.5 s: a turn
    # that overtook its predecessor failed this test. Two seconds keeps the test about
    # order, not about how busy the machine is.
    env = {**worker_env, **topics, "TOPIC_PARTITIONS": str(PARTITIONS), "LOG_FORMAT": "json",
           "ORDER_WINDOW": "2"}
    workers = [WorkerProcess(env, tmp_path / f"worker{n}.log") for n in range(WORKERS)]
    request.addfinalizer(lambda: [w.stop(signal.SIGKILL) for w in workers if w.process])
    for worker in workers:
        worker.start()
    # Both stages of every replica own partitions, every partition has its owner,
    # and nothing has moved for 3 s, before anything is produced.
    wait_until_settled(workers, PARTITIONS)
    fake_openai.set_latency(0.2)

    producer = Producer({"bootstrap.servers": broker.bootstrap_server})
    keys: dict[str, tuple[int, int]] = {}
    partitions_used: set[int] = set()

    def delivered(error, message) -> None:
        assert error is None, error
        partitions_used.add(message.partition())

    for turn in range(TURNS):  # back to back: nobody waits for an answer
        for conversation in range(CONVERSATIONS):
            key = uuid.uuid4().hex  # the platform's keying: a random request id
            keys[key] = (conversation, turn)
            body = {"user_email": f"user{conversation}@example.com", "message": text(conversation, turn)}
            producer.produce(topics["REQUEST_TOPIC"], json.dumps(body).encode(), key.encode(),
                             on_delivery=delivered)
        producer.flush(10)
        time.sleep(0.005)  # turns of one conversation a few milliseconds apart, at least
    assert partitions_used == set(range(PARTITIONS))

    responses = read_until_all(broker, topics["RESPONSE_TOPIC"], set(keys), timeout=150)
    # Every request answered; a second response (a record fetched again after a
    # rebalance, answered from the store) is the same bytes as the first.
    bodies: dict[str, set[bytes]] = {}
    for key, value in responses:
        bodies.setdefault(key, set()).add(value)
    missing = set(keys) - set(bodies)
    assert not missing, where_are(broker, topics, missing, PARTITIONS)
    assert all(len(b) == 1 for b in bodies.values())
    print(f"responses: {len(responses)} for {len(keys)} requests")
    assert all(json.loads(value).get("error") is None for _, value in responses)

    calls = fake_openai.requests()
    assert len(calls) == CONVERSATIONS * TURNS  # none twice
    order: dict[int, list[int]] = {}
    for call in calls:
        users = [m["content"] for m in call["messages"] if m["role"] == "user"]
        replies = [m["content"] for m in call["messages"] if m["role"] == "assistant"]
        conversation, turn = map(int, re.match(r"c(\d+)-t(\d+):", users[-1]).groups())
        order.setdefault(conversation, []).append(turn)
        # The whole earlier conversation: every earlier turn, and the reply to each.
        assert users == [text(conversation, t) for t in range(turn + 1)], users
        assert len(replies) == turn and all(text(conversation, t) in replies[t] for t in range(turn))
    print(f"model calls in turn order: {sum(o == sorted(o) for o in order.values())} "
          f"of {CONVERSATIONS} conversations")
    assert all(turns == list(range(TURNS)) for turns in order.values()), order

    shares = [w.log().count('"request done"') for w in workers]
    print(f"answered per replica: {shares}")
    assert sum(shares) == CONVERSATIONS * TURNS
    assert all(share >= CONVERSATIONS * TURNS / 10 for share in shares), shares


@pytest.mark.timeout(180)
def test_a_worker_killed_while_handing_over_loses_nothing_and_pays_nothing_twice(
    broker, fake_openai, worker_env, tmp_path, request
):
    topics = private_topics(broker.bootstrap_server, request_partitions=PARTITIONS)
    # TIMEOUT 3: the killed worker's calls out are waited for that long, not 30 s.
    env = {**worker_env, **topics, "TOPIC_PARTITIONS": str(PARTITIONS), "TIMEOUT": "3"}
    worker = WorkerProcess(env, tmp_path / "worker.log")
    request.addfinalizer(lambda: worker.process and worker.stop(signal.SIGKILL))
    worker.start()
    repartition = f"{topics['CONSUMER_GROUP']}-{topics['REQUEST_TOPIC']}-repartition"
    producer = Producer({"bootstrap.servers": broker.bootstrap_server, "linger.ms": 5})
    total = 500
    keys: list[str] = []

    def produce() -> None:
        for n in range(total):
            body = {"user_email": f"user{n % 50}@example.com", "message": f"m{n}: hello"}
            keys.append(uuid.uuid4().hex)
            producer.produce(topics["REQUEST_TOPIC"], json.dumps(body).encode(), keys[-1].encode())
            if n % 25 == 24:
                producer.flush(10)
                time.sleep(0.05)
        producer.flush(10)

    feeder = threading.Thread(target=produce)
    feeder.start()
    time.sleep(1.0)  # records are being handed over ...
    worker.stop(signal.SIGKILL)  # ... when the worker dies
    # A call the worker sent just before it died may reach the model server a moment
    # later: the calls are told apart by the restart, not by the kill.
    restarted_at = time.time()
    worker.start()
    feeder.join(60)

    # Every record of gpt-send is on the repartition topic, under its conversation's
    # key; a copy only of what was handed over but not yet committed at the kill.
    reader = Consumer({"bootstrap.servers": broker.bootstrap_server, "group.id": f"r-{uuid.uuid4().hex}",
                       "enable.auto.commit": False})
    reader.assign([TopicPartition(repartition, p, 0) for p in range(PARTITIONS)])
    sources: Counter[tuple[int, int]] = Counter()
    keys_by_user: dict[str, set[bytes]] = {}
    deadline, last_new = time.monotonic() + 90, time.monotonic()
    try:
        while time.monotonic() < deadline and (len(sources) < total or time.monotonic() - last_new < 3):
            message = reader.poll(0.2)
            if message is None or message.error():
                continue
            headers = dict(message.headers())
            sources[(int(headers["chater.source_partition"]), int(headers["chater.source_offset"]))] += 1
            user = json.loads(message.value())["user_email"]
            keys_by_user.setdefault(user, set()).add(message.key())
            last_new = time.monotonic()
    finally:
        reader.close()
    copies = sum(n - 1 for n in sources.values())
    print(f"handed over: {len(sources)} of {total} records, {copies} of them twice")
    assert len(sources) == total and copies <= 500  # at most a batch (MAX_BATCH) again
    assert all(len(keys) == 1 for keys in keys_by_user.values())  # one key per conversation

    # Each request answered, and the model asked once for each, copies or not; a
    # second time only for a call the killed worker had out (it never recorded
    # the reply): asked before the kill, and again after it.
    responses = read_until_all(broker, topics["RESPONSE_TOPIC"], set(keys), timeout=90)
    assert set(keys) <= {key for key, _ in responses}
    asked: dict[str, list[float]] = {}
    for call in fake_openai.calls():
        if re.match(r"m\d+: hello", call["text"]):
            asked.setdefault(call["text"], []).append(call["received_at"])
    assert len(asked) == total
    again = {text: sorted(times) for text, times in asked.items() if len(times) > 1}
    print(f"asked again after the kill (their first call was out): {len(again)}")
    assert all(len(times) == 2 and times[0] < restarted_at < times[1] for times in again.values()), again
