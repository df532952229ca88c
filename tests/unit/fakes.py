"""Fakes for the ports, kept in one place (cosmicpython style), for unit tests only."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta

from adapters.aggregate_store import StoreOfRecords
from adapters.event_store import ChatRecords
from application.budget_ledger import BudgetLedger
from application.chat import ChatService
from application.chat_policy import ChatPolicy
from application.privacy import Privacy
from application.contract import ChatRequest
from application.pii import resolve_overlaps
from application.ports import BatchState, Detection, ModelCall, ModelError, ModelReply
from domain.conversation import conversation_id
from entrypoints.settings import Settings
from domain.token_budget import SERVICE_SCOPE


class WordCounter:
    """Counts words as tokens: predictable arithmetic in tests."""

    def count(self, text: str) -> int:
        return len(text.split())

    def tail(self, text: str, max_tokens: int) -> str:
        words = text.split()
        return " ".join(words[-max_tokens:]) if max_tokens > 0 else ""

    def for_model(self, model: str) -> WordCounter:
        return self


class FakeModel:
    """Answers with a scripted reply or error; remembers every call."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[ModelCall] = []
        self.script: list[ModelReply | ModelError] = []
        self.delay = delay

    async def complete(self, call: ModelCall) -> ModelReply:
        self.calls.append(call)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.script:
            step = self.script.pop(0)
            if isinstance(step, ModelError):
                raise step
            return step
        text = f"answer to {call.messages[-1].text}"
        prompt = sum(len(m.text.split()) for m in call.messages)
        return ModelReply(text, call.model, prompt, len(text.split()))

    async def close(self) -> None:
        pass


