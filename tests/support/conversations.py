"""Conversations written and erased the way the service does it, for tests of
several layers: domain commands on a Conversation, turns saved through a real
ChatRecords, and Privacy's erasure, retention and key rotation run over it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from adapters.aggregate_store import StoreOfRecords
from adapters.event_store import ChatRecords
from application.privacy import Privacy
from domain.conversation import Conversation, conversation_id
from tests.unit.fakes import FixedClock

MESSAGE = "my diagnosis is hypertension, call me on +44 20 7946 0958"
REPLY = "noted: hypertension"


def receive(conversation: Conversation, request_id: str, message: str) -> None:
    conversation.receive_message(
        request_id=request_id,
        message=message,
        image_digests=[],
        model="gpt-4o-mini",
        max_tokens=100,
        temperature=0.7,
        system_prompt=None,
        caller_context=None,
        history_turns=0,
    )


def answer(conversation: Conversation, request_id: str, reply: str) -> None:
    conversation.record_reply(
        request_id=request_id,
        reply=reply,
        model="gpt-4o-mini",
        prompt_tokens=10,
        completion_tokens=5,
        finish_reason="stop",
        answered_at="2026-01-01T00:00:00.000Z",
        processing_time=0.5,
        cached_tokens=0,
        cost=0.0000045,
    )


def conversation_of(*exchanges: tuple[str, str]) -> Conversation:
    """A conversation of answered turns r0, r1, ... (message, reply)."""
    conversation = Conversation("ada@example.com")
    for n, (message, reply) in enumerate(exchanges):
        receive(conversation, f"r{n}", message)
        answer(conversation, f"r{n}", reply)
    return conversation


def say(records: ChatRecords, email: str, request_id: str, message: str = MESSAGE,
        reply: str = REPLY) -> Conversation:
    conversation = records.conversation(conversation_id(email)) or Conversation(email)
    conversation.receive_message(
        request_id=request_id, message=message, image_digests=["sha256:abc"], model="gpt-4o-mini",
        max_tokens=100, temperature=0.7, system_prompt="be kind", caller_context="ctx",
        history_turns=len(conversation.turns),
    )
    conversation.record_reply(
        request_id=request_id, reply=reply, model="gpt-4o-mini", prompt_tokens=12,
        completion_tokens=3, finish_reason="stop", answered_at=_now(), processing_time=0.1,
        cached_tokens=0, cost=0.0000036,
    )
    records.save(conversation)
    return conversation


def privacy_of(records: ChatRecords, clock: FixedClock | None = None) -> Privacy:
    stores = StoreOfRecords(records)
    return Privacy(stores.conversations, stores.ledgers, records.data_keys, clock or FixedClock())


def erase(records: ChatRecords, email: str, requested_by: str, clock: FixedClock | None = None):
    return asyncio.run(privacy_of(records, clock).erase_user(email, requested_by))


def expire(records: ChatRecords, clock: FixedClock, retention_days: int) -> list[str]:
    return asyncio.run(privacy_of(records, clock).expire_content(retention_days))


def rotate(records: ChatRecords) -> int:
    return asyncio.run(privacy_of(records).rotate_keys())


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
