"""Crypto-shredding: each conversation event's personal fields are encrypted with
its owner's data key for the day (AES-GCM, eventsourcing's cipher), inside the
store's own encryption. Destroying the key makes those fields unreadable for good,
while the rest of the event (times, models, tokens, cost) stays readable.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eventsourcing.cryptography import AESCipher
from eventsourcing.persistence import Mapper, StoredEvent
from eventsourcing.utils import Environment

from application.ports import DataKeys
from domain.conversation import (
    Answer,
    Conversation,
    Failure,
    Shredded,
    Turn,
    data_owner,
    from_legacy,
    readable,
)

log = logging.getLogger(__name__)

# The user's own words in each Conversation event (and in a snapshot's state), and
# what is derived from them (the digest of what a request asked): encrypted at
# rest with the user's data key, unreadable once it is destroyed. The rest (times,
# models, tokens, cost) is the accounting, kept for the budget and the auditor.
PERSONAL_FIELDS: dict[str, tuple[str, ...]] = {
    "Started": ("user_email", "thread"),
    "UserMessageReceived": (
        "message", "image_digests", "system_prompt", "caller_context", "request_digest",
    ),
    "ReplyRecorded": ("reply",),
    "ContextCompacted": ("summary",),
    # A request refused before it was received carries its digest (most carry none).
    "RequestFailed": ("request_digest",),
    # A snapshot's texts inside `pending` (the message) and `outcomes` (an answer's
    # reply) are personal too; which requests are pending or concluded is not.
    "Snapshot": ("user_email", "thread", "turns", "summary", "digests"),
}
CONVERSATION_TOPIC = "domain.conversation:Conversation"
CIPHER_CACHE_SIZE = 10_000  # owners' days whose keys are kept ready
# What a destroyed field reads as, when not the Shredded value itself.
_SHREDDED_VALUES: dict[str, Callable[[], Any]] = {
    "thread": lambda: None, "image_digests": list, "turns": list,  # fresh each time
    "digests": dict,
}


class PersonalDataMapper(Mapper[Any]):
    """A Mapper that encrypts every event with the store key, and the personal
    fields of Conversation events and snapshots also with their owner's data key
    for the day. Both keys come from `DataKeys`, attached once the application's
    recorder exists (`attach`)."""

    def __init__(self, base: Mapper[Any]) -> None:
        super().__init__(base.transcoder, base.compressor, base.cipher)
        self.keys: DataKeys | None = None
        self._ciphers: dict[str, AESCipher] = {}
        self._lock = threading.Lock()  # the group commit, loads and catch-ups share it

    def attach(self, keys: DataKeys, store_key: bytes) -> None:
        """The store key is the Mapper's own cipher: every event is compressed, then
        encrypted with it, and decrypted before it is decompressed."""
        self.keys = keys
        self.cipher = _aes(store_key)

    # Writing ------------------------------------------------------------------------

    def prepare(self, domain_events: Sequence[Any]) -> None:
        """Issue the day's keys of the new conversations among the events in one
        round trip, before they are mapped one by one (see `to_stored_event`)."""
        if self.keys is None:
            return
        wanted, known = [], []
        for event in domain_events:
            if not isinstance(event, Conversation.Event):
                continue
            day = event.timestamp.strftime("%Y-%m-%d")
            if type(event).__name__ == "Started":
                if readable(event.user_email):
                    wanted.append((data_owner(event.user_email), day, str(event.originator_id)))
            elif (owner := self.keys.known_owner(str(event.originator_id))) is not None:
                known.append((owner, day))  # its key checked at once, if due
        if wanted:
            self.keys.issue_for_writing(wanted)
        if known:
            self.keys.refresh_for_writing(known)

    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        fields = self._personal_fields(domain_event)
        if not fields or self.keys is None:
            return super().to_stored_event(domain_event)
        state = dict(vars(domain_event))
        holder = state  # a snapshot holds the aggregate's fields in its own "state"
        if "state" in state:
            holder = state["state"] = dict(state["state"])
        elif all(state.get(name) is None for name in fields):
            return super().to_stored_event(domain_event)  # nothing personal in it
        cid = str(state["originator_id"])
        day = state["timestamp"].strftime("%Y-%m-%d")
        if state.get("content_from"):
            # A summary is sealed with the key of the day of the oldest turn it
            # summarises: it is destroyed when that turn expires.
            day = min(day, state["content_from"][:10])
        if holder is not state:
            # A snapshot is sealed with the key of the oldest day it holds content
            # of, so that it is destroyed no later than that content expires.
            day = min([day, *_content_days(holder)])
        # A conversation's first event names its owner; any other asks the registry
        # (a snapshot's address may read "[erased]").
        started = type(domain_event).__name__ == "Started"
        owner = None if started else self.keys.owner_of(cid)
        if owner is None and readable(holder.get("user_email")):
            # Its first event (or the first snapshot of a conversation from before
            # data keys): whose it is, registered with the day's key.
            owner = data_owner(holder["user_email"])
            key_id, key = self.keys.key_for_writing(owner, day, conversation_id=cid)
        elif owner is None:  # nobody's known: only the store's encryption
            log.warning("conversation %s has no data key owner: not shreddable", cid)
            return super().to_stored_event(domain_event)
        else:
            key_id, key = self.keys.key_for_writing(owner, day)
        personal = {name: holder.pop(name) for name in fields if name in holder}
        if holder is not state:  # a snapshot: its nested texts too
            holder["pending"] = {k: dict(v) for k, v in holder.get("pending", {}).items()}
            personal["pending"] = {k: v.pop("message") for k, v in holder["pending"].items()
                                   if "message" in v}
            outcomes = holder.get("outcomes", {})
            # A reply its turn holds too is sealed once, with the turn.
            in_turns = _turn_replies(personal.get("turns"))
            personal["outcomes"] = {
                k: v.reply for k, v in outcomes.items()
                if isinstance(v, Answer) and (k not in in_turns or in_turns[k] != v.reply)
            }
            holder["outcomes"] = {
                k: replace(v, reply="") if isinstance(v, Answer) else v for k, v in outcomes.items()
            }
        sealed = self._cipher(key_id, key).encrypt(self.transcoder.encode(personal))
        state["_personal"] = {"key": key_id, "data": base64.b64encode(sealed).decode()}
        clone = object.__new__(type(domain_event))
        object.__setattr__(clone, "__dict__", state)
        return super().to_stored_event(clone)

    @staticmethod
    def _personal_fields(domain_event: Any) -> tuple[str, ...]:
        kind = type(domain_event)
        if kind.__name__ == "Snapshot":
            is_conversation = getattr(domain_event, "topic", "") == CONVERSATION_TOPIC
            return PERSONAL_FIELDS["Snapshot"] if is_conversation else ()
        if not kind.__qualname__.startswith("Conversation."):
            return ()
        return PERSONAL_FIELDS.get(kind.__name__, ())

    # Reading ------------------------------------------------------------------------

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        domain_event = super().to_domain_event(stored_event)
        state = vars(domain_event)
        personal = state.pop("_personal", None)
        if personal is None:
            return domain_event
        holder = state["state"] if "state" in state else state
        found = self.keys.key_for_reading(personal["key"]) if self.keys else "erased"
        snapshot = holder is not state
        if isinstance(found, bytes):
            sealed = base64.b64decode(personal["data"])
            fields = self.transcoder.decode(self._cipher(personal["key"], found).decrypt(sealed))
            if snapshot:
                for key, message in fields.pop("pending", {}).items():
                    holder["pending"][key]["message"] = message
                replies = fields.pop("outcomes", {})
                for key, reply in replies.items():
                    holder["outcomes"][key] = _with_reply(holder["outcomes"][key], reply)
                for key, reply in _turn_replies(fields.get("turns")).items():
                    if key not in replies and key in holder["outcomes"]:
                        holder["outcomes"][key] = _with_reply(holder["outcomes"][key], reply)
            elif "reply" in fields:
                # A reply to a user erased while it was on its way, as versions
                # before Shredded recorded it.
                fields["reply"] = from_legacy(fields["reply"])
            holder.update(fields)
        else:
            marker = Shredded(found)
            for field in PERSONAL_FIELDS["Snapshot" if snapshot else type(domain_event).__name__]:
                holder[field] = _SHREDDED_VALUES.get(field, lambda: marker)()
            if snapshot:
                for entry in holder.get("pending", {}).values():
                    entry["message"] = marker
                for key, outcome in holder.get("outcomes", {}).items():
                    holder["outcomes"][key] = _with_reply(outcome, marker)
        return domain_event

    def _cipher(self, key_id: str, key: bytes) -> AESCipher:
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            cipher = _aes(key)
            with self._lock:
                if len(self._ciphers) >= CIPHER_CACHE_SIZE:
                    self._ciphers.pop(next(iter(self._ciphers)))  # the oldest
                self._ciphers[key_id] = cipher
        return cipher

    def forget(self) -> None:
        """Drop the ciphers of unwrapped keys (after keys were destroyed)."""
        with self._lock:
            self._ciphers.clear()


def _turn_replies(turns: Any) -> dict[str, Any]:
    """Request id -> reply of a snapshot's turns (none when shredded)."""
    if not isinstance(turns, list):
        return {}
    return {turn.request_id: turn.reply for turn in turns if isinstance(turn, Turn)}


