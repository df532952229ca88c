"""The event store: ChatRecords (an eventsourcing Application) and its settings,
made from DATABASE_URL and SECRET_KEY.

The eventsourcing library does the storing; persistence, cipher and compression
are chosen by its environment settings, never by code.
"""

from __future__ import annotations

import base64
import hashlib
import sys
import threading
import zlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import unquote, urlparse
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application, project_aggregate
from eventsourcing.compressor import ZlibCompressor
from eventsourcing.persistence import JSONTranscoder, Mapper, Notification, Recording, Transcoding

from adapters.data_keys import SqlDataKeys, master_keys_env, open_data_keys
from adapters.personal_data import PersonalDataMapper
from adapters.postgres_setup import export_libpq_options, libpq_environment, schema_lock
from domain.conversation import Answer, Conversation, Failure, Shredded, Turn, data_owner
from domain.parked_batches import ParkedBatches
from domain.token_budget import TokenBudget

# Conversation events kept for the usage view's catch-up (ChatRecords.saved_event):
# more than a worker saves between two catch-ups (5 s) at full speed.
JUST_SAVED_KEPT = 20_000

# Fixed on purpose: the same SECRET_KEY must give the same key on every worker.
_KEY_SALT = b"chater-gpt/event-store/v1"


class DatabaseUrlError(ValueError):
    """DATABASE_URL is not one this service can use (its text never quotes the URL)."""


UNREADABLE_URL = (
    "could not be read as a URL; percent-encode special characters in the password "
    "(/ ? # @ : as %2F %3F %23 %40 %3A)"
)


def cipher_key(secret_key: str) -> str:
    """A 256-bit AES key derived from SECRET_KEY, base64 as eventsourcing expects."""
    key = hashlib.pbkdf2_hmac("sha256", secret_key.encode(), _KEY_SALT, 100_000)
    return base64.b64encode(key).decode()


# Below this many bytes an event is stored as it is: setting zlib up costs more
# (~12 us) than the few bytes saved are worth, and most of an event is its personal
# fields, already ciphertext, which does not compress; a snapshot's accounting of
# its turns and outcomes does.
COMPRESS_FROM_BYTES = 2048


class SizedZlibCompressor(ZlibCompressor):
    """zlib at level 1 (level 6 cost a tenth of the worker's CPU under load, for
    little more saving) for events of COMPRESS_FROM_BYTES and more, none below.
    What the transcoder writes starts with `{` (JSON), a zlib stream never does, so
    reading tells the two apart, and reads what earlier versions compressed whole."""

    def compress(self, data: bytes) -> bytes:
        if len(data) < COMPRESS_FROM_BYTES:
            return data
        return zlib.compress(data, 1)

    def decompress(self, data: bytes) -> bytes:
        if data[:1] == b"{":
            return data
        return zlib.decompress(data)


def persistence_env(database_url: str) -> dict[str, str]:
    """eventsourcing settings for `sqlite:///file`, `postgresql://…` or `memory://`.
    A DatabaseUrlError never quotes the URL: a password with an unencoded `/`,
    `?` or `#` is read by a URL parser as the host, port, path or query, so such
    a URL is refused as a whole, without naming any of its parts."""
    try:
        return _persistence_env(database_url)
    except DatabaseUrlError:
        raise
    except ValueError:  # "Port could not be cast to integer value as '<password>'"
        raise DatabaseUrlError(UNREADABLE_URL) from None


def _persistence_env(database_url: str) -> dict[str, str]:
    url = urlparse(database_url)
    if url.scheme == "sqlite":
        path = unquote(url.path.removeprefix("/"))
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
        if "@" in url.path + url.query + url.fragment or url.fragment:
            # The credentials end at the last `@`: one past the host means the
            # parser stopped early, at a `/`, `?` or `#` of the password.
            raise DatabaseUrlError(UNREADABLE_URL)
        if not url.path.strip("/"):
            raise DatabaseUrlError("a postgresql DATABASE_URL needs a database name")
        try:  # sslmode, sslrootcert, application_name, …: libpq's environment
            options = libpq_environment(url.query)
        except ValueError as error:
            raise DatabaseUrlError(str(error)) from None
        return {
            **options,
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
        "COMPRESSOR_TOPIC": "adapters.event_store:SizedZlibCompressor",
        **master_keys_env(secret_key, previous_secret_key, cipher_key(secret_key)),
    }


class _AsDict(Transcoding):
    """A frozen dataclass of the domain as the dictionary of its fields."""

    def encode(self, obj: Any) -> dict[str, Any]:
        return dict(obj.__dict__)

    def decode(self, data: dict[str, Any]) -> Any:
        return self.type(**data)


class TurnAsDict(_AsDict):
    type = Turn
    name = "turn"


class AnswerAsDict(_AsDict):
    type = Answer
    name = "answer"


class FailureAsDict(_AsDict):
    type = Failure
    name = "failure"


class ShreddedAsDict(_AsDict):
    type = Shredded
    name = "shredded"


