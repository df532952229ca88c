"""Fault injection: the real worker through every failure at once, then the counts.

Two `chater-gpt worker` processes share one consumer group, one PostgreSQL and
one daily token budget. While conversations stream in, mixed with poison
records, the model server fails at random (429 with Retry-After, 500, 503,
timeouts, dropped connections, bodies that are not JSON) and has a regional
outage; PostgreSQL is stopped and started; the broker becomes unreachable
(every connection reset, new ones refused) and comes back; one worker is
killed with SIGKILL and started again. After the final drain the suite counts,
prints and checks: lost requests, duplicate responses, duplicate model calls,
per-conversation order, the budget, and what /readyz said meanwhile.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from adapters.event_store import ChatRecords, event_store_env
from domain.token_budget import SERVICE_SCOPE
from tests.support.records import private_topics
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.integration

CONVERSATIONS = 40
TURNS = 5
DAILY_TOKEN_LIMIT = 12000
SECRET = "fault-suite-secret"
CHAOS = {"429": 0.07, "500": 0.06, "503": 0.02, "timeout": 0.03, "disconnect": 0.03, "malformed": 0.03}
NOT_AN_IMAGE = "bm90IGFuIGltYWdl"  # base64 of "not an image"
TRUNCATED_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAAB"  # the start of a PNG, cut off


def poison_records(n: int) -> list[tuple[str, str | None, bytes]]:
    """(kind, key, value) of records that cannot be answered; round `n` makes keys unique."""
    ok = {"user_email": "poison@example.com", "message": f"poison-{n}: hi"}
    return [
        ("not JSON", f"bad-json-{n}", b"{this is not json"),
        ("wrong types", f"bad-types-{n}", json.dumps({**ok, "max_tokens": "many"}).encode()),
        ("missing fields", f"bad-missing-{n}", json.dumps({"message": "who am I?"}).encode()),
        ("too large", f"bad-huge-{n}", json.dumps({**ok, "message": "x" * 30_000}).encode()),
        ("invalid image", f"bad-image-{n}", json.dumps({**ok, "images": [NOT_AN_IMAGE]}).encode()),
        ("truncated image", f"bad-png-{n}", json.dumps({**ok, "images": [TRUNCATED_PNG]}).encode()),
        ("control characters", f"bad-control-{n}", json.dumps({**ok, "message": "poison: hi\x00\x07"}).encode()),
        ("no key", None, json.dumps(ok).encode()),
    ]


LONG_WAIT_KEY = "f-7-0"  # asked before the region outage, long before the kill


def request_key(conversation: int, turn: int) -> str:
    return f"f-{conversation}-{turn}"


class ReadinessWatch(threading.Thread):
    """Polls each worker's /readyz and keeps which checks failed, and when."""

    def __init__(self, workers: list[WorkerProcess]) -> None:
        super().__init__(daemon=True)
        self.workers = workers
        self.samples: list[tuple[float, int, int, set[str]]] = []  # time, worker, status, failing
        self.in_flight: list[tuple[float, int, int]] = []  # time, worker, records held
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for number, worker in enumerate(self.workers):
                try:
                    status, body = worker.readiness(timeout=1.0)
                    failing = {n for n, c in body["checks"].items() if c["status"] != "ok"}
                    # A worker still starting has only its "startup" check.
                    held = body["checks"].get("queue_depth", {}).get("in_flight", 0)
                    self.in_flight.append((time.time(), number, held))
                except OSError:
                    status, failing = 0, {"unreachable"}
                self.samples.append((time.time(), number, status, failing))
            time.sleep(0.25)

    def failing_between(self, start: float, end: float) -> Counter[str]:
        return Counter(
            check
            for at, _, _, failing in self.samples
            if start <= at <= end
            for check in failing
        )


def wait_until_ready(worker: WorkerProcess, timeout: float = 15.0) -> int:
    """/readyz's status once it is 200, or the last one after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        status, _ = worker.readiness()
        if status == 200 or time.monotonic() > deadline:
            return status
        time.sleep(0.2)


def read_all(bootstrap: str, topic: str, until_keys: set[str], timeout: float, quiet: float = 3.0):
    """Every record of a topic (one partition) until `until_keys` are seen and nothing new
    arrived for `quiet` seconds: (offset, key, value, headers)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"r-{uuid.uuid4().hex}",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, 0)])
    seen: list[tuple[int, str | None, bytes, dict]] = []
    deadline = time.monotonic() + timeout
    last_new = time.monotonic()
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is not None and not message.error():
                key = message.key().decode() if message.key() is not None else None
                seen.append((message.offset(), key, message.value(), dict(message.headers() or [])))
                last_new = time.monotonic()
            elif until_keys <= {k for _, k, _, _ in seen} and time.monotonic() - last_new > quiet:
                break
    finally:
        consumer.close()
    return seen


