"""`chater-gpt usage`: requests answered by the real chat use case on a SQLite store,
reported as a table, JSON and CSV, as an operator runs the command."""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import re

import pytest

from adapters.event_store import ChatRecords, event_store_env
from application.contract import ChatRequest
from application.images import Image
from application.ports import ModelError
from application.usage import UsageLine, Window, user_hash
from entrypoints.cli import main as chater_gpt
from entrypoints.usage_report import render, usage_rows
from tests.unit.fakes import make_service, wire

SECRET = "report-secret"
PNG = Image("image/png", base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
))


@pytest.fixture
def answered(tmp_path, monkeypatch) -> list[dict]:
    """Five requests through ChatService into an encrypted SQLite store; the payloads.
    The command is pointed at that store as an operator would, by its environment."""
    url = f"sqlite:///{tmp_path}/events.sqlite"
    records = ChatRecords(env=event_store_env(url, SECRET))
    # The platform's vision model name: the fake model answers with the name asked, so
    # its replies have no price.
    service, model = make_service(records=records, vision_model="gpt-4o-latest")
    model.script.append(ModelError("upstream_error", "The model provider failed (HTTP 500)."))
    requests = [
        ChatRequest("r0", "bob@example.com", "this one fails"),
        ChatRequest("r1", "ada@example.com", "hello there"),
        ChatRequest("r2", "ada@example.com", "and again, with more words this time"),
        ChatRequest("r3", "ada@example.com", "what is this?", images=(PNG,)),
        ChatRequest("r4", "bob@example.com", "hi", conversation_id="side"),
    ]

    async def run() -> list[dict]:
        payloads = [await wire(service, request) for request in requests]
        await service.close()
        return payloads

    payloads = asyncio.run(run())
    records.close()
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("SECRET_KEY", SECRET)
    monkeypatch.setenv("VISION_MODEL", "gpt-4o-latest")
    return payloads


def usage(capsys, *args: str) -> str:
    capsys.readouterr()
    assert chater_gpt(["usage", *args]) == 0
    return capsys.readouterr().out


def test_json_totals_match_what_the_use_case_answered(answered, capsys):
    [total] = json.loads(usage(capsys, "--format", "json"))
    replies = [p for p in answered if "usage" in p]
    assert len(replies) == 4 and "error" in answered[0]
    assert total["requests"] == 5 and total["answered"] == 4 and total["failed"] == 1
    assert total["prompt_tokens"] == sum(p["usage"]["prompt_tokens"] for p in replies)
    assert total["completion_tokens"] == sum(p["usage"]["completion_tokens"] for p in replies)
    priced = [p["cost_usd"] for p in replies if p["cost_usd"] is not None]
    assert len(priced) == 3 and total["unpriced"] == 1  # the vision model has no price
    assert total["cost_usd"] == pytest.approx(sum(priced))
    assert total["vision_share"] == 20.0
    assert total["messages_per_user"] == 2.5
    assert total["turns_per_conversation"] == pytest.approx(round(4 / 3, 2))


def test_by_model_and_for_one_user(answered, capsys):
    rows = json.loads(usage(capsys, "--format", "json", "--by", "model"))
    assert [(r["model"], r["requests"], r["cost_usd"] is None) for r in rows] == [
        ("gpt-4o-latest", 1, True), ("gpt-4o-mini", 4, False), ("total", 5, False),
    ]
    [ada] = json.loads(usage(capsys, "--format", "json", "--user", "ADA@example.com"))
    assert (ada["requests"], ada["answered"], ada["messages_per_user"]) == (3, 3, 3.0)
    rows = json.loads(usage(capsys, "--format", "json", "--by", "user"))
    assert {r["user"] for r in rows} == {
        user_hash(SECRET, "ada@example.com"), user_hash(SECRET, "bob@example.com"), "total"
    }


def test_the_table_and_csv(answered, capsys):
    table = usage(capsys, "--by", "day", "--since", "2000-01-01").splitlines()
    # The table ends with today's budgets (the store's requests are of another day).
    budgets = table.index(next(line for line in table if line.startswith("Budgets today (")))
    assert table[budgets + 1:] == [
        "  service tokens (DAILY_TOKEN_LIMIT): 0 of 1,000,000 tokens used or held, 1,000,000 left"]
    table = table[:budgets]
    assert table[0] == "Usage, from 2000-01-01 UTC, by day"
    assert table[1].split()[:3] == ["day", "requests", "answered"]
    assert table[-2].split()[:4] == ["total", "5", "4", "1"]
    assert "1 answered request(s) used a model without a price" in table[-1]
    assert len({len(line) for line in table[1:-1] if not line.startswith("-")}) == 1  # aligned

    rows = list(csv.DictReader(io.StringIO(usage(capsys, "--format", "csv", "--by", "model"))))
    assert [row["model"] for row in rows] == ["gpt-4o-latest", "gpt-4o-mini", "total"]
    assert rows[0]["cost_usd"] == "" and rows[0]["unpriced"] == "1"
    assert rows[-1]["requests"] == "5"


def test_by_month(answered, capsys):
    rows = json.loads(usage(capsys, "--format", "json", "--by", "month"))
    months = [row["month"] for row in rows]
    assert months[-1] == "total" and rows[-1]["requests"] == 5
    assert all(len(month) == 7 and month[4] == "-" for month in months[:-1])
    assert sum(row["requests"] for row in rows[:-1]) == 5


def test_a_window_without_requests_reports_zeros(answered, capsys):
    [total] = json.loads(usage(capsys, "--format", "json", "--until", "2000-01-01"))
    assert total["requests"] == 0 and total["cost_usd"] is None
    assert total["vision_share"] == 0.0 and total["messages_per_user"] == 0.0


@pytest.mark.parametrize("args, message", [
    (["--since", "last week"], "--since: 'last week' is neither a date"),
    (["--until", "2026-02-30"], "--until"),
    (["--since", "2026-03-02", "--until", "2026-03-01"], "--since must be before --until"),
])
def test_bad_dates_are_refused_with_exit_code_2(args, message, capsys):
    assert chater_gpt(["usage", *args]) == 2
    assert message in capsys.readouterr().err


def test_the_in_memory_store_has_no_usage_view(monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", "memory://")
    monkeypatch.setenv("SECRET_KEY", SECRET)
    assert chater_gpt(["usage"]) == 2
    assert "SQLite or PostgreSQL" in capsys.readouterr().err


def test_small_costs_stay_visible_and_nothing_priced_is_not_zero():
    lines = [
        UsageLine("gpt-4o-mini", 1, 1, 0, 50, 0, 20, 0.0000195, 0, 0, 1, 1),
        UsageLine("gpt-x", 1, 1, 0, 5, 0, 2, None, 1, 1, 1, 1),
        UsageLine(None, 2, 2, 0, 55, 0, 22, 0.0000195, 1, 1, 1, 1),
    ]
    rows = usage_rows(lines, "model")
    assert rows[1]["cost_usd"] is None and rows[2]["cost_usd"] == 0.0000195
    table = render(lines, "model", "table", Window())
    assert "0.00001950" in table and " - " in table.splitlines()[3]


def test_the_catch_up_says_how_far_it_got_on_stderr(answered, capsys):
    capsys.readouterr()
    assert chater_gpt(["usage"]) == 0
    [said] = capsys.readouterr().err.splitlines()  # a small store: done at once
    done, total = re.match(r"usage: events caught up: (\d+) of (\d+) \(100 %\)$", said).groups()
    assert done == total and int(total) > 0
    assert chater_gpt(["usage"]) == 0  # caught up already: nothing to say
    assert capsys.readouterr().err == ""
