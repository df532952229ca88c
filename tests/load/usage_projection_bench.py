"""Catch-up speed of the usage projection: notifications/s from the event store's log
into the usage view, on SQLite and on PostgreSQL with durable commits.

    .venv/bin/python tests/load/usage_projection_bench.py --events=20000 --store=sqlite,postgres

Per store it fills a fresh, encrypted event store with conversations (Started, then
messages and replies), then times: a catch-up from nothing (one transaction per
--batch notifications, as `chater-gpt usage` and the worker do), the same work one
transaction per event (what eventsourcing's ProjectionRunner does) on the first
--single events, a catch-up with nothing new, and a report grouped by day. Figures
are printed, never asserted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from eventsourcing.persistence import Tracking  # noqa: E402

from adapters.event_store import event_store_env  # noqa: E402
from adapters.usage_view import open_usage_view  # noqa: E402
from adapters.event_store import ChatRecords  # noqa: E402
from application.usage import UsageProjection, Window, catch_up, usage_report  # noqa: E402
from domain.conversation import Conversation  # noqa: E402
from tests.support.postgres import PostgresServer  # noqa: E402

SECRET = "bench-secret"


def fill(records: ChatRecords, events: int, turns: int) -> int:
    """Conversations of `turns` answered requests each, saved 100 at a time; returns
    how many events were stored."""
    stored = 0
    pending: list[Conversation] = []
    n = 0
    while stored < events:
        conversation = Conversation(f"user{n % 997}@bench.example", f"thread{n}")
        for turn in range(turns):
            request_id = f"r{n}-{turn}"
            conversation.receive_message(request_id, f"question {turn} of {n}", [], "gpt-4o-mini",
                                         500, 0.7, None, None, turn)
            conversation.record_reply(request_id, f"answer {turn}", "gpt-4o-mini", 120 + turn, 40,
                                      "stop", "2026-03-01T00:00:00Z", 0.4, 0, 0.000042)
        stored += 1 + 2 * turns
        pending.append(conversation)
        n += 1
        if len(pending) == 100:
            records.save(*pending)
            pending.clear()
    if pending:
        records.save(*pending)
    return stored


def bench(name: str, database_url: str, args: argparse.Namespace) -> None:
    env = event_store_env(database_url, SECRET)
    records = ChatRecords(env=env)
    began = time.perf_counter()
    events = fill(records, args.events, args.turns)
    print(f"{name}: {events} events stored in {time.perf_counter() - began:.1f}s")

    projection = UsageProjection(open_usage_view(env), SECRET)
    began = time.perf_counter()
    applied = catch_up(records, projection, batch_size=args.batch)
    elapsed = time.perf_counter() - began
    print(f"  catch-up, {args.batch} per transaction: {applied} notifications in {elapsed:.2f}s"
          f" = {applied / elapsed:,.0f}/s")

    began = time.perf_counter()
    assert catch_up(records, projection, batch_size=args.batch) == 0
    print(f"  catch-up with nothing new: {(time.perf_counter() - began) * 1000:.1f} ms")

    began = time.perf_counter()
    lines = usage_report(projection.view, Window(), "day")
    print(f"  report by day over {lines[-1].requests} requests: "
          f"{(time.perf_counter() - began) * 1000:.1f} ms")
    projection.view.close()

    # One transaction per event, into a second view of its own.
    single_env = {**env, **separate_view(database_url)}
    single = UsageProjection(open_usage_view(single_env), SECRET)
    notifications = records.recorder.select_notifications(
        None, args.single, topics=UsageProjection.topics
    )
    began = time.perf_counter()
    for notification in notifications:
        single.process_event(records.mapper.to_domain_event(notification),
                             Tracking(records.name, notification.id))
    elapsed = time.perf_counter() - began
    print(f"  one transaction per event: {len(notifications)} notifications in {elapsed:.2f}s"
          f" = {len(notifications) / elapsed:,.0f}/s")
    single.view.close()
    records.close()


def separate_view(database_url: str) -> dict[str, str]:
    """Settings that put a view beside the one measured first (another file or schema)."""
    if database_url.startswith("sqlite:///"):
        return {"SQLITE_DBNAME": database_url.removeprefix("sqlite:///") + ".single"}
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute("CREATE SCHEMA IF NOT EXISTS single_view")
    return {"POSTGRES_SCHEMA": "single_view"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--turns", type=int, default=4, help="answered requests per conversation")
    parser.add_argument("--batch", type=int, default=500, help="notifications per transaction")
    parser.add_argument("--single", type=int, default=2000,
                        help="events timed one transaction per event")
    parser.add_argument("--store", default="sqlite,postgres", help="sqlite, postgres or both")
    args = parser.parse_args()
    stores = [s.strip() for s in args.store.split(",") if s.strip()]
    with tempfile.TemporaryDirectory(prefix="usage-bench-") as tmp:
        if "sqlite" in stores:
            bench("SQLite", f"sqlite:///{tmp}/events.sqlite", args)
        if "postgres" in stores:
            with PostgresServer(durable=True) as postgres:
                postgres.create_database("usage_bench")
                bench("PostgreSQL (durable commits)", postgres.url("usage_bench"), args)


if __name__ == "__main__":
    main()
