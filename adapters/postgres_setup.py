"""What eventsourcing's PostgreSQL settings leave out: the connection options of
DATABASE_URL's query (sslmode, sslrootcert, application_name, …), a schema created
by one replica at a time, and a bounded probe of the server.

eventsourcing passes only host, port, database, user and password to psycopg.
libpq reads its other connection options from its environment variables
(PGSSLMODE, PGAPPNAME, …), for every connection of every pool of the process: so
the URL's query is exported there, under the names libpq documents.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import parse_qsl

log = logging.getLogger("chater-gpt")

# libpq's connection parameters that have an environment variable
# (PostgreSQL documentation, "Environment Variables" of libpq).
LIBPQ_ENVIRONMENT = {
    "application_name": "PGAPPNAME",
    "channel_binding": "PGCHANNELBINDING",
    "client_encoding": "PGCLIENTENCODING",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "gssdelegation": "PGGSSDELEGATION",
    "gssencmode": "PGGSSENCMODE",
    "gsslib": "PGGSSLIB",
    "hostaddr": "PGHOSTADDR",
    "krbsrvname": "PGKRBSRVNAME",
    "load_balance_hosts": "PGLOADBALANCEHOSTS",
    "options": "PGOPTIONS",
    "passfile": "PGPASSFILE",
    "require_auth": "PGREQUIREAUTH",
    "requirepeer": "PGREQUIREPEER",
    "service": "PGSERVICE",
    "ssl_max_protocol_version": "PGSSLMAXPROTOCOLVERSION",
    "ssl_min_protocol_version": "PGSSLMINPROTOCOLVERSION",
    "sslcert": "PGSSLCERT",
    "sslcertmode": "PGSSLCERTMODE",
    "sslcompression": "PGSSLCOMPRESSION",
    "sslcrl": "PGSSLCRL",
    "sslcrldir": "PGSSLCRLDIR",
    "sslkey": "PGSSLKEY",
    "sslmode": "PGSSLMODE",
    "sslnegotiation": "PGSSLNEGOTIATION",
    "sslrootcert": "PGSSLROOTCERT",
    "sslsni": "PGSSLSNI",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
}

# Any 64-bit number, the same in every replica: the lock the schema is created under.
SCHEMA_LOCK_KEY = 0x63686174_65726770  # "chatergp"
# The waits between two tries of the lock while another replica holds it.
LOCK_WAIT_FIRST = 0.5
LOCK_WAIT_MAX = 5.0

# What export_libpq_options put in os.environ: variable -> the value it had before
# (None: it was not set), so that the next URL's options start from a clean slate.
_exported: dict[str, str | None] = {}


def libpq_environment(query: str) -> dict[str, str]:
    """The libpq environment variables of a URL query (`sslmode=require&…`);
    ValueError names an option libpq cannot take from its environment."""
    variables = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        variable = LIBPQ_ENVIRONMENT.get(name)
        if variable is None:
            raise ValueError(
                f"the query option '{name}' is not supported (supported: "
                f"{', '.join(sorted(LIBPQ_ENVIRONMENT))})"
            )
        variables[variable] = value
    return variables


def export_libpq_options(env: Mapping[str, str]) -> None:
    """Put the libpq options of an event store's settings (the PG* keys that
    `persistence_env` derived from the URL's query) where libpq reads them. What
    an earlier call exported is undone first (the variables it set get back the
    values they had), so that no option carries over from one URL to the next."""
    for variable, before in _exported.items():
        if before is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = before
    _exported.clear()
    for variable in LIBPQ_ENVIRONMENT.values():
        if variable in env:
            _exported[variable] = os.environ.get(variable)
            os.environ[variable] = env[variable]


def mask_password(url: str) -> str:
    """The URL with its password (if any) replaced by `***`, fit for a log line.

    It does not parse the URL: a password with an unencoded `/`, `?` or `#` makes
    a URL parser read part of it as the host, port or path. Whatever lies between
    `://` and the last `@` is taken for the credentials: only the user (up to the
    first `:`) is kept."""
    scheme, separator, rest = url.partition("://")
    if not separator or "@" not in rest:
        return url
    credentials, _, location = rest.rpartition("@")
    user, colon, _ = credentials.partition(":")
    if not colon:  # a user without a password
        return url
    return f"{scheme}://{user}:***@{location}"


def _connect(env: Mapping[str, str], timeout: float, autocommit: bool = True) -> Any:
    import psycopg

    export_libpq_options(env)
    return psycopg.connect(
        dbname=env.get("POSTGRES_DBNAME"), host=env.get("POSTGRES_HOST"),
        port=env.get("POSTGRES_PORT"), user=env.get("POSTGRES_USER"),
        password=env.get("POSTGRES_PASSWORD") or "",
        connect_timeout=max(1, round(timeout)), autocommit=autocommit,
    )


def is_postgres(env: Mapping[str, str]) -> bool:
    return env.get("PERSISTENCE_MODULE") == "eventsourcing.postgres"


def probe(env: Mapping[str, str], timeout: float) -> None:
    """Connect once and run `SELECT 1` (psycopg's OperationalError when it cannot)."""
    with _connect(env, timeout) as connection:
        connection.execute("SELECT 1")


@contextlib.contextmanager
def schema_lock(env: Mapping[str, str]) -> Iterator[None]:
    """While the block runs (the store's tables created if missing), no other
    replica runs its own: PostgreSQL's CREATE … IF NOT EXISTS is not safe when
    two sessions run it at once (a duplicate key in pg_type). Nothing to do for
    other stores.

    The lock is an advisory lock of a transaction left open while the block runs:
    the transaction's end releases it, and behind a transaction-pooling PgBouncer
    the transaction keeps its server connection (a session lock could stay with a
    server connection another client gets). It is tried, never waited for inside
    PostgreSQL: while another replica holds it, one line per try, and the wait
    ends with the process (it runs in a daemon thread the start-up abandons on
    SIGTERM)."""
    if not is_postgres(env):
        yield
        return
    timeout = float(env.get("POSTGRES_CONNECT_TIMEOUT") or 5)
    with _connect(env, timeout, autocommit=False) as connection:
        delay = LOCK_WAIT_FIRST
        number = 1
        while True:
            row = connection.execute(
                "SELECT pg_try_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,)
            ).fetchone()
            if row and row[0]:
                break
            connection.rollback()  # no transaction held open while waiting
            log.info(
                "waiting for another replica to create the event store's tables "
                "(PostgreSQL advisory lock %d held); attempt %d, retrying in %.1fs",
                SCHEMA_LOCK_KEY, number, delay,
            )
            time.sleep(delay)
            delay = min(delay * 2, LOCK_WAIT_MAX)
            number += 1
        if number > 1:
            log.info("took the lock to create the event store's tables after %d attempts", number)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):  # the session's end releases it too
                connection.commit()
