"""The usage view in the event store's own database: SQLite or PostgreSQL.

Two tables beside the events: `usage_requests` (one row per request: conversation,
request id, when it was received, the user's hash, model, text or vision, outcome,
tokens, cost) and `usage_conversations` (conversation → user's hash), plus
eventsourcing's tracking table (`tracking` in SQLite, `usage_tracking` in
PostgreSQL). Rows are written with upserts that set, never add, so applying an
event again changes nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from eventsourcing.persistence import InfrastructureFactory, Tracking
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from eventsourcing.sqlite import SQLiteTrackingRecorder
from eventsourcing.utils import Environment

from adapters.postgres_setup import schema_lock
from application.usage import (
    Grouping,
    UsageChanges,
    UsageLine,
    UsageProjection,
    UsageView,
    Window,
    sortable_time,
)


class UsageViewUnavailable(RuntimeError):
    """The event store's persistence has no usage view (the in-memory store)."""


def open_usage_view(env: Mapping[str, str]) -> UsageView:
    """The usage view next to the event store that `env` (its settings) describes,
    constructed by eventsourcing's infrastructure factory; tables created if missing."""
    # One connection is all a catch-up or a report uses at a time.
    small_pool = {"USAGE_POSTGRES_POOL_SIZE": "1", "USAGE_POSTGRES_MAX_OVERFLOW": "1"}
    environment = Environment(UsageProjection.name, {**small_pool, **os.environ, **env})
    module = environment.get("PERSISTENCE_MODULE", "")
    view_class = VIEW_CLASSES.get(module)
    if view_class is None:
        raise UsageViewUnavailable(
            f"the usage view needs a SQLite or PostgreSQL event store, not {module or 'memory'}"
        )
    with schema_lock(environment):  # tables created by one replica at a time
        factory = InfrastructureFactory[Any].construct(env=environment)
        view = factory.tracking_recorder(view_class)
    assert isinstance(view, UsageView)
    return view


# Shared SQL: placeholders ("?" or "%s") and table names are filled in per database.