class ChatRecords(Application):
    """Conversations, token budgets and the key ledger, stored as events in one
    notification log.

    With master keys in its settings (see `event_store_env`), conversations'
    personal fields are also encrypted per owner and day, so that they can be
    crypto-shredded.
    """

    name = "chatergpt"
    # Loading replays from the latest snapshot, so a busy day's budget or a long
    # conversation does not make every request slower than the one before.
    snapshotting_intervals = {Conversation: 50, TokenBudget: 20, ParkedBatches: 50}

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        # The URL's connection options where libpq reads them; the tables created
        # by one replica at a time (see adapters.postgres_setup).
        export_libpq_options(env or {})
        self._bounds: dict[type, Any] = {}
        # Conversation events this process saved, by notification id, until the
        # usage view's catch-up takes them (`saved_event`): it need not read back,
        # decrypt and decode what was just written. The oldest go beyond the bound.
        self._just_saved: dict[int, Any] = {}
        self._just_saved_lock = threading.Lock()
        self._saved_topics: frozenset[str] = frozenset()  # none kept until asked
        with schema_lock(env or {}):
            super().__init__(env)
            self.data_keys: SqlDataKeys | None = None
            if isinstance(self.mapper, PersonalDataMapper):
                self.data_keys = keys = open_data_keys(self.recorder, self.env)
                initial = base64.b64decode(self.env["DATA_KEYS_STORE_KEY"])
                self.mapper.attach(keys, keys.store_key(initial))
                keys.held_by(self.mapper.forget)

    def construct_mapper(self) -> Mapper[Any]:
        base = super().construct_mapper()
        return PersonalDataMapper(base) if self.env.get("DATA_KEYS_MASTER") else base

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        for transcoding in (TurnAsDict(), AnswerAsDict(), FailureAsDict(), ShreddedAsDict()):
            transcoder.register(transcoding)

    def keep_saved_events(self, topics: Iterable[str]) -> None:
        """From now on keep the events of these topics this process saves, for
        `saved_event` (the usage view's catch-up asks, for the topics it reads);
        none: keep none."""
        with self._just_saved_lock:
            self._saved_topics = frozenset(topics)
            if not self._saved_topics:
                self._just_saved.clear()

    def _notify(self, recordings: list[Recording[Any]]) -> None:
        if not self._saved_topics:
            return
        with self._just_saved_lock:
            kept = self._just_saved
            for recording in recordings:
                if recording.notification.topic in self._saved_topics:
                    kept[recording.notification.id] = recording.domain_event
            while len(kept) > JUST_SAVED_KEPT:
                del kept[next(iter(kept))]

    def saved_event(self, notification: Notification) -> Any:
        """The domain event a notification holds: as this process saved it when it
        still has it (once), else decoded from the notification."""
        with self._just_saved_lock:
            event = self._just_saved.pop(notification.id, None)
        return event if event is not None else self.mapper.to_domain_event(notification)

    def forget_saved_through(self, notification_id: int) -> None:
        """The catch-up is past this notification: kept events up to it are not
        needed any more (another replica's catch-up may have applied them)."""
        with self._just_saved_lock:
            kept = self._just_saved
            while kept and next(iter(kept)) <= notification_id:
                del kept[next(iter(kept))]

    def bound_conversations(self, turns_kept: int | None, outcomes_kept: int | None) -> None:
        """Snapshots of conversations keep no more than this (see
        Conversation.keep_within): a snapshot does not grow with the conversation."""
        turns = sys.maxsize if turns_kept is None else turns_kept
        outcomes = sys.maxsize if outcomes_kept is None else outcomes_kept

        def bound(conversation: Conversation) -> None:
            conversation.keep_within(turns, outcomes)

        def project_bounded(initial: Any, events: Iterable[Any]) -> Any:
            conversation = project_aggregate(initial, events)
            if conversation is not None:
                bound(conversation)
            return conversation

        self.snapshotting_projectors = {
            **type(self).snapshotting_projectors, Conversation: project_bounded,
        }
        self._bounds[Conversation] = bound

    def bound_of(self, kind: type) -> Callable[[Any], None] | None:
        """What an aggregate of the kind forgets after each load and change (see
        `bound_conversations`); None: nothing."""
        return self._bounds.get(kind)

    def snapshot_now(self, aggregate: Any) -> None:
        """A snapshot of an aggregate just saved, as it is in memory (bounded as
        `bound_conversations` says): reading it back from the store would cost a
        decryption of every event since the last snapshot."""
        bound = self._bounds.get(type(aggregate))
        if bound is not None:
            bound(aggregate)
        snapshot_class = getattr(type(aggregate), "Snapshot", type(self).snapshot_class)
        assert self.snapshots is not None and snapshot_class is not None
        self.snapshots.put([snapshot_class.take(aggregate)])

    @property
    def reads_are_local(self) -> bool:
        """True for an embedded store, where a read takes microseconds and no network."""
        return self.persistence_name in {"sqlite", "popo"}

    @property
    def persistence_name(self) -> str:
        """"sqlite", "postgres" or "popo": which store holds the events."""
        module = self.env.get("PERSISTENCE_MODULE", "") or "eventsourcing.popo"
        return module.rsplit(".", 1)[-1]

    def conversation(self, conversation_id: UUID) -> Conversation | None:
        try:
            conversation: Conversation = self.repository.get(conversation_id)
        except AggregateNotFoundError:
            return None
        email = conversation.user_email
        if self.data_keys is not None and isinstance(email, str):
            # A conversation from before data keys: its new events become shreddable.
            if self.data_keys.owner_of(str(conversation_id)) is None:
                self.data_keys.register(str(conversation_id), data_owner(email))
        return conversation

    def budget(self, scope: str, day: str) -> TokenBudget:
        """The day's budget of a scope as stored (a new one if none was stored)."""
        try:
            budget: TokenBudget = self.repository.get(TokenBudget.create_id(scope, day))
        except AggregateNotFoundError:
            return TokenBudget(scope, day)
        return budget
