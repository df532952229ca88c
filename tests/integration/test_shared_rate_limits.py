"""REQUESTS_PER_MINUTE and TOKENS_PER_MINUTE for the whole service: three
`chater-gpt worker` processes sharing one Redis stay within the limits together,
as the model server sees its calls.

One minute-long run for both limits: two services (consumer groups) of three
worker processes each run side by side on the same Redis, one limited in calls,
one in tokens; each service's limits are its own (keyed by its consumer group)."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import redis

from tests.support.records import private_topics, produce, read
from tests.support.worker import WorkerProcess, start_together

pytestmark = pytest.mark.integration

REQUESTS = 45
WINDOW = 60.0
# The model server sees a call a little after the limiter let it through (Redis's
# clock): the time to send it. Windows are checked this much shorter.
SEND_DELAY = 0.5
FILLER = " ".join(f"word{n}" for n in range(18))  # 20 words a message with the key


def most_in_a_window(calls: list[tuple[float, int]]) -> int:
    """The largest sum of weights of calls received within any WINDOW - SEND_DELAY."""
    calls = sorted(calls)
    most, start, total = 0, 0, 0
    for received, weight in calls:
        total += weight
        while calls[start][0] <= received - (WINDOW - SEND_DELAY):
            total -= calls[start][1]
            start += 1
        most = max(most, total)
    return most


def service(broker, postgres, fake_openai, redis_url, tmp_path, name: str, **limits: str):
    topics = private_topics(broker.bootstrap_server, request_partitions=3)
    database = f"limits_{name}_{os.getpid()}_{int(time.time())}"
    postgres.create_database(database)
    env = {
        **{k: v for k, v in os.environ.items() if k not in {"MODEL_PROVIDER", "DATABASE_URL"}},
        **topics,
        "BOOTSTRAP_SERVER": broker.bootstrap_server,
        "DATABASE_URL": postgres.url(database),
        "OPENAI_API_KEY": "test-key", "OPENAI_BASE_URL": fake_openai.base_url,
        "SECRET_KEY": "limits-secret", "MAX_RETRIES": "0", "LOG_LEVEL": "INFO",
        "DAILY_TOKEN_LIMIT": "100000000", "REDIS_URL": redis_url, "PII_MODE": "off",
        "CONTEXT_STRATEGY": "truncate",
        **limits,
    }
    workers = [WorkerProcess(env, tmp_path / f"{name}-{n}.log") for n in range(3)]
    return topics, workers


def test_three_replicas_stay_within_the_limits_together(
    broker, postgres, fake_openai, redis_url, tmp_path
):
    calls_topics, calls_workers = service(
        broker, postgres, fake_openai, redis_url, tmp_path, "calls",
        REQUESTS_PER_MINUTE="30", TOKENS_PER_MINUTE="0", MAX_TOKENS="60",
    )
    tokens_topics, tokens_workers = service(
        broker, postgres, fake_openai, redis_url, tmp_path, "tokens",
        REQUESTS_PER_MINUTE="0", TOKENS_PER_MINUTE="1500", MAX_TOKENS="60",
    )
    workers = calls_workers + tokens_workers
    try:
        start_together(workers, 180)
        time.sleep(3)  # the groups settle before the records come

        keys = {
            "calls": [f"c{n:02d}" for n in range(REQUESTS)],
            "tokens": [f"t{n:02d}" for n in range(REQUESTS)],
        }
        started = time.time()
        for topics, name in ((calls_topics, "calls"), (tokens_topics, "tokens")):
            produce(broker, topics["REQUEST_TOPIC"], [
                (key, json.dumps({
                    "user_email": f"{key}@example.com", "message": f"{key} {FILLER}",
                }).encode())
                for key in keys[name]
            ])
        answers = {
            name: dict(read(broker, topics["RESPONSE_TOPIC"], REQUESTS, timeout=150))
            for topics, name in ((calls_topics, "calls"), (tokens_topics, "tokens"))
        }
        took = time.time() - started
        for name in answers:
            assert sorted(answers[name]) == keys[name]
            failed = {k: a["error"] for k, a in answers[name].items() if "error" in a}
            assert not failed, failed

        calls = [c for c in fake_openai.calls() if c["received_at"] >= started - 1]
        by_service = {
            name: [c for c in calls if c["text"].startswith(name[0])] for name in ("calls", "tokens")
        }
        # Every request made a call (a rebalance may repeat one: it counts too).
        assert all(len(by_service[name]) >= REQUESTS for name in by_service), by_service

        # Calls: 45 wanted at once, 30 in any minute across the three processes.
        calls_seen = [(c["received_at"], 1) for c in by_service["calls"]]
        assert most_in_a_window(calls_seen) <= 30
        first, last = min(t for t, _ in calls_seen), max(t for t, _ in calls_seen)
        assert last - first >= WINDOW - SEND_DELAY, "the limit did not bind"

        # Tokens: each call's usage as the model server counted it (the response
        # says it), 1500 in any minute; all of them would be about twice that.
        usage = {key: a["usage"]["total_tokens"] for key, a in answers["tokens"].items()}
        tokens_seen = [(c["received_at"], usage[c["text"].split()[0]]) for c in by_service["tokens"]]
        assert sum(usage.values()) > 1500 * 1.3
        assert most_in_a_window(tokens_seen) <= 1500
        first, last = min(t for t, _ in tokens_seen), max(t for t, _ in tokens_seen)
        assert last - first >= WINDOW - SEND_DELAY, "the limit did not bind"
        assert took < 150
        print(f"calls: {len(calls_seen)}, at most {most_in_a_window(calls_seen)} in a window; "
              f"tokens: {sum(usage.values())}, at most {most_in_a_window(tokens_seen)} in a "
              f"window; {took:.1f} s")

        # Each service's replicas keep a heartbeat in Redis, under its own keys.
        with redis.Redis.from_url(redis_url) as client:
            for topics in (calls_topics, tokens_topics):
                replicas = f"chater-gpt:{{limits:{topics['CONSUMER_GROUP']}}}:replicas"
                assert client.zcard(replicas) == 3
        for worker in workers:
            assert "Traceback" not in worker.log(), worker.log()[-3000:]
    finally:
        for worker in workers:
            if worker.process is not None:
                worker.stop(signal.SIGKILL)
