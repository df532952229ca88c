"""Two worker processes, one PostgreSQL: a user's daily tokens and the service's daily
dollars are never exceeded, whichever replica answers, and the refusal names the limit."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from adapters.event_store import ChatRecords, event_store_env
from application.budgets import SERVICE_DOLLARS_USED_UP, USER_TOKENS_USED_UP
from domain.conversation import data_owner
from domain.token_budget import COST_SCOPE, user_scope
from entrypoints.cli import main as chater_gpt
from tests.support.replicas import run_replicas

pytestmark = pytest.mark.integration

WORDS = " ".join(["budget"] * 400)  # about 800 tokens a request, question and echo


def budget_of(env: dict[str, str], scope: str):
    records = ChatRecords(env=event_store_env(env["DATABASE_URL"], env["SECRET_KEY"]))
    try:
        budget = records.budget(scope, datetime.now(UTC).date().isoformat())
        owners = {event.reservation_id.split(":")[1] for event in records.events.get(budget.id)
                  if type(event).__name__ == "TokensReserved"}
        return budget, owners
    finally:
        records.close()


@pytest.mark.timeout(300)
def test_a_users_daily_tokens_hold_across_replicas(broker, fake_openai, worker_env, tmp_path,
                                                   monkeypatch, capsys):
    limit = 8_000
    ada = [(f"ada-{n}", {"user_email": "ada@example.com", "conversation_id": f"thread-{n}",
                         "message": f"ada-{n}: {WORDS}"}) for n in range(30)]
    others = [(f"other-{n}", {"user_email": f"other{n}@example.com", "message": f"other-{n}: {WORDS}"})
              for n in range(10)]
    answers, env = run_replicas(broker, worker_env, tmp_path, {"USER_DAILY_TOKEN_LIMIT": str(limit)}, ada + others)

    answered = [key for key, _ in ada if "response" in answers[key]]
    refused = [key for key, _ in ada if "error" in answers[key]]
    assert answered and refused and len(answered) + len(refused) == len(ada)
    assert {answers[key]["error"]["message"] for key in refused} == {USER_TOKENS_USED_UP}
    spent = sum(answers[key]["usage"]["total_tokens"] for key in answered)
    assert spent <= limit
    # Everyone else has a day of their own.
    assert all("response" in answers[key] for key, _ in others)
    budget, replicas = budget_of(env, user_scope(data_owner("ada@example.com")))
    assert budget.used == spent and budget.reserved == 0
    assert len(replicas) == 2  # both replicas held ada's tokens in the one budget

    # The usage report ends with what is left of today's budgets, the user's too.
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    assert chater_gpt(["usage", "--user", "ada@example.com"]) == 0
    report = capsys.readouterr().out.splitlines()
    assert report[-1] == (f"  ada@example.com's tokens: {spent:,} of {limit:,} tokens used or held, "
                          f"{limit - spent:,} left")


@pytest.mark.timeout(300)
def test_the_services_daily_dollars_hold_across_replicas(broker, fake_openai, worker_env, tmp_path):
    limit = 0.003  # dollars: about ten answers of gpt-4o-mini here
    requests = [(f"usd-{n}", {"user_email": f"usd{n}@example.com", "message": f"usd-{n}: {WORDS}"})
                for n in range(30)]
    answers, env = run_replicas(broker, worker_env, tmp_path, {"DAILY_COST_LIMIT": str(limit)}, requests)

    answered = [key for key, _ in requests if "response" in answers[key]]
    refused = [key for key, _ in requests if "error" in answers[key]]
    assert answered and refused and len(answered) + len(refused) == len(requests)
    assert {answers[key]["error"]["message"] for key in refused} == {SERVICE_DOLLARS_USED_UP}
    cost = sum(answers[key]["cost_usd"] for key in answered)
    assert cost <= limit
    budget, replicas = budget_of(env, COST_SCOPE)
    # Millionths of a dollar, each answer's rounded up.
    assert cost * 1e6 <= budget.used <= cost * 1e6 + len(answered) and budget.reserved == 0
    assert budget.used <= limit * 1e6 and len(replicas) == 2
