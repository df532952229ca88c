"""Two worker processes, one PostgreSQL, one consumer group, one daily budget."""

from __future__ import annotations

import json
import signal
import uuid
from datetime import UTC, datetime

import pytest

from adapters.event_store import ChatRecords, event_store_env
from adapters.kafka import ensure_topics
from domain.conversation import conversation_id
from domain.token_budget import SERVICE_SCOPE
from tests.support.records import produce, read
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.integration

LIMIT = 60_000


def test_racing_workers_never_spend_beyond_the_daily_limit(broker, fake_openai, worker_env, tmp_path):
    suffix = uuid.uuid4().hex[:8]
    env = {**worker_env, "REQUEST_TOPIC": f"race-{suffix}", "RESPONSE_TOPIC": f"race-{suffix}-out",
           "DLQ_TOPIC": f"race-{suffix}.dlq", "CONSUMER_GROUP": f"race-{suffix}",
           "DAILY_TOKEN_LIMIT": str(LIMIT), "MAX_TOKENS": "500", "BUDGET_CHUNK_TOKENS": "5000"}
    ensure_topics(broker.bootstrap_server, [env["REQUEST_TOPIC"]], partitions=2)
    ensure_topics(broker.bootstrap_server, [env["RESPONSE_TOPIC"], env["DLQ_TOPIC"]])
    workers = [WorkerProcess(env, tmp_path / f"worker{n}.log") for n in range(2)]
    for worker in workers:
        worker.start()
    try:
        # ~400 words in, ~400 words echoed back: about 800 tokens a request, so the
        # day's limit runs out after roughly 70 of the 150.
        words = " ".join(["budget"] * 400)
        keys = [f"race-{n}" for n in range(150)]
        produce(broker, env["REQUEST_TOPIC"], [
            (key, json.dumps({"user_email": f"{key}@example.com", "message": f"{key}: {words}"}).encode())
            for key in keys
        ])
        answers = dict(read(broker, env["RESPONSE_TOPIC"], len(keys), timeout=180))
    finally:
        for worker in workers:
            if worker.process is not None:
                worker.stop(signal.SIGTERM)  # graceful: leases are settled

    assert set(answers) == set(keys)
    answered = [k for k, body in answers.items() if "response" in body]
    refused = [k for k, body in answers.items() if body.get("error", {}).get("type") == "budget_exceeded"]
    assert len(answered) + len(refused) == len(keys) and answered and refused
    spent = sum(answers[k]["usage"]["total_tokens"] for k in answered)
    assert spent <= LIMIT
    assert not any("Traceback" in worker.log() for worker in workers)

    records = ChatRecords(env=event_store_env(env["DATABASE_URL"], env["SECRET_KEY"]))
    try:
        budget = records.budget(SERVICE_SCOPE, datetime.now(UTC).date().isoformat())
        assert budget.used == spent <= LIMIT
        assert budget.reserved == 0
        # Both workers took a share of the work and of the budget.
        owners = {event.reservation_id.split(":")[1] for event in records.events.get(budget.id)
                  if type(event).__name__ == "TokensReserved"}
        assert len(owners) == 2
        for key in answered:
            events = list(records.events.get(conversation_id(f"{key}@example.com")))
            assert [type(e).__name__ for e in events].count("ReplyRecorded") == 1
    finally:
        records.close()
