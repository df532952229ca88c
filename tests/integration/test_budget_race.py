"""Two worker processes, one PostgreSQL, one consumer group, one daily budget."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from adapters.event_store import ChatRecords, event_store_env
from domain.conversation import conversation_id
from domain.token_budget import SERVICE_SCOPE
from tests.support.replicas import run_replicas

pytestmark = pytest.mark.integration

LIMIT = 60_000


def test_racing_workers_never_spend_beyond_the_daily_limit(broker, fake_openai, worker_env, tmp_path):
    # ~400 words in, ~400 words echoed back: about 800 tokens a request, so the
    # day's limit runs out after roughly 70 of the 150.
    words = " ".join(["budget"] * 400)
    keys = [f"race-{n}" for n in range(150)]
    answers, env = run_replicas(
        broker, worker_env, tmp_path,
        {"DAILY_TOKEN_LIMIT": str(LIMIT), "BUDGET_CHUNK_TOKENS": "5000"},
        [(key, {"user_email": f"{key}@example.com", "message": f"{key}: {words}"}) for key in keys],
    )

    assert set(answers) == set(keys)
    answered = [k for k, body in answers.items() if "response" in body]
    refused = [k for k, body in answers.items() if body.get("error", {}).get("type") == "budget_exceeded"]
    assert len(answered) + len(refused) == len(keys) and answered and refused
    spent = sum(answers[k]["usage"]["total_tokens"] for k in answered)
    assert spent <= LIMIT

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