def _with_reply(outcome: Any, reply: Any) -> Any:
    """An outcome with its reply put back (or shredded); a failure has none."""
    if isinstance(outcome, Answer):
        return replace(outcome, reply=reply)
    if isinstance(outcome, dict) and "usage" in outcome:  # a snapshot of version 1
        return {**outcome, "response": reply}
    return outcome


def _content_days(state: dict[str, Any]) -> list[str]:
    """The UTC days of the answers a snapshot's state holds."""
    days = [
        turn.answered_at[:10] for turn in state.get("turns", [])
        if turn.answered_at and turn.readable
    ]
    days += [
        outcome.answered_at[:10] for outcome in state.get("outcomes", {}).values()
        if isinstance(outcome, Answer) and readable(outcome.reply) and outcome.answered_at
    ]
    if readable(state.get("summary")) and state.get("summary_from"):
        days.append(str(state["summary_from"])[:10])
    # The digest of a request refused before it was received: its refusal's day.
    digests = state.get("digests", {})
    days += [
        outcome.failed_at[:10] for request_id, outcome in state.get("outcomes", {}).items()
        if isinstance(outcome, Failure) and request_id in digests and outcome.failed_at
    ]
    return days


def _aes(key: bytes) -> AESCipher:
    """eventsourcing's AES-GCM cipher with this key."""
    return _PooledNonceCipher(Environment(env={"CIPHER_KEY": base64.b64encode(key).decode()}))


