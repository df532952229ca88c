"""Erasure, retention and key rotation: crypto-shredding of conversations' content.

Each records what it did as events (UserErased, ContentExpired on the
conversations, KeysRotated on the key ledger), so the audit shows it, then
destroys or rewraps the data keys. The accounting stays readable throughout.
This is the one place that erases a user: the erasure listener, the command line
and the sweep of other replicas' erasures all come here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import Aggregate, event

from application.contract import EMAIL_SHAPE, iso_timestamp_of, unreadable
from application.ports import AggregateStore, Clock, DataKeys, ResponseCache
from domain.addresses import InvalidAddress, legacy_form, normalise_email
from domain.conversation import CONVERSATION_NAMESPACE, Conversation, data_owner

log = logging.getLogger(__name__)
KEY_LEDGER_ID = uuid5(NAMESPACE_URL, "chater-gpt/key-ledger")
ERASURE_CHECK_INTERVAL = 2.0  # seconds between looks for other replicas' erasures
ERASURE_CHECK_OVERLAP = timedelta(seconds=30)
CACHE_SWEEP_AGAIN = 20.0  # seconds: a reply in flight at an erasure has been recorded by then


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
    replies_dropped: int = 0  # from the response cache, when there is one


class Privacy:
    """Erase a user, expire old content, rotate the master key, and follow the
    erasures other processes make."""

    def __init__(
        self,
        conversations: AggregateStore[Conversation],
        ledgers: AggregateStore[KeyLedger],
        keys: DataKeys,
        clock: Clock,
        cache: ResponseCache | None = None,
    ) -> None:
        self.conversations = conversations
        self.ledgers = ledgers
        self.keys = keys
        self.clock = clock
        self.cache = cache
        # Erasures are looked for from a little before start (clocks of replicas differ).
        self._erasures_since = iso_timestamp_of(clock.now() - ERASURE_CHECK_OVERLAP)
        self._erasures_checked = float("-inf")
        # Erased owners in the look-back window: when their cached replies were first
        # dropped, None once dropped again.
        self._cache_sweeps: dict[str, float | None] = {}

    async def erase_user(self, user_email: str, requested_by: str) -> Erasure:
        """Record the erasure on each of the user's conversations, then destroy the
        user's data keys: every message, reply, image digest and address becomes
        unreadable in every store and snapshot; copies kept in memory and cached
        replies go too. Requests later start afresh.

        Which data keys are the user's: see `owners_of` (an address no erasure can
        be carried out for raises domain.addresses.InvalidAddress before anything
        is erased)."""
        owners, left = owners_of(user_email)
        if left:
            log.warning("erasure: what earlier versions stored under this address's older "
                        "form may be another address's today, and is left to that address")
        conversations: list[str] = []
        destroyed = dropped = 0
        at = iso_timestamp_of(self.clock.now())
        for owner in owners:
            found = await asyncio.to_thread(self.keys.conversations_of, owner)
            for cid in found:
                await self._change(cid, partial(_erase, requested_by, at))
            destroyed += await asyncio.to_thread(self.keys.shred_owner, owner)
            self._forget(found)
            conversations += found
            # A cache outage: they expire by CACHE_TTL (and the sweeps try again).
            dropped += await self.cache.forget(owner) if self.cache is not None else 0
        log.info("erased a user: %d conversation(s), %d data key(s) destroyed",
                 len(conversations), destroyed)
        return Erasure(conversations, destroyed, dropped)

    async def expire_content(
        self, retention_days: int, progress: Callable[[int, int], None] | None = None
    ) -> list[str]:
        """Destroy the data keys of the days before the retention window, then
        record ContentExpired on the conversations concerned; their ids.
        `progress(done, total)` after each owner's conversations."""
        before_day = (self.clock.now() - timedelta(days=retention_days)).strftime("%Y-%m-%d")
        at = iso_timestamp_of(self.clock.now())
        owners = await asyncio.to_thread(self.keys.shred_before, before_day)
        expired = []
        for done, owner in enumerate(owners, 1):
            for cid in await asyncio.to_thread(self.keys.conversations_of, owner):
                await self._change(cid, partial(_expire, before_day, at))
                # A fresh snapshot without the expired content, for loading from.
                await self.conversations.snapshot(UUID(cid))
                expired.append(cid)
            if progress is not None:
                progress(done, len(owners))
        self._forget(expired)
        if owners:
            log.info("retention: content before %s expired in %d conversation(s)",
                     before_day, len(expired))
        return expired

    async def rotate_keys(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Rewrap every data key with the master key of SECRET_KEY (those wrapped
        with SECRET_KEY_PREVIOUS included) and record the rotation."""
        before = await asyncio.to_thread(self.keys.wrapped_by)
        count = await asyncio.to_thread(self.keys.rewrap, progress)
        after = await asyncio.to_thread(self.keys.wrapped_by)
        at = iso_timestamp_of(self.clock.now())
        await self.ledgers.change(
            KEY_LEDGER_ID,
            partial(_record_rotation, sorted(before), next(iter(after), ""), count, at),
            create=KeyLedger, wait_out_outages=False,
        )
        return count

    async def follow_erasures(self) -> None:
        """Called now and then: conversations kept in memory (and unwrapped keys and
        cached replies) of users another replica erased are dropped here too."""
        if time.monotonic() - self._erasures_checked < ERASURE_CHECK_INTERVAL:
            return
        self._erasures_checked = time.monotonic()
        # Windows overlap: an erasure committed while we looked, or stamped by a
        # replica whose clock is a little behind, is seen the next time.
        since = self._erasures_since
        self._erasures_since = iso_timestamp_of(self.clock.now() - ERASURE_CHECK_OVERLAP)
        try:
            owners = await asyncio.to_thread(self.keys.erased_since, since)
            erased = [
                cid for owner in owners
                for cid in await asyncio.to_thread(self.keys.conversations_of, owner)
            ]
        except Exception as error:  # the store is down: look again next time
            log.debug("erasures not looked for (%s)", type(error).__name__)
            self._erasures_since = since
            return
        if erased:
            self._forget(erased)
        if self.cache is not None:
            await self._sweep_cache(owners)

    async def _sweep_cache(self, erased_owners: list[str]) -> None:
        """Drop erased users' cached replies: when an erasure is first seen, and once
        more CACHE_SWEEP_AGAIN seconds later, for a reply that was in flight at the
        erasure (in any replica) and cached after it."""
        assert self.cache is not None
        now = time.monotonic()
        for owner in erased_owners:
            if owner not in self._cache_sweeps:  # first seen
                await self.cache.forget(owner)
                self._cache_sweeps[owner] = now
            elif (seen := self._cache_sweeps[owner]) is not None and now - seen >= CACHE_SWEEP_AGAIN:
                await self.cache.forget(owner)
                self._cache_sweeps[owner] = None  # swept twice: done
        for owner in set(self._cache_sweeps) - set(erased_owners):
            del self._cache_sweeps[owner]  # out of the window

    async def _change(self, cid: str, change: partial[None]) -> None:
        """Apply a change to a stored conversation (again on a conflict). An outage
        is raised, not waited out: the caller (the erasure listener, a retention
        run, a command) decides whether to try again or to stop."""
        try:
            await self.conversations.change(UUID(cid), change, wait_out_outages=False)
        except AggregateNotFoundError:
            return

    def _forget(self, conversation_ids: list[str]) -> None:
        """Drop what this process keeps in memory of destroyed content."""
        self.keys.forget_unwrapped()
        self.conversations.evict(conversation_ids)


def owners_of(user_email: str) -> tuple[list[str], bool]:
    """The data owners an erasure of the address destroys, and whether data that
    earlier versions stored under its older form is left to another address.

    Versions before domain.addresses compared `legacy_form(address)`. What they
    stored for an address whose form changed sits under the owner of that older
    form, which is erased too when that form is, today, the same address as the
    requester's (`Karl@Bücher.de`: `karl@bücher.de`, today `karl@xn--bcher-kva.de`).
    When it is another address today (`\u212Aarl@example.com`: `karl@example.com`,
    Karl's own), it holds that person's data too: it is left to their erasure
    request, since erasing it would destroy another person's data at anyone's
    request. An address refused today but taken by earlier versions (`a@☃.com`)
    has only that older owner, which is erased. Raises InvalidAddress for one no
    version took (not text, no @, control characters).
    """
    legacy = legacy_form(user_email)
    try:
        address = normalise_email(user_email)
    except InvalidAddress:
        if not _taken_before(user_email):
            raise
        return [_legacy_owner(user_email)], False
    if legacy == address:
        return [data_owner(address)], False
    if _compared(legacy) == address:
        return [data_owner(address), _legacy_owner(user_email)], False
    return [data_owner(address)], True


def _compared(address: str) -> str | None:
    """The address as compared today, or None when it is refused."""
    try:
        return normalise_email(address)
    except InvalidAddress:
        return None


def _taken_before(user_email: str) -> bool:
    """Whether versions before domain.addresses took the address (their contract's
    shape, valid text without control characters)."""
    return unreadable(user_email) is None and bool(EMAIL_SHAPE.match(user_email.strip()))


def _legacy_owner(user_email: str) -> str:
    """The data owner versions before domain.addresses gave the address: data_owner
    of its legacy form as they computed it (data_owner would normalise it anew)."""
    return str(uuid5(CONVERSATION_NAMESPACE, f"owner\n{legacy_form(user_email)}"))


def _erase(requested_by: str, at: str, conversation: Conversation) -> None:
    conversation.erase(requested_by=requested_by, erased_at=at)


def _expire(before_day: str, at: str, conversation: Conversation) -> None:
    conversation.expire(before_day=before_day, expired_at=at)


def _record_rotation(
    from_masters: list[str], to_master: str, keys: int, at: str, ledger: KeyLedger
) -> None:
    ledger.rotated(from_masters=from_masters, to_master=to_master, keys=keys, rotated_at=at)