class FixedClock:
    def __init__(self, at: datetime = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at

    def advance(self, **delta: float) -> None:
        self.at += timedelta(**delta)


class CountingLimiter:
    def __init__(self) -> None:
        self.acquired = 0
        self.tokens: list[int] = []  # the worst case each call counted
        self.settled: dict[object, int] = {}  # admission: tokens used

    async def acquire(self, tokens: int = 0) -> int:
        self.acquired += 1
        self.tokens.append(tokens)
        return len(self.tokens) - 1  # the admission: which call it was

    def settle(self, admission: object, tokens: int) -> None:
        self.settled[admission] = tokens

    def keep_alive(self) -> None:
        pass

    def observe(self, status) -> None:  # type: ignore[no-untyped-def]
        self.observed = status

    async def close(self) -> None:
        pass


class MemoryCache:
    """ResponseCache in a dict (TTL not kept); `down` makes it miss like an outage."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], ModelReply] = {}
        self.down = False

    async def get(self, scope: str, digest: str) -> ModelReply | None:
        return None if self.down else self.entries.get((scope, digest))

    async def put(self, scope: str, digest: str, reply: ModelReply, ttl: float) -> None:
        if not self.down:
            self.entries[(scope, digest)] = reply

    async def forget(self, scope: str) -> int:
        gone = [key for key in self.entries if key[0] == scope]
        for key in gone:
            del self.entries[key]
        return len(gone)

    async def close(self) -> None:
        pass


class FakeBatchModel:
    """BatchModel answering each batch (with FakeModel) when `finish` is called."""

    def __init__(self, model: FakeModel) -> None:
        self.model = model
        self.batches: dict[str, list[tuple[str, ModelCall]]] = {}
        self.finished: dict[str, dict[str, ModelReply | ModelError]] = {}
        self.polls = 0

    async def submit(self, entries: list[tuple[str, ModelCall]]) -> str:
        batch_id = f"batch_{len(self.batches) + 1}"
        self.batches[batch_id] = list(entries)
        return batch_id

    async def finish(self, batch_id: str) -> None:
        results: dict[str, ModelReply | ModelError] = {}
        for custom_id, call in self.batches[batch_id]:
            try:
                results[custom_id] = await self.model.complete(call)
            except ModelError as error:
                results[custom_id] = error
        self.finished[batch_id] = results

    async def poll(self, batch_id: str) -> BatchState:
        self.polls += 1
        results = self.finished.get(batch_id)
        return BatchState(batch_id, "completed" if results else "in_progress", results)

    async def close(self) -> None:
        pass


class ScriptedDetector:
    """Finds the values it was given (as whole words), with their types."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.calls = 0

    def detect(self, text: str) -> list[Detection]:
        self.calls += 1
        found = []
        for value, kind in self.values.items():
            for match in re.finditer(re.escape(value), text):
                found.append(Detection(kind, match.start(), match.end(), value))
        return resolve_overlaps(found)


LEDGER_SETTINGS = {
    "daily_token_limit": "daily_limit", "budget_chunk_tokens": "chunk_tokens",
    "budget_lease_expiry": "lease_expiry",
}


def make_service(
    model: FakeModel | None = None, service_parts: dict[str, object] | None = None,
    records: ChatRecords | None = None, clock: FixedClock | None = None,
    conversation_cache_size: int = 10_000, **policy: object,
) -> tuple[ChatService, FakeModel]:
    """A ChatService on an in-memory event store (or `records`). Besides the
    service's own parts, it carries `records`, `stores` and `writer` (the event
    store, its aggregate stores and their group commit) for tests to look at and
    to break."""
    model = model or FakeModel()
    records = records or ChatRecords(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    clock = clock or FixedClock()
    # Bounded as the worker bounds them by default (Settings.turns_kept and
    # CONVERSATION_OUTCOMES_KEPT).
    turns_kept = max(2 * int(policy.get("context_max_turns", ChatPolicy().context_max_turns)), 1)
    stores = StoreOfRecords(records, conversation_cache_size, turns_kept=turns_kept,
                            outcomes_kept=Settings.model_fields["CONVERSATION_OUTCOMES_KEPT"].default)
    ledger_settings = {LEDGER_SETTINGS[name]: policy.pop(name) for name in list(policy)
                       if name in LEDGER_SETTINGS}
    ledger_settings.setdefault("daily_limit", 1_000_000)
    service = ChatService(
        conversations=stores.conversations,
        ledger=BudgetLedger(stores.budgets, clock, **ledger_settings),  # type: ignore[arg-type]
        model=model,
        counter=WordCounter(),
        rate_limiter=CountingLimiter(),
        clock=clock,
        policy=ChatPolicy(**policy),  # type: ignore[arg-type]
        **{"batch_records": stores.batches, **(service_parts or {})},  # type: ignore[arg-type]
    )
    service.records = records  # type: ignore[attr-defined]
    service.stores = stores  # type: ignore[attr-defined]
    service.writer = stores.writer  # type: ignore[attr-defined]
    return service, model


async def wire(service: ChatService, request: object) -> dict[str, object]:
    """The service's response to a request as it goes on the wire (JSON)."""
    return (await service.handle(request)).to_json()  # type: ignore[arg-type]


def ask(request_id: str, message: str, **fields) -> ChatRequest:
    """A request from ada@example.com (or `user_email`), with any other fields."""
    return ChatRequest(request_id, fields.pop("user_email", "ada@example.com"), message, **fields)


def used_tokens(service: ChatService) -> int:
    """Tokens the service's budget of the (fixed) day counts as used."""
    return service.records.budget(SERVICE_SCOPE, "2026-11-25").used  # type: ignore[attr-defined]


def event_names(service: ChatService, user: str = "ada@example.com",
                thread: str | None = None) -> list[str]:
    """The names of the events stored for a user's conversation (thread)."""
    return [type(e).__name__
            for e in service.records.events.get(conversation_id(user, thread))]  # type: ignore[attr-defined]


def records_with_keys() -> ChatRecords:
    """An in-memory event store with data keys (so that users can be erased)."""
    from adapters.event_store import event_store_env

    return ChatRecords(env=event_store_env("memory://", "fake-secret"))


def privacy_of(service: ChatService, cache: MemoryCache | None) -> Privacy:
    """The Privacy service over a service made by make_service(records=records_with_keys())."""
    stores = service.stores  # type: ignore[attr-defined]
    return Privacy(service.conversations, stores.ledgers, service.records.data_keys,  # type: ignore[attr-defined]
                   service.clock, cache)
