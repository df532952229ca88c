"""Event store configuration: DATABASE_URL and SECRET_KEY become eventsourcing settings.

The eventsourcing library does the storing; persistence, cipher and compression
are chosen by its environment settings, never by code.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from urllib.parse import unquote, urlparse

from eventsourcing.compressor import ZlibCompressor

from adapters.data_keys import master_keys_env

# Fixed on purpose: the same SECRET_KEY must give the same key on every worker.
_KEY_SALT = b"chater-gpt/event-store/v1"


class DatabaseUrlError(ValueError):
    """DATABASE_URL is not one this service can use."""


def cipher_key(secret_key: str) -> str:
    """A 256-bit AES key derived from SECRET_KEY, base64 as eventsourcing expects."""
    key = hashlib.pbkdf2_hmac("sha256", secret_key.encode(), _KEY_SALT, 100_000)
    return base64.b64encode(key).decode()


class FastZlibCompressor(ZlibCompressor):
    """zlib at level 1: events are small, and level 6 cost a tenth of the worker's
    CPU under load (py-spy) for little more saving. Same format, so either reads both."""

    def compress(self, data: bytes) -> bytes:
        return zlib.compress(data, 1)


def persistence_env(database_url: str) -> dict[str, str]:
    """eventsourcing settings for `sqlite:///file`, `postgresql://…` or `memory://`."""
    url = urlparse(database_url)
    if url.scheme == "sqlite":
        path = unquote(url.path[1:] if url.path.startswith("/") else url.path)
        if url.netloc:
            raise DatabaseUrlError("use sqlite:///relative.db or sqlite:////absolute.db")
        if not path:
            raise DatabaseUrlError("a sqlite DATABASE_URL needs a file name")
        return {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": path,
            "SQLITE_LOCK_TIMEOUT": "10",
        }
    if url.scheme in {"postgres", "postgresql", "postgresql+psycopg"}:
        if not url.path.strip("/"):
            raise DatabaseUrlError("a postgresql DATABASE_URL needs a database name")
        return {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": unquote(url.path.strip("/")),
            "POSTGRES_HOST": url.hostname or "127.0.0.1",
            "POSTGRES_PORT": str(url.port or 5432),
            "POSTGRES_USER": unquote(url.username or "postgres"),
            "POSTGRES_PASSWORD": unquote(url.password or ""),
            "POSTGRES_CONNECT_TIMEOUT": "5",
        }
    if url.scheme == "memory":
        return {"PERSISTENCE_MODULE": "eventsourcing.popo"}
    raise DatabaseUrlError(
        f"unsupported scheme '{url.scheme}': use sqlite:///, postgresql:// or memory://"
    )


def event_store_env(
    database_url: str, secret_key: str, previous_secret_key: str | None = None
) -> dict[str, str]:
    """Persistence, compression and encryption at rest: every event with the store
    key, the personal fields also with their owner's data key for the day
    (crypto-shredding); both kinds of key wrapped by a key derived from SECRET_KEY.
    A new store's key is the one earlier versions derived from SECRET_KEY, so that
    their events stay readable."""
    return {
        **persistence_env(database_url),
        "COMPRESSOR_TOPIC": "adapters.event_store:FastZlibCompressor",
        **master_keys_env(secret_key, previous_secret_key, cipher_key(secret_key)),
    }