_CREATE_REQUESTS = (
    "CREATE TABLE IF NOT EXISTS {requests} ("
    "conversation_id TEXT NOT NULL, "
    "request_id TEXT NOT NULL, "
    "received_at TEXT {collate} NOT NULL, "
    "user_hash TEXT, "
    "model TEXT NOT NULL, "
    "kind TEXT NOT NULL, "
    "outcome TEXT NOT NULL, "
    "prompt_tokens INTEGER NOT NULL DEFAULT 0, "
    "cached_tokens INTEGER NOT NULL DEFAULT 0, "
    "completion_tokens INTEGER NOT NULL DEFAULT 0, "
    "cost DOUBLE PRECISION, "
    "PRIMARY KEY (conversation_id, request_id))"
)
_CREATE_RECEIVED_INDEX = (
    "CREATE INDEX IF NOT EXISTS usage_requests_received_at ON {requests} (received_at)"
)
_CREATE_CONVERSATIONS = (
    "CREATE TABLE IF NOT EXISTS {conversations} ("
    "conversation_id TEXT PRIMARY KEY, user_hash TEXT NOT NULL)"
)
_INSERT_CONVERSATION = (
    "INSERT INTO {conversations} (conversation_id, user_hash) VALUES ({p}, {p}) "
    "ON CONFLICT (conversation_id) DO NOTHING"
)
_INSERT_REQUEST = (
    "INSERT INTO {requests} "
    "(conversation_id, request_id, received_at, user_hash, model, kind, outcome) "
    "VALUES ({p}, {p}, {p}, "
    "(SELECT user_hash FROM {conversations} WHERE conversation_id = {p}), {p}, {p}, 'pending') "
    "ON CONFLICT (conversation_id, request_id) DO NOTHING"
)
_RECORD_ANSWER = (
    "UPDATE {requests} SET outcome = 'answered', model = {p}, prompt_tokens = {p}, "
    "cached_tokens = {p}, completion_tokens = {p}, cost = {p} "
    "WHERE conversation_id = {p} AND request_id = {p}"
)
_RECORD_FAILURE = (
    "UPDATE {requests} SET outcome = {p} WHERE conversation_id = {p} AND request_id = {p}"
)
# An erased user's rows keep their accounting, not whose they were.
_FORGET_USER_OF_REQUESTS = (
    "UPDATE {requests} SET user_hash = 'erased' WHERE conversation_id = {p}"
)
_FORGET_USER_OF_CONVERSATION = (
    "UPDATE {conversations} SET user_hash = 'erased' WHERE conversation_id = {p}"
)
_GROUPS: dict[str, str] = {
    "user": "user_hash",
    "model": "model",
    "day": "substr(received_at, 1, 10)",
    "month": "substr(received_at, 1, 7)",
}
_SUMMARY = (
    "SELECT {group} AS grp, "
    # Summaries of compacted context (kind "summary") are spending, not requests.
    "COALESCE(SUM(CASE WHEN kind <> 'summary' THEN 1 ELSE 0 END), 0) AS requests, "
    "COALESCE(SUM(CASE WHEN outcome = 'answered' AND kind <> 'summary' THEN 1 ELSE 0 END), 0) "
    "AS answered, "
    "COALESCE(SUM(CASE WHEN outcome NOT IN ('answered', 'pending') THEN 1 ELSE 0 END), 0) "
    "AS failed, "
    "COALESCE(SUM(prompt_tokens), 0) AS prompt_tokens, "
    "COALESCE(SUM(cached_tokens), 0) AS cached_tokens, "
    "COALESCE(SUM(completion_tokens), 0) AS completion_tokens, "
    "SUM(cost) AS cost, "
    "COALESCE(SUM(CASE WHEN outcome = 'answered' AND cost IS NULL AND kind <> 'summary' "
    "THEN 1 ELSE 0 END), 0) AS unpriced, "
    "COALESCE(SUM(CASE WHEN kind = 'vision' THEN 1 ELSE 0 END), 0) AS vision, "
    "COUNT(DISTINCT conversation_id) AS conversations, "
    "COUNT(DISTINCT user_hash) AS users "
    "FROM {requests}"
)


def _statement(template: str, placeholder: str, **tables: str) -> str:
    return template.format(p=placeholder, **tables)


def _change_params(changes: UsageChanges) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """(statement template, parameter rows) in the order they must run: a request
    row takes its user from its conversation, and an outcome updates its request."""
    return [
        (_INSERT_CONVERSATION, [(c.conversation_id, c.user_hash) for c in changes.conversations]),
        (_INSERT_REQUEST, [
            (r.conversation_id, r.request_id, r.received_at, r.conversation_id, r.model, r.kind)
            for r in changes.received
        ]),
        (_RECORD_ANSWER, [
            (a.model, a.prompt_tokens, a.cached_tokens, a.completion_tokens, a.cost,
             a.conversation_id, a.request_id)
            for a in changes.answered
        ]),
        (_RECORD_FAILURE, [
            (f.error_type, f.conversation_id, f.request_id) for f in changes.failed
        ]),
        (_FORGET_USER_OF_REQUESTS, [(cid,) for cid in changes.erased]),
        (_FORGET_USER_OF_CONVERSATION, [(cid,) for cid in changes.erased]),
    ]


def _apply(cursor: Any, changes: UsageChanges, placeholder: str, tables: dict[str, str]) -> None:
    """Write a batch's changes with the cursor of the transaction that tracks it."""
    for template, rows in _change_params(changes):
        if rows:
            cursor.executemany(_statement(template, placeholder, **tables), rows)


def _summary_query(
    placeholder: str, requests: str, window: Window, by: Grouping | None, user: str | None
) -> tuple[str, list[str]]:
    conditions: list[str] = []
    params: list[str] = []
    if window.since is not None:
        conditions.append(f"received_at >= {placeholder}")
        params.append(sortable_time(window.since))
    if window.until is not None:
        conditions.append(f"received_at < {placeholder}")
        params.append(sortable_time(window.until))
    if user is not None:
        conditions.append(f"user_hash = {placeholder}")
        params.append(user)
    statement = _SUMMARY.format(group=_GROUPS[by] if by else "NULL", requests=requests)
    if conditions:
        statement += " WHERE " + " AND ".join(conditions)
    if by:
        statement += " GROUP BY 1 ORDER BY 1"
    return statement, params


