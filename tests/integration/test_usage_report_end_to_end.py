"""`chater-gpt usage` after real traffic: requests through the real broker to a real
worker on PostgreSQL, the report's numbers against what the responses say; then more
traffic, and the projection goes on from where it stopped."""

from __future__ import annotations

import json
import threading
import time

import pytest

from adapters.event_store import ChatRecords, event_store_env
from adapters.usage_view import open_usage_view
from application.usage import UsageProjection, Window, catch_up, usage_report
from domain.conversation import Conversation
from entrypoints.cli import main as chater_gpt
from tests.support.records import produce, read

pytestmark = pytest.mark.integration

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
MINI = (0.15, 0.60)  # gpt-4o-mini, dollars per million prompt / completion tokens


def usage(monkeypatch, capsys, env: dict[str, str], *args: str) -> list[dict]:
    """Run `chater-gpt usage --format json` as an operator would, against the worker's store."""
    monkeypatch.setenv("DATABASE_URL", env["DATABASE_URL"])
    monkeypatch.setenv("SECRET_KEY", env["SECRET_KEY"])
    capsys.readouterr()
    assert chater_gpt(["usage", "--format", "json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def requests(prefix: str, count: int, users: int) -> list[tuple[str, bytes]]:
    return [
        (f"{prefix}-{n}", json.dumps({
            "user_email": f"user{n % users}@example.com", "message": f"{prefix} {n}: hello there",
        }).encode())
        for n in range(count)
    ]


def wait_for_the_worker_s_catch_up(env: dict[str, str], timeout: float = 15.0) -> int:
    """The worker keeps the view current by itself: its position reaches the log's last
    conversation event. Returns that position."""
    store_env = event_store_env(env["DATABASE_URL"], env["SECRET_KEY"])
    records = ChatRecords(env=store_env)
    view = open_usage_view(store_env)
    try:
        last = records.recorder.select_notifications(
            None, 10**6, topics=UsageProjection.topics
        )[-1].id
        deadline = time.monotonic() + timeout
        while (view.max_tracking_id(records.name) or 0) < last:
            assert time.monotonic() < deadline, "the worker did not catch the usage view up"
            time.sleep(0.2)
        return last
    finally:
        view.close()
        records.close()


def sums(answers: list[dict]) -> dict[str, float]:
    replies = [a for a in answers if "usage" in a]
    return {
        "answered": len(replies),
        "prompt_tokens": sum(a["usage"]["prompt_tokens"] for a in replies),
        "completion_tokens": sum(a["usage"]["completion_tokens"] for a in replies),
        "cost_usd": sum(a["cost_usd"] for a in replies if a["cost_usd"] is not None),
        "unpriced": sum(a["cost_usd"] is None for a in replies),
    }


def test_usage_report_after_real_traffic_and_again_after_more(
    broker, topics, fake_openai, worker, worker_env, monkeypatch, capsys
):
    first = requests("a", 12, users=3)
    first.append(("a-vision", json.dumps({
        "user_email": "eye@example.com", "message": "what is this?", "images": [PNG],
    }).encode()))
    first.append(("a-unknown", json.dumps({
        "user_email": "user0@example.com", "message": "and you?", "model": "gpt-unknown-1",
    }).encode()))
    # A model the provider serves and the service has no price for.
    fake_openai.serve_models(["gpt-unknown-1"])
    produce(broker, topics["REQUEST_TOPIC"], first)
    answers = dict(read(broker, topics["RESPONSE_TOPIC"], len(first)))
    assert all("usage" in a for a in answers.values()), answers
    wait_for_the_worker_s_catch_up(worker_env)

    rows = {row["model"]: row for row in usage(monkeypatch, capsys, worker_env, "--by", "model")}
    assert set(rows) == {"gpt-4o-mini", "gpt-4o", "other", "total"}  # unknown names: other
    mini = [a for a in answers.values() if a["model"] == "gpt-4o-mini"]
    assert rows["gpt-4o-mini"]["requests"] == len(mini) == 12
    expected_cost = sum(
        a["usage"]["prompt_tokens"] * MINI[0] + a["usage"]["completion_tokens"] * MINI[1]
        for a in mini
    ) / 1e6
    assert rows["gpt-4o-mini"]["cost_usd"] == pytest.approx(expected_cost)
    assert rows["gpt-4o-mini"]["unpriced"] == 0
    assert rows["gpt-4o"]["vision_share"] == 100.0  # VISION_MODEL's default
    vision = answers["a-vision"]
    vision_cost = (vision["usage"]["prompt_tokens"] * 2.50 + vision["usage"]["completion_tokens"] * 10.00) / 1e6
    assert (rows["gpt-4o"]["cost_usd"], rows["gpt-4o"]["unpriced"]) == (pytest.approx(vision_cost), 0)
    # No price: counted, never zero.
    assert (rows["other"]["cost_usd"], rows["other"]["unpriced"]) == (None, 1)
    total = rows["total"]
    expected = sums(list(answers.values()))
    assert {name: total[name] for name in expected} == {**expected, "cost_usd": pytest.approx(
        expected["cost_usd"])}
    assert total["cost_usd"] == pytest.approx(expected_cost + vision_cost)
    assert total["requests"] == 14 and total["failed"] == 0
    assert total["vision_share"] == round(100 / 14, 1)
    assert total["messages_per_user"] == round(14 / 4, 2)  # user0..2 and eye
    assert total["turns_per_conversation"] == round(14 / 4, 2)

    second = requests("b", 6, users=2) + [("b-new", json.dumps({
        "user_email": "new@example.com", "message": "first time here",
    }).encode())]
    produce(broker, topics["REQUEST_TOPIC"], second)
    everything = dict(read(broker, topics["RESPONSE_TOPIC"], len(first) + len(second)))
    # Reported at once: the command catches up itself, beside the worker's own catch-up.
    [total] = usage(monkeypatch, capsys, worker_env)
    expected = sums(list(everything.values()))
    assert total["requests"] == 21 and total["answered"] == expected["answered"] == 21
    assert total["prompt_tokens"] == expected["prompt_tokens"]
    assert total["completion_tokens"] == expected["completion_tokens"]
    assert total["cost_usd"] == pytest.approx(expected["cost_usd"])
    assert total["unpriced"] == 1
    assert total["messages_per_user"] == round(21 / 5, 2)
    [new] = usage(monkeypatch, capsys, worker_env, "--user", "New@Example.com")
    assert (new["requests"], new["answered"]) == (1, 1)
    assert "usage view catch-up failed" not in worker.log()


def test_concurrent_catch_ups_on_postgresql_count_each_event_once(postgres, database):
    env = event_store_env(postgres.url(database), "concurrency-secret")
    records = ChatRecords(env=env)
    for n in range(40):
        conversation = Conversation(f"user{n % 7}@example.com", f"t{n}")
        conversation.receive_message(f"r{n}", "hi", [], "gpt-4o-mini", 10, 0.5, None, None, 0)
        conversation.record_reply(f"r{n}", "hello", "gpt-4o-mini", 10, 2, "stop",
                                  "2026-03-01T00:00:00Z", 0.1, 0, 0.0000027)
        records.save(conversation)
    projections = [UsageProjection(open_usage_view(env), "concurrency-secret") for _ in range(4)]
    start = threading.Barrier(len(projections))
    applied: list[int] = []

    def run(projection: UsageProjection) -> None:
        start.wait()
        applied.append(catch_up(records, projection, batch_size=7))

    threads = [threading.Thread(target=run, args=(p,)) for p in projections]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert sum(applied) == 120  # Started, message, reply: each applied by one of them
        [total] = usage_report(projections[0].view, Window())
        assert (total.requests, total.answered, total.prompt_tokens) == (40, 40, 400)
        assert total.users == 7
        assert total.cost == pytest.approx(40 * 0.0000027)
    finally:
        for projection in projections:
            projection.view.close()
        records.close()