class _PooledNonceCipher(AESCipher):
    """eventsourcing's AES-GCM cipher, writing the same bytes (nonce, tag, ciphertext),
    for a store that encrypts every event twice: one AESGCM per key rather than one
    per call, and the random 96-bit nonces drawn from os.urandom 4 KiB at a time rather
    than with a system call each (2.9 % of the worker's samples under load)."""

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self._aead = AESGCM(self.key)

    def encrypt(self, plaintext: bytes) -> bytes:
        nonce = _NONCES.take()
        sealed = self._aead.encrypt(nonce, plaintext, None)
        return nonce + sealed[-16:] + sealed[:-16]  # the tag first, as the library writes it


class _Nonces:
    """Random 12-byte nonces from a buffer of os.urandom output, each handed out once.
    A forked child starts with an empty buffer, so it never repeats its parent's."""

    SIZE = 12
    BUFFER = 4092  # 341 nonces

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._empty()
        os.register_at_fork(after_in_child=self._empty)

    def _empty(self) -> None:
        self._buffer, self._at = b"", 0

    def take(self) -> bytes:
        with self._lock:
            if self._at + self.SIZE > len(self._buffer):
                self._buffer, self._at = os.urandom(self.BUFFER), 0
            nonce = self._buffer[self._at:self._at + self.SIZE]
            self._at += self.SIZE
            return nonce


_NONCES = _Nonces()