def _lines(rows: Sequence[Any]) -> list[UsageLine]:
    return [
        UsageLine(
            group=row["grp"],
            requests=int(row["requests"]),
            answered=int(row["answered"]),
            failed=int(row["failed"]),
            prompt_tokens=int(row["prompt_tokens"]),
            cached_tokens=int(row["cached_tokens"]),
            completion_tokens=int(row["completion_tokens"]),
            cost=None if row["cost"] is None else float(row["cost"]),
            unpriced=int(row["unpriced"]),
            vision=int(row["vision"]),
            conversations=int(row["conversations"]),
            users=int(row["users"]),
        )
        for row in rows
    ]


class SQLiteUsageView(SQLiteTrackingRecorder, UsageView):
    """The usage view in the event store's SQLite file."""

    _tables: ClassVar[dict[str, str]] = {
        "requests": "usage_requests", "conversations": "usage_conversations"
    }

    def construct_create_table_statements(self) -> list[str]:
        return [
            *super().construct_create_table_statements(),
            _CREATE_REQUESTS.format(collate="", **self._tables),
            _CREATE_RECEIVED_INDEX.format(**self._tables),
            _CREATE_CONVERSATIONS.format(**self._tables),
        ]

    def record(self, changes: UsageChanges, tracking: Tracking) -> None:
        with self.datastore.transaction(commit=True) as cursor:
            _apply(cursor, changes, "?", self._tables)
            self._insert_tracking(cursor, tracking)

    def summarise(
        self, window: Window, by: Grouping | None = None, user: str | None = None
    ) -> list[UsageLine]:
        statement, params = _summary_query("?", self._tables["requests"], window, by, user)
        with self.datastore.transaction(commit=False) as cursor:
            cursor.execute(statement, params)
            return _lines(cursor.fetchall())

    def close(self) -> None:
        self.datastore.close()


class PostgresUsageView(PostgresTrackingRecorder, UsageView):
    """The usage view in the event store's PostgreSQL database (and schema)."""

    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        schema = '"' + self.datastore.schema.replace('"', '""') + '"'
        self._tables = {
            "requests": f"{schema}.usage_requests",
            "conversations": f"{schema}.usage_conversations",
        }
        from psycopg.sql import SQL

        # Text compared byte by byte, so that the timestamps sort as time.
        for template in (_CREATE_REQUESTS, _CREATE_RECEIVED_INDEX, _CREATE_CONVERSATIONS):
            self.sql_create_statements.append(
                SQL(template.format(collate='COLLATE "C"', **self._tables))
            )

    def record(self, changes: UsageChanges, tracking: Tracking) -> None:
        with self.datastore.transaction(commit=True) as cursor:
            # One writer at a time (reports still read): catch-ups of several
            # replicas queue up instead of deadlocking on each other's rows.
            cursor.execute(
                f"LOCK TABLE {self._tables['requests']} IN SHARE ROW EXCLUSIVE MODE"
            )
            _apply(cursor, changes, "%s", self._tables)
            self._insert_tracking(cursor, tracking)

    def summarise(
        self, window: Window, by: Grouping | None = None, user: str | None = None
    ) -> list[UsageLine]:
        statement, params = _summary_query("%s", self._tables["requests"], window, by, user)
        with self.datastore.get_connection() as connection, connection.cursor() as cursor:
            cursor.execute(statement, params)
            return _lines(cursor.fetchall())

    def close(self) -> None:
        self.datastore.close()


VIEW_CLASSES: dict[str, type[UsageView]] = {
    "eventsourcing.sqlite": SQLiteUsageView,
    "eventsourcing.postgres": PostgresUsageView,
}
