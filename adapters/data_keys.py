"""Data keys per user and day, in the event store's own database, wrapped at rest
with AES-GCM by a master key derived from SECRET_KEY.

Two tables: `data_keys` (key id, owner, day, wrapped key or NULL once destroyed,
which master wrapped it, when it was issued and destroyed, and why) and
`data_key_owners` (conversation → owner). Destroying a key sets its wrapped bytes
to NULL; SQLite overwrites the freed bytes (secure_delete), PostgreSQL keeps the
old row version until VACUUM, which `shred_*` run on the table afterwards.
"""

from __future__ import annotations

import base64
import hashlib
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

# Fixed on purpose: the same SECRET_KEY must give the same master key everywhere.
_MASTER_SALT = b"chater-gpt/data-keys/v1"
# The store key: owned by no user, of no day that ever expires.
STORE_KEY_ID, STORE_OWNER, NEVER = "store", "*store*", "9999-12-31"
# Seconds a worker trusts what it read of a key: another replica may destroy it.
KEY_CACHE_SECONDS = 2.0
CACHE_SIZE = 100_000  # conversations' owners and keys remembered, the oldest going first

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS data_keys ("
    "key_id TEXT PRIMARY KEY, owner TEXT NOT NULL, day TEXT NOT NULL, wrapped TEXT, "
    "master_id TEXT, issued_at TEXT NOT NULL, shredded_at TEXT, shred_reason TEXT)",
    "CREATE INDEX IF NOT EXISTS data_keys_owner_day ON data_keys (owner, day)",
    # One live key per owner and day: replicas that race to issue it agree on one.
    "CREATE UNIQUE INDEX IF NOT EXISTS data_keys_live ON data_keys (owner, day) "
    "WHERE wrapped IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS data_keys_day ON data_keys (day)",
    "CREATE INDEX IF NOT EXISTS data_keys_shredded ON data_keys (shredded_at)",
    "CREATE TABLE IF NOT EXISTS data_key_owners ("
    "conversation_id TEXT PRIMARY KEY, owner TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS data_key_owners_owner ON data_key_owners (owner)",
)


def master_key(secret_key: str) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", secret_key.encode(), _MASTER_SALT, 100_000)


