"""Replay a conversation's events for an auditor, optionally the state as of one of them."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.application import project_aggregate

from adapters.event_store import ChatRecords
from application.privacy import KEY_LEDGER_ID
from domain.conversation import Conversation, Failure, conversation_id


class ConversationNotFound(LookupError):
    pass


def resolve_conversation(target: str, thread: str | None = None) -> UUID:
    """A conversation id given as itself, or derived from a user's email (and thread)."""
    try:
        return UUID(target)
    except ValueError:
        return conversation_id(target, thread)


def _short(content: object, limit: int = 60) -> str:
    """Text as an auditor reads it; shredded content as [erased] or [expired]."""
    if not content:
        return ""
    text = " ".join(str(content).split())
    return f'"{text if len(text) <= limit else text[: limit - 1] + "…"}"'


def usd(cost: float | None) -> str:
    """Dollars as an auditor reads them; None is a model without a price."""
    if cost is None:
        return "unpriced"
    return "$" + (f"{cost:.8f}".rstrip("0").rstrip(".") if cost else "0")


def describe(event: Any) -> tuple[str, str, str, str]:
    """(model, tokens, cost, detail) columns for one event."""
    name = type(event).__name__
    if name == "Started":
        thread = f" thread {event.thread}" if event.thread else ""
        return "", "", "", f"conversation of {event.user_email}{thread}"
    if name == "UserMessageReceived":
        images = f" +{len(event.image_digests)} image(s)" if event.image_digests else ""
        context = f", {event.history_turns} earlier turn(s) as context"
        return (
            event.model,
            "",
            "",
            f"request {event.request_id}: {_short(event.message)}{images}{context}",
        )
    if name == "ReplyRecorded":
        tokens = f"{event.prompt_tokens}+{event.completion_tokens}"
        if event.cached_tokens:
            tokens += f" ({event.cached_tokens} cached)"
        source = {"cache": " (from the cache)", "shared": " (shared with an identical request)",
                  "batch": " (Batch API)"}.get(event.source, "")
        detail = f"request {event.request_id}{source}: {_short(event.reply)}"
        return event.model, tokens, usd(event.cost), detail
    if name == "BatchSubmitted":
        return "", "", "", f"request {event.request_id}: sent in batch {event.batch_id}"
    if name in ("ModelCallSent", "ModelCallTakenOver"):
        how = "sent (after waiting)" if name == "ModelCallSent" else "taken over"
        return "", "", "", f"request {event.request_id}: model call {how} by worker {event.worker}"
    if name == "ModelCallAbandoned":
        return "", "", "", f"request {event.request_id}: model call abandoned before its reply"
    if name == "ContextCompacted":
        tokens = f"{event.prompt_tokens}+{event.completion_tokens}"
        detail = (f"{event.turns_covered} turn(s) up to request {event.through_request_id} "
                  f"summarised: {_short(event.summary)}")
        return event.model, tokens, usd(event.cost), detail
    if name == "RequestFailed":
        return "", "", "", f"request {event.request_id}: {event.error_type}: {event.error_message}"
    if name == "UserErased":
        return "", "", "", f"erasure requested by {event.requested_by}: data keys destroyed"
    if name == "ContentExpired":
        return "", "", "", f"retention: content before {event.before_day} expired"
    if name == "KeysRotated":
        return "", "", "", f"master key rotated: {event.keys} data key(s) rewrapped"
    return "", "", "", ""


def audit_report(records: ChatRecords, target: str, thread: str | None = None,
                 as_of: int | None = None) -> str:
    cid = resolve_conversation(target, thread)
    events = list(records.events.get(cid, lte=as_of))
    if not events:
        raise ConversationNotFound(f"no conversation found for {target}")
    # Key rotations concern every conversation: shown in its timeline, unnumbered.
    since, until = events[0].timestamp, events[-1].timestamp if as_of else None
    rotations = [
        e for e in records.events.get(KEY_LEDGER_ID)
        if type(e).__name__ == "KeysRotated" and e.timestamp >= since
        and (until is None or e.timestamp <= until)
    ]
    rows = [("#", "time (UTC)", "event", "model", "tokens", "cost", "detail")]
    for event in sorted([*events, *rotations], key=lambda e: e.timestamp):
        rows.append((
            str(event.originator_version) if event.originator_id == cid else "-",
            event.timestamp.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
            type(event).__name__,
            *describe(event),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    lines = [f"Conversation {cid}"]
    lines += [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:6], widths)) + "  " + row[6]
        for row in rows
    ]
    if as_of is not None:
        # From the events alone: a snapshot holds only the newest turns and outcomes.
        state: Conversation = project_aggregate(None, events)
        lines.append(f"State as of event #{state.version}:")
        lines.append(f"  {len(state.turns)} answered turn(s), "
                     f"{len(state.pending)} pending, "
                     f"{sum(isinstance(o, Failure) for o in state.outcomes.values())} failed")
        for turn in state.turns:
            lines.append(f"  user: {_short(turn.user_message, 100)}")
            lines.append(f"  {turn.model}: {_short(turn.reply, 100)}")
    return "\n".join(line.rstrip() for line in lines)