@pytest.mark.timeout(400)
def test_nothing_lost_nothing_paid_twice_through_every_fault(
    flaky_broker, postgres, fake_openai, tmp_path, capsys, request
):
    bootstrap = flaky_broker.bootstrap_server
    topics = private_topics(bootstrap, request_partitions=2)
    suffix = topics["CONSUMER_GROUP"].rsplit("-", 1)[-1]
    database = f"faults_{suffix}"
    postgres.create_database(database)
    env = {
        **{k: v for k, v in os.environ.items() if k not in {"MODEL_PROVIDER", "DATABASE_URL"}},
        **topics,
        "BOOTSTRAP_SERVER": bootstrap,
        "DATABASE_URL": postgres.url(database),
        "OPENAI_API_KEY": "test-key",
        "OPENAI_BASE_URL": fake_openai.base_url,
        "SECRET_KEY": SECRET,
        "MAX_RETRIES": "8",
        "TIMEOUT": "1",
        "CIRCUIT_FAILURE_THRESHOLD": "5",
        "CIRCUIT_PROBE_INTERVAL": "0.5",
        "REQUESTS_PER_MINUTE": "0",
        "MAX_TOKENS": "100",
        "MAX_IN_FLIGHT": "20",
        "MAX_REQUEST_BYTES": "20000",
        "DAILY_TOKEN_LIMIT": str(DAILY_TOKEN_LIMIT),
        "BUDGET_CHUNK_TOKENS": "1000",
        # The killed worker's lease stops holding room after 10 s, not the default minute.
        "BUDGET_LEASE_EXPIRY": "10",
        "TOPIC_PARTITIONS": "2",
        "SHUTDOWN_TIMEOUT": "10",
        "LOG_LEVEL": "INFO",
    }
    workers = [WorkerProcess(env, tmp_path / f"worker{n}.log") for n in range(2)]
    request.addfinalizer(lambda: [w.stop(signal.SIGKILL) for w in workers if w.process])
    for worker in workers:
        worker.start()
    watch = ReadinessWatch(workers)
    watch.start()

    # Slow enough that records are in flight whenever a fault strikes.
    fake_openai.set_latency(0.5)
    fake_openai.chaos(CHAOS, seed=5, retry_after=(0.1, 2.0), timeout_delay=3.0)
    # An unknown model: the provider says so (404), once per request that asks for it.
    fake_openai.script([{"status": 404, "match": "f-unknown"}] * 2)
    # A long Retry-After, as OpenAI sends when a quota window is spent: obeyed, not hammered.
    fake_openai.script([{"status": 429, "headers": {"retry-after": "5"}, "match": LONG_WAIT_KEY}])

    valid: dict[str, tuple[int, int]] = {}  # key -> (conversation, turn)
    poison: dict[str, str] = {}  # key -> kind
    poison_kinds: Counter[str] = Counter()
    producer = Producer({"bootstrap.servers": bootstrap})

    def feed() -> None:
        """One turn of every conversation per round, poison in between, while faults happen."""
        for turn in range(TURNS):
            for conversation in range(CONVERSATIONS):
                key = request_key(conversation, turn)
                valid[key] = (conversation, turn)
                body = {"user_email": f"user{conversation}@example.com",
                        "message": f"{key}: question {turn} of conversation {conversation}"}
                # The platform's keying: by request id, the default partitioner.
                producer.produce(topics["REQUEST_TOPIC"], json.dumps(body).encode(), key.encode())
            for kind, key, value in poison_records(turn) if turn < 2 else []:
                poison_kinds[kind] += 1
                if key is not None:
                    poison[key] = kind
                producer.produce(topics["REQUEST_TOPIC"], value, key.encode() if key else None)
            if turn == 0:
                for n in range(2):
                    key = f"f-unknown-{n}"
                    poison[key] = "unknown model"
                    body = {"user_email": "curious@example.com", "message": f"{key}: hi",
                            "model": "gpt-nonexistent"}
                    producer.produce(topics["REQUEST_TOPIC"], json.dumps(body).encode(), key.encode())
            producer.flush(30)
            time.sleep(3.0)

    feeder = threading.Thread(target=feed, daemon=True)
    started = time.time()
    feeder.start()
    timeline: dict[str, tuple[float, float]] = {}

    def fault(name: str, at: float, action) -> None:
        """Start `action` `at` seconds into the run, and at least 2 s after the last
        fault ended, so that what readiness saw is told apart per fault."""
        last_end = max((end for _, end in timeline.values()), default=0.0)
        time.sleep(max(0.0, started + at - time.time(), last_end + 2.0 - time.time()))
        begin = time.time()
        action()
        timeline[name] = (begin, time.time())

    fault("model region outage (503 to everything, 4 s)", 2, lambda: fake_openai.outage(4.0, 503))
    begin, _ = timeline["model region outage (503 to everything, 4 s)"]
    timeline["model region outage (503 to everything, 4 s)"] = (begin, begin + 4.0)

    def kill_and_restart() -> None:
        workers[0].stop(signal.SIGKILL)
        time.sleep(1.0)
        workers[0].start()

    # Just after the fourth round was produced: records are in flight on both workers.
    fault("worker 0 killed (SIGKILL) and restarted", 9.3, kill_and_restart)
    kill_at = timeline["worker 0 killed (SIGKILL) and restarted"][0]
    fault("PostgreSQL stopped for 3 s", 12, lambda: postgres.restart(down_for=3.0))
    fault("broker unreachable for 5 s", 18, lambda: flaky_broker.outage(5.0))
    feeder.join(60)
    assert not feeder.is_alive(), "producing the requests did not finish"

    answerable = set(valid) | set(poison)
    responses = read_all(bootstrap, topics["RESPONSE_TOPIC"], answerable, timeout=120)
    missing = answerable - {key for _, key, _, _ in responses}
    assert not missing, (sorted(missing)[:20],
                         [w.readiness()[1]["checks"]["queue_depth"] for w in workers])
    fake_openai.chaos(None)
    # What worker 0 held at its last /readyz before the kill.
    held_at_kill = [held for at, number, held in watch.in_flight if number == 0 and at < kill_at][-1:]
    ready_at_end = [wait_until_ready(worker) for worker in workers]
    for worker in workers:
        assert worker.stop() == 0, worker.log()[-3000:]
    # Anything a stopping worker produced last is read too.
    responses = read_all(bootstrap, topics["RESPONSE_TOPIC"], answerable, timeout=30)
    dead_letters = read_all(bootstrap, topics["DLQ_TOPIC"], set(), timeout=30)
    watch.done.set()
    watch.join(5)

    # --- the counts ------------------------------------------------------------
    by_key: dict[str, list[tuple[int, bytes]]] = defaultdict(list)
    for offset, key, value, _ in responses:
        by_key[key].append((offset, value))
    first = {key: json.loads(values[0][1]) for key, values in by_key.items()}
    lost = sorted(answerable - set(by_key))
    unexpected = sorted(set(by_key) - answerable)
    duplicates = {key: values for key, values in by_key.items() if len(values) > 1}
    identical = sum(len(v) - 1 for v in duplicates.values() if len({b for _, b in v}) == 1)
    differing = {
        key: [json.loads(b) for _, b in v]
        for key, v in duplicates.items() if len({b for _, b in v}) > 1
    }
    # Invalid records are in no conversation, so a crash's redelivery refuses them again
    # with a new timestamp: the same refusal, told twice.
    refused_again = {
        key for key, v in differing.items()
        if key in poison and len({json.dumps({**p, "timestamp": 0, "processing_time": 0})
                                  for p in v}) == 1
    }
    outcomes = Counter(
        "answered" if "response" in body else body["error"]["type"]
        for key, body in first.items() if key in valid
    )

    ok_calls: dict[str, list[float]] = defaultdict(list)
    calls = fake_openai.calls()
    for call in calls:
        if call["kind"] == "ok":
            ok_calls[call["text"].split(":")[0]].append(call["received_at"])
    repeated = {key: times for key, times in ok_calls.items() if len(times) > 1}
    # A worker killed while its call was answered never recorded the reply: its
    # successor has to ask again. Only those may repeat: answered in the moment
    # before the kill (the model's latency and a little), asked again after it.
    after_crash = {
        key for key, times in repeated.items()
        if kill_at - 2.0 < sorted(times)[0] < kill_at < sorted(times)[1] and len(times) == 2
    }
    paid_twice = sorted(set(repeated) - after_crash)
    # The call that got "Retry-After: 5" (whenever it came), and the next one of that request.
    asked = sorted((c["received_at"], c["kind"]) for c in calls if c["text"].startswith(LONG_WAIT_KEY + ":"))
    told = next(n for n, (_, kind) in enumerate(asked) if kind == "scripted")
    long_wait = [at for at, _ in asked[told:told + 2]]

    order_violations = []
    for conversation in range(CONVERSATIONS):
        answered_before = 0
        offsets = []
        for turn in range(TURNS):
            key = request_key(conversation, turn)
            body = first.get(key)
            if body is None:
                continue
            offsets.append(by_key[key][0][0])
            if "response" in body:
                seen = int(body["response"].split("seen: ")[1].split(" ")[0])
                if seen != 2 * answered_before + 1:
                    order_violations.append((key, seen, answered_before))
                answered_before += 1
        if offsets != sorted(offsets):
            order_violations.append((f"conversation {conversation}", "responses out of order", offsets))

    spent = sum(
        body["usage"]["total_tokens"] for key, body in first.items() if "response" in body
    )
    records = ChatRecords(env=event_store_env(postgres.url(database), SECRET))
    try:
        day = datetime.now(UTC).date().isoformat()
        budget = records.budget(SERVICE_SCOPE, day)
        budget_used, budget_held = budget.used, budget.reserved
    finally:
        records.close()

    dlq_by_key = Counter(key for _, key, _, _ in dead_letters)
    faults = fake_openai.faults()
    windows = {name: watch.failing_between(*span) for name, span in timeline.items()}

    report = [
        "",
        "fault injection: 2 workers, PostgreSQL, broker behind a cuttable proxy, model with chaos",
        f"  requests sent          {len(valid)} valid over {CONVERSATIONS} conversations, "
        f"{sum(poison_kinds.values()) + 2} refused on purpose",
        "  faults injected",
        *(f"    model {kind:<18} {count}" for kind, count in sorted(faults.items())),
        *(f"    poison: {kind:<17} {count}" for kind, count in sorted(poison_kinds.items())),
        "    poison: unknown model     2",
        *(f"    {name}" for name in timeline),
        f"    (worker 0 held {held_at_kill} records in flight at its last /readyz before the kill)",
        "  results after the final drain",
        f"    lost                     {len(lost)}",
        f"    unexpected keys          {len(unexpected)}",
        f"    duplicate responses      {identical} identical, {len(refused_again)} invalid records "
        f"refused again after the crash, {len(differing) - len(refused_again)} differing",
        f"    duplicate model calls    {len(paid_twice)} (+{len(after_crash)} asked again after "
        f"the SIGKILL: the killed worker never recorded their replies)",
        f"    order violations         {len(order_violations)}",
        f"    Retry-After: 5 obeyed    asked again after {long_wait[1] - long_wait[0]:.1f} s",
        f"    outcomes                 {dict(outcomes)}",
        f"    model calls              {len(calls)} ({sum(len(t) for t in ok_calls.values())} answered)",
        f"    budget                   {spent} tokens in responses, {budget_used} settled + "
        f"{budget_held} held in the store, limit {DAILY_TOKEN_LIMIT}",
        f"    dead letters             {len(dead_letters)} ({sum(poison_kinds.values())} poison records)",
        "  readiness (checks seen failing during each fault, both workers)",
        *(f"    {name:<50} {dict(counts)}" for name, counts in windows.items()),
        f"    at the end                 {ready_at_end}",
    ]
    with capsys.disabled():
        print("\n".join(report))

    assert not lost, lost[:10]
    assert not unexpected, unexpected[:10]
    assert len(differing) == len(refused_again), list(differing.items())[:3]
    assert not paid_twice, {k: repeated[k] for k in paid_twice[:5]}
    assert not order_violations, order_violations[:10]
    assert long_wait[1] - long_wait[0] >= 5.0 or long_wait[0] < kill_at < long_wait[1], long_wait
    assert spent <= DAILY_TOKEN_LIMIT and budget_used + budget_held <= DAILY_TOKEN_LIMIT
    assert spent <= budget_used  # every token paid for is counted in the budget
    assert outcomes["answered"] > len(valid) // 2, outcomes
    assert set(outcomes) <= {"answered", "budget_exceeded"}, outcomes
    for key, kind in poison.items():
        body = first[key]
        assert "error" in body, (kind, body)
        if kind != "unknown model":
            assert body["error"]["type"] == "invalid_request" and dlq_by_key[key] >= 1, (kind, body)
    assert len(dead_letters) >= sum(poison_kinds.values())
    # Every kind of model fault happened, and readiness saw our own parts go down.
    assert set(CHAOS) | {"outage"} <= set(faults), faults
    assert windows["PostgreSQL stopped for 3 s"]["event_store"] >= 1, windows
    assert windows["broker unreachable for 5 s"]["kafka_broker"] >= 1, windows
    assert ready_at_end == [200, 200], watch.samples[-4:]
