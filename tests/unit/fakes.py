"""Fakes for the ports, kept in one place (cosmicpython style), for unit tests only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from application.chat import ChatPolicy, ChatRecords, ChatService
from application.ports import ModelCall, ModelError, ModelReply


class WordCounter:
    """Counts words as tokens: predictable arithmetic in tests."""

    def count(self, text: str) -> int:
        return len(text.split())

    def tail(self, text: str, max_tokens: int) -> str:
        words = text.split()
        return " ".join(words[-max_tokens:]) if max_tokens > 0 else ""


class FakeModel:
    """Answers with a scripted reply or error; remembers every call."""

    def __init__(self) -> None:
        self.calls: list[ModelCall] = []
        self.script: list[ModelReply | ModelError] = []

    async def complete(self, call: ModelCall) -> ModelReply:
        self.calls.append(call)
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

    async def acquire(self) -> None:
        self.acquired += 1

    def observe(self, status) -> None:  # type: ignore[no-untyped-def]
        self.observed = status


def make_service(**policy: object) -> tuple[ChatService, FakeModel]:
    model = FakeModel()
    service = ChatService(
        records=ChatRecords(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}),
        model=model,
        counter=WordCounter(),
        rate_limiter=CountingLimiter(),
        clock=FixedClock(),
        policy=ChatPolicy(**policy),  # type: ignore[arg-type]
    )
    return service, model
