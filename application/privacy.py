"""Erasure, retention and key rotation: crypto-shredding of conversations' content.

Each records what it did as events (UserErased, ContentExpired on the
conversations, KeysRotated on the key ledger), so the audit shows it, then
destroys or rewraps the data keys. The accounting stays readable throughout.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import RecordConflictError

from application.chat import ChatRecords, iso_timestamp
from application.ports import Clock, DataKeys
from domain.conversation import Conversation, data_owner

log = logging.getLogger(__name__)
KEY_LEDGER_ID = uuid5(NAMESPACE_URL, "chater-gpt/key-ledger")


class KeyLedger(Aggregate):
    """The history of the master key: every rotation, for the auditor."""

    @staticmethod
    def create_id() -> UUID:
        return KEY_LEDGER_ID

    @event("Opened")
    def __init__(self) -> None:
        self.rotations = 0

    @event("KeysRotated")
    def rotated(self, from_masters: list[str], to_master: str, keys: int, rotated_at: str) -> None:
        self.rotations += 1


@dataclass(frozen=True)
class Erasure:
    conversation_ids: list[str]
    keys_destroyed: int


class PrivacyError(RuntimeError):
    """The store has no data keys (an in-memory store without them, say)."""


class Privacy:
    """Erase a user, expire old content, rotate the master key."""

    def __init__(self, records: ChatRecords, clock: Clock, service: Any = None) -> None:
        if records.data_keys is None:
            raise PrivacyError("this event store keeps no data keys")
        self.records = records
        self.keys: DataKeys = records.data_keys
        self.clock = clock
        self.service = service

    async def erase_user(self, user_email: str, requested_by: str) -> Erasure:
        """Erase a user everywhere this process keeps them: recorded, keys destroyed,
        kept conversations and cached replies dropped."""
        erasure = await asyncio.to_thread(self.erase, user_email, requested_by)
        if self.service is not None:
            self.service.forget(erasure.conversation_ids)
            await self.service.forget_cached(user_email)
        return erasure

    async def expire_content(self, retention_days: int) -> list[str]:
        """Expire content past the retention window; the conversations concerned."""
        expired = await asyncio.to_thread(self.expire, retention_days)
        if self.service is not None:
            self.service.forget(expired)
        return expired

    def erase(self, user_email: str, requested_by: str) -> Erasure:
        """Record the erasure on each of the user's conversations, then destroy the
        user's data keys: every message, reply, image digest and address becomes
        unreadable in every store and snapshot. Requests later start afresh."""
        owner = data_owner(user_email)
        conversations = self.keys.conversations_of(owner)
        at = iso_timestamp(self.clock)
        for cid in conversations:
            self._change(cid, lambda c: c.erase(requested_by=requested_by, erased_at=at))
        destroyed = self.keys.shred_owner(owner)
        self._forget_ciphers()
        log.info("erased a user: %d conversation(s), %d data key(s) destroyed",
                 len(conversations), destroyed)
        return Erasure(conversations, destroyed)

    def expire(self, retention_days: int) -> list[str]:
        """Destroy the data keys of the days before the retention window, after
        recording ContentExpired on the conversations concerned; their ids."""
        before_day = (self.clock.now() - timedelta(days=retention_days)).strftime("%Y-%m-%d")
        at = iso_timestamp(self.clock)
        owners = self.keys.shred_before(before_day)
        self._forget_ciphers()
        expired = []
        for owner in owners:
            for cid in self.keys.conversations_of(owner):
                self._change(cid, lambda c: c.expire(before_day=before_day, expired_at=at))
                # A fresh snapshot without the expired content, for loading from.
                self.records.take_snapshot(UUID(cid))
                expired.append(cid)
        if owners:
            log.info("retention: content before %s expired in %d conversation(s)",
                     before_day, len(expired))
        return expired

    def rotate(self) -> int:
        """Rewrap every data key with the master key of SECRET_KEY (those wrapped
        with SECRET_KEY_PREVIOUS included) and record the rotation."""
        before = self.keys.wrapped_by()
        count = self.keys.rewrap()
        after = self.keys.wrapped_by()
        try:
            ledger: KeyLedger = self.records.repository.get(KEY_LEDGER_ID)
        except AggregateNotFoundError:
            ledger = KeyLedger()
        ledger.rotated(
            from_masters=sorted(before), to_master=next(iter(after), ""),
            keys=count, rotated_at=iso_timestamp(self.clock),
        )
        self.records.save(ledger)
        return count

    def _change(self, cid: str, change: Any) -> None:
        """Apply a change to a stored conversation, again on a conflict."""
        while True:
            try:
                conversation: Conversation = self.records.repository.get(UUID(cid))
            except AggregateNotFoundError:
                return
            change(conversation)
            try:
                self.records.save(conversation)
                return
            except RecordConflictError:
                continue

    def _forget_ciphers(self) -> None:
        forget = getattr(self.records.mapper, "forget", None)
        if forget is not None:
            forget()
