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
import os
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlparse, urlunparse

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
    `persistence_env` derived from the URL's query) where libpq reads them."""
    for variable in LIBPQ_ENVIRONMENT.values():
        if variable in env:
            os.environ[variable] = env[variable]


def mask_password(url: str) -> str:
    """The URL with its password (if any) replaced by `***`, fit for a log line."""
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    netloc = parsed.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return urlunparse(parsed._replace(netloc=f"{user}:***@{netloc[2]}"))


def _connect(env: Mapping[str, str], timeout: float) -> Any:
    import psycopg

    export_libpq_options(env)
    return psycopg.connect(
        dbname=env.get("POSTGRES_DBNAME"), host=env.get("POSTGRES_HOST"),
        port=env.get("POSTGRES_PORT"), user=env.get("POSTGRES_USER"),
        password=env.get("POSTGRES_PASSWORD") or "",
        connect_timeout=max(1, round(timeout)), autocommit=True,
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
    other stores."""
    if not is_postgres(env):
        yield
        return
    timeout = float(env.get("POSTGRES_CONNECT_TIMEOUT") or 5)
    with _connect(env, timeout) as connection:
        connection.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK_KEY,))
        try:
            yield
        finally:
            with contextlib.suppress(Exception):  # the session's end releases it too
                connection.execute("SELECT pg_advisory_unlock(%s)", (SCHEMA_LOCK_KEY,))