class MasterKey:
    """The key that wraps data keys (derived from a SECRET_KEY); `id` names it."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self.id = hashlib.sha256(b"id" + key).hexdigest()[:16]

    @classmethod
    def from_secret(cls, secret_key: str) -> MasterKey:
        return cls(master_key(secret_key))

    def wrap(self, key_id: str, data_key: bytes) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, data_key, key_id.encode())
        return base64.b64encode(nonce + sealed).decode()

    def unwrap(self, key_id: str, wrapped: str) -> bytes:
        raw = base64.b64decode(wrapped)
        return self._aead.decrypt(raw[:12], raw[12:], key_id.encode())


def master_keys_env(
    secret_key: str, previous: str | None, store_key: str
) -> dict[str, str]:
    """The event store settings that turn on data keys (see `open_data_keys`): the
    master keys (derived, never the secrets) and the store key a new store starts with."""
    env = {
        "DATA_KEYS_MASTER": base64.b64encode(master_key(secret_key)).decode(),
        "DATA_KEYS_STORE_KEY": store_key,
    }
    if previous:
        env["DATA_KEYS_MASTER_PREVIOUS"] = base64.b64encode(master_key(previous)).decode()
    return env


def open_data_keys(recorder: Any, env: Mapping[str, str]) -> SqlDataKeys:
    """The data keys beside the events the application's recorder stores (the
    in-memory store gets an in-memory SQLite database)."""
    masters = [
        MasterKey(base64.b64decode(env[name]))
        for name in ("DATA_KEYS_MASTER", "DATA_KEYS_MASTER_PREVIOUS") if env.get(name)
    ]
    module = env.get("PERSISTENCE_MODULE", "")
    if module == "eventsourcing.postgres":
        return SqlDataKeys(_DatastoreSql(recorder.datastore, "%s", postgres=True), masters)
    if module == "eventsourcing.sqlite":
        return SqlDataKeys(_DatastoreSql(recorder.datastore, "?", postgres=False), masters)
    return SqlDataKeys(_MemorySql(), masters)


class SqlDataKeys:
    """The DataKeys port over SQL. Reads are cached for KEY_CACHE_SECONDS; what
    this process destroys is forgotten at once."""

    def __init__(self, sql: _Sql, masters: Sequence[MasterKey]) -> None:
        self.sql = sql
        self.master = masters[0]
        self.masters = {m.id: m for m in masters}
        self._owners: dict[str, str] = {}
        self._writing: dict[tuple[str, str], tuple[str, bytes, float]] = {}
        self._reading: dict[str, tuple[bytes | str, float]] = {}
        self._lock = threading.Lock()
        # Others who keep unwrapped keys (the mapper's ciphers), told to drop them.
        self._holders: list[Callable[[], None]] = []
        for statement in _SCHEMA:
            sql.run(statement)

    # Owners -----------------------------------------------------------------------

    def known_owner(self, conversation_id: str) -> str | None:
        """The conversation's owner if this process knows it already (no round trip)."""
        return self._owners.get(conversation_id)

    def owner_of(self, conversation_id: str) -> str | None:
        owner = self._owners.get(conversation_id)
        if owner is None:
            rows = self.sql.run(
                "SELECT owner FROM data_key_owners WHERE conversation_id = {p}",
                (conversation_id,),
            )
            if rows:
                owner = rows[0][0]
                with self._lock:
                    _remember(self._owners, conversation_id, owner)
        return owner

    def register(self, conversation_id: str, owner: str) -> None:
        """Whose a conversation is (one from before data keys, say); idempotent."""
        self.sql.run(
            "INSERT INTO data_key_owners (conversation_id, owner) VALUES ({p}, {p}) "
            "ON CONFLICT (conversation_id) DO NOTHING", (conversation_id, owner),
        )
        self._owners.pop(conversation_id, None)  # read back what was kept

    def conversations_of(self, owner: str) -> list[str]:
        rows = self.sql.run(
            "SELECT conversation_id FROM data_key_owners WHERE owner = {p} "
            "ORDER BY conversation_id", (owner,),
        )
        return [row[0] for row in rows]

    # Keys -------------------------------------------------------------------------

    def store_key(self, initial: bytes) -> bytes:
        """The key of the whole store's outer encryption: kept here, wrapped like
        the data keys (so a rotation rewraps it too); `initial` the first time."""
        self.sql.run(
            "INSERT INTO data_keys (key_id, owner, day, wrapped, master_id, issued_at) "
            "VALUES ({p}, {p}, {p}, {p}, {p}, {p}) ON CONFLICT (key_id) DO NOTHING",
            (STORE_KEY_ID, STORE_OWNER, NEVER, self.master.wrap(STORE_KEY_ID, initial),
             self.master.id, _now()),
        )
        rows = self.sql.run(
            "SELECT wrapped, master_id FROM data_keys WHERE key_id = {p}", (STORE_KEY_ID,)
        )
        return self._unwrap(STORE_KEY_ID, rows[0][0], rows[0][1])

    def key_for_writing(
        self, owner: str, day: str, conversation_id: str | None = None
    ) -> tuple[str, bytes]:
        """Also registers `conversation_id` as the owner's, in the same transaction:
        a new conversation costs one round trip to the database."""
        now = time.monotonic()
        cached = self._writing.get((owner, day))
        if conversation_id is not None and self._owners.get(conversation_id) != owner:
            cached = None  # the registration must be written
        if cached is not None and now - cached[2] >= KEY_CACHE_SECONDS:
            # Still live? (another replica may have destroyed it)
            self.refresh_for_writing([(owner, day)])
            cached = self._writing.get((owner, day))
        if cached is not None and now - cached[2] < KEY_CACHE_SECONDS:
            return cached[0], cached[1]
        # Issue a key unless the day has a live one already, then read the live one.
        key_id, key, issue = self._issue(owner, day)
        statements = [] if conversation_id is None else [self._register(conversation_id, owner)]
        statements += [
            issue,
            ("SELECT key_id, wrapped, master_id FROM data_keys "
             "WHERE owner = {p} AND day = {p} AND wrapped IS NOT NULL", (owner, day)),
        ]
        rows = self.sql.run_all(statements)
        if not rows:  # destroyed between the two statements: issue again
            return self.key_for_writing(owner, day, conversation_id)
        return self._keep_live(owner, day, (key_id, key), rows[0], now, conversation_id)

    def issue_for_writing(self, wanted: Sequence[tuple[str, str, str]]) -> None:
        """Issue (or read) the day's keys of many (owner, day, conversation id) at once,
        registering each conversation as its owner's, in one transaction: what
        `key_for_writing` would do for each new conversation, but one round trip
        and one commit for a whole group commit's worth of them."""
        now = time.monotonic()
        wanted = [(owner, day, cid) for owner, day, cid in dict.fromkeys(wanted)
                  if self._owners.get(cid) != owner or (owner, day) not in self._writing]
        if not wanted:
            return
        statements: list[Statement] = []
        issued: dict[tuple[str, str], tuple[str, bytes]] = {}
        for owner, day, cid in wanted:
            statements.append(self._register(cid, owner))
            if (owner, day) in issued:
                continue
            key_id, key, issue = self._issue(owner, day)
            issued[(owner, day)] = (key_id, key)
            statements.append(issue)
        owners = sorted({owner for owner, _ in issued})
        marks = ", ".join("{p}" for _ in owners)
        statements.append((
            f"SELECT key_id, owner, day, wrapped, master_id FROM data_keys "
            f"WHERE owner IN ({marks}) AND wrapped IS NOT NULL", owners,
        ))
        live = {(owner, day): (key_id, wrapped, master_id)
                for key_id, owner, day, wrapped, master_id in self.sql.run_all(statements)}
        # Destroyed meanwhile: key_for_writing issues it again.
        for owner, day, cid in wanted:
            if (owner, day) in live:
                with self._lock:
                    _remember(self._owners, cid, owner)
        for (owner, day), issued_key in issued.items():
            if (owner, day) in live:
                self._keep_live(owner, day, issued_key, live[(owner, day)], now)

    def _register(self, conversation_id: str, owner: str) -> Statement:
        """The statement that records the conversation as the owner's (once)."""
        return ("INSERT INTO data_key_owners (conversation_id, owner) VALUES ({p}, {p}) "
                "ON CONFLICT (conversation_id) DO NOTHING", (conversation_id, owner))

    def _issue(self, owner: str, day: str) -> tuple[str, bytes, Statement]:
        """A new key for the owner's day, and the statement that stores it wrapped
        unless the day has a live one already."""
        key_id, key = str(uuid.uuid4()), AESGCM.generate_key(bit_length=256)
        return key_id, key, (
            "INSERT INTO data_keys (key_id, owner, day, wrapped, master_id, issued_at) "
            "VALUES ({p}, {p}, {p}, {p}, {p}, {p}) "
            "ON CONFLICT (owner, day) WHERE wrapped IS NOT NULL DO NOTHING",
            (key_id, owner, day, self.master.wrap(key_id, key), self.master.id, _now()),
        )

    def _keep_live(
        self, owner: str, day: str, issued: tuple[str, bytes],
        live: tuple[str, str, str | None], now: float, conversation_id: str | None = None,
    ) -> tuple[str, bytes]:
        """The day's live key (the one issued, or another issued first, unwrapped),
        remembered for writing and reading."""
        key_id, key = issued
        live_id, wrapped, master_id = live
        if live_id != key_id:  # another was issued first
            key_id, key = live_id, self._unwrap(live_id, wrapped, master_id)
        with self._lock:
            if conversation_id is not None:
                _remember(self._owners, conversation_id, owner)
            _remember(self._writing, (owner, day), (key_id, key, now))
            _remember(self._reading, key_id, (key, now))
        return key_id, key

    def refresh_for_writing(self, wanted: Sequence[tuple[str, str]]) -> None:
        """Check at once that the cached keys of many (owner, day) are still live, as
        `key_for_writing` checks each after KEY_CACHE_SECONDS; one round trip. A key
        destroyed meanwhile is forgotten, and `key_for_writing` issues a new one."""
        now = time.monotonic()
        stale = {}
        for owner, day in dict.fromkeys(wanted):
            cached = self._writing.get((owner, day))
            if cached is not None and now - cached[2] >= KEY_CACHE_SECONDS:
                stale[cached[0]] = (owner, day, cached)
        if not stale:
            return
        marks = ", ".join("{p}" for _ in stale)
        rows = self.sql.run(
            f"SELECT key_id FROM data_keys WHERE key_id IN ({marks}) AND wrapped IS NOT NULL",
            list(stale),
        )
        live = {row[0] for row in rows}
        with self._lock:
            for key_id, (owner, day, cached) in stale.items():
                if key_id in live:
                    _remember(self._writing, (owner, day), (cached[0], cached[1], now))
                elif self._writing.get((owner, day)) is cached:
                    del self._writing[(owner, day)]

    def key_for_reading(self, key_id: str) -> bytes | str:
        now = time.monotonic()
        cached = self._reading.get(key_id)
        if cached is not None and (isinstance(cached[0], str) or now - cached[1] < KEY_CACHE_SECONDS):
            return cached[0]
        rows = self.sql.run(
            "SELECT wrapped, master_id, shred_reason FROM data_keys WHERE key_id = {p}",
            (key_id,),
        )
        if not rows:
            found: bytes | str = "erased"  # never issued here: unreadable all the same
        elif rows[0][0] is None:
            found = rows[0][2] or "erased"
        else:
            found = self._unwrap(key_id, rows[0][0], rows[0][1])
        with self._lock:
            _remember(self._reading, key_id, (found, now))
        return found

    def _unwrap(self, key_id: str, wrapped: str, master_id: str | None) -> bytes:
        master = self.masters.get(master_id or "")
        if master is None:
            raise KeyUnavailable(
                f"data key {key_id} is wrapped by a master key this process does not have "
                "(is SECRET_KEY_PREVIOUS missing during a rotation?)"
            )
        return master.unwrap(key_id, wrapped)

    def held_by(self, forget: Callable[[], None]) -> None:
        """Call `forget` whenever unwrapped keys must be dropped (see forget_unwrapped)."""
        self._holders.append(forget)

    def forget_unwrapped(self) -> None:
        """Keys were destroyed, here or by another process: whoever holds unwrapped
        keys drops them. (This process's own reads are trusted for KEY_CACHE_SECONDS
        only, and what it destroys itself it forgets at once.)"""
        for forget in self._holders:
            forget()

    # Destroying and rewrapping ------------------------------------------------------

    def shred_owner(self, owner: str) -> int:
        count = self._shred("owner = {p}", (owner,), "erased")
        with self._lock:
            self._writing = {k: v for k, v in self._writing.items() if k[0] != owner}
            self._reading.clear()
        return count

    def erased_since(self, since: str) -> list[str]:
        """Owners whose keys were destroyed by an erasure at or after `since` (ISO UTC),
        by this process or another: their conversations kept in memory must go."""
        rows = self.sql.run(
            "SELECT DISTINCT owner FROM data_keys "
            "WHERE shred_reason = 'erased' AND shredded_at >= {p}", (since,),
        )
        return [row[0] for row in rows]

    def shred_before(self, day: str) -> list[str]:
        rows = self.sql.run(
            "SELECT DISTINCT owner FROM data_keys WHERE day < {p} AND wrapped IS NOT NULL",
            (day,),
        )
        self._shred("day < {p}", (day,), "expired")
        with self._lock:
            self._writing = {k: v for k, v in self._writing.items() if k[1] >= day}
            self._reading.clear()
        return [row[0] for row in rows]

    def _shred(self, where: str, params: tuple[Any, ...], reason: str) -> int:
        rows = self.sql.run(
            "UPDATE data_keys SET wrapped = NULL, master_id = NULL, shredded_at = {p}, "
            f"shred_reason = {{p}} WHERE {where} AND wrapped IS NOT NULL RETURNING key_id",
            (_now(), reason, *params), secure=True,
        )
        if rows:
            self.sql.vacuum("data_keys")
        return len(rows)

    def rewrap(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Rewrap every live key not wrapped by the current master key; how many.
        `progress(done, total)` after each one."""
        rows = self.sql.run(
            "SELECT key_id, wrapped, master_id FROM data_keys "
            "WHERE wrapped IS NOT NULL AND master_id <> {p}", (self.master.id,),
        )
        for done, (key_id, wrapped, master_id) in enumerate(rows, 1):
            key = self._unwrap(key_id, wrapped, master_id)
            self.sql.run(
                "UPDATE data_keys SET wrapped = {p}, master_id = {p} "
                "WHERE key_id = {p} AND wrapped IS NOT NULL",
                (self.master.wrap(key_id, key), self.master.id, key_id),
            )
            if progress is not None:
                progress(done, len(rows))
        if rows:
            self.sql.vacuum("data_keys")
        return len(rows)

    def wrapped_by(self) -> dict[str, int]:
        """Live keys per master key id (for reports and tests)."""
        rows = self.sql.run(
            "SELECT master_id, COUNT(*) FROM data_keys WHERE wrapped IS NOT NULL "
            "GROUP BY master_id"
        )
        return {row[0]: int(row[1]) for row in rows}


class KeyUnavailable(RuntimeError):
    """A live data key cannot be unwrapped with the master keys configured."""


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) >= CACHE_SIZE and key not in cache:
        cache.pop(next(iter(cache)))  # the oldest entry
    cache[key] = value


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# SQL runners ------------------------------------------------------------------------


Statement = tuple[str, Sequence[Any]]


class _Sql:
    placeholder = "?"

    def run(
        self, statement: str, params: Sequence[Any] = (), secure: bool = False
    ) -> list[tuple[Any, ...]]:
        """Run one statement in a transaction of its own; rows as tuples."""
        return self.run_all([(statement, params)], secure)

    def run_all(self, statements: Sequence[Statement], secure: bool = False) -> list[tuple[Any, ...]]:
        """Run statements in one transaction; the rows of the last."""
        raise NotImplementedError

    def vacuum(self, table: str) -> None:
        """Let go of the bytes of rows just changed."""


class _DatastoreSql(_Sql):
    """Through the event store's own connections (eventsourcing's datastore)."""

    def __init__(self, datastore: Any, placeholder: str, postgres: bool) -> None:
        self.datastore = datastore
        self.placeholder = placeholder
        self.postgres = postgres

    def run_all(self, statements: Sequence[Statement], secure: bool = False) -> list[tuple[Any, ...]]:
        rows: Any = []
        with self.datastore.transaction(commit=True) as cursor:
            if secure and not self.postgres:
                cursor.execute("PRAGMA secure_delete = ON")
            for statement, params in statements:
                cursor.execute(statement.format(p=self.placeholder), tuple(params))
                try:
                    rows = cursor.fetchall()
                except Exception:  # a statement without results  # noqa: BLE001
                    rows = []
        return [tuple(row.values()) if isinstance(row, dict) else tuple(row) for row in rows or []]

    def vacuum(self, table: str) -> None:
        if not self.postgres:
            # secure_delete overwrote the freed bytes in the file; the WAL still
            # holds the old pages until it is checkpointed and truncated.
            with self.datastore.transaction(commit=False) as cursor:
                cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return
        with self.datastore.get_connection() as connection:
            was = connection.autocommit  # the pool's connections are autocommit: keep it
            connection.autocommit = True  # VACUUM cannot run inside a transaction
            try:
                connection.execute(f"VACUUM {table}")
            finally:
                connection.autocommit = was


class _MemorySql(_Sql):
    """An in-memory SQLite database, for the in-memory event store."""

    def __init__(self) -> None:
        self.connection = sqlite3.connect(":memory:", check_same_thread=False)
        self.lock = threading.Lock()

    def run_all(self, statements: Sequence[Statement], secure: bool = False) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = []
        with self.lock, self.connection:
            for statement, params in statements:
                rows = list(self.connection.execute(
                    statement.format(p=self.placeholder), tuple(params)
                ).fetchall())
        return rows
