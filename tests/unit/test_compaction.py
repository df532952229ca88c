"""Context compaction (application/compaction.py): old turns summarised once by the
summary model, charged to the budget, reused after a conflict, dropped on failure."""

from opentelemetry import trace

from application.call_masking import CallMasking
from application.chat_policy import ChatPolicy
from application.compaction import SUMMARY_INSTRUCTIONS, Compactor, summary_call
from application.context_window import ContextWindow, call_digest
from application.model_slots import ModelSlots
from application.ports import ModelError
from domain.conversation import Conversation, conversation_id
from tests.support.conversations import answer, conversation_of
from tests.unit.fakes import (
    CountingLimiter,
    FixedClock,
    WordCounter,
    ask,
    event_names,
    make_service,
    used_tokens,
    wire,
)

EXCHANGES = [("q one", "a one"), ("q two", "a two"), ("q three", "a three")]


# Through the service -----------------------------------------------------------------


async def test_old_turns_are_summarised_once_and_the_summary_is_reused():
    service, model = make_service(context_max_turns=4, summary_model="cheap-model")
    for n in range(12):
        await wire(service, ask(f"r{n}", f"question {n}"))
    summaries = [c for c in model.calls if c.model == "cheap-model"]
    # Half the window is kept after each summary: one summary per two new turns
    # past the window, never one per request.
    assert 3 <= len(summaries) <= 5, len(summaries)
    last = model.calls[-1]
    assert last.messages[0].role == "system" and last.messages[0].text.startswith(
        "Summary of the earlier conversation:\n"
    )
    users = [m.text for m in last.messages if m.role == "user"]
    assert users[-1] == "question 11" and len(users) <= 5
    # The second summary builds on the first, and covers only turns not yet summarised.
    second = summaries[1].messages[-1].text
    assert second.startswith("Summary so far:\n") and "question 0" not in second.split("\n\n", 1)[1]
    names = event_names(service)
    assert names.count("ContextCompacted") == len(summaries)
    conversation = service.records.conversation(conversation_id("ada@example.com"))
    assert conversation.context_summary() is not None
    compacted = [e for e in service.records.events.get(conversation.id)
                 if type(e).__name__ == "ContextCompacted"]
    assert all(e.prompt_tokens > 0 and e.model == "cheap-model" for e in compacted)


async def test_summaries_are_charged_to_the_budget_and_truncate_never_summarises():
    service, model = make_service(context_max_turns=2)
    answers = [await wire(service, ask(f"r{n}", f"question {n}")) for n in range(6)]
    await service.close()
    summary_tokens = sum(
        e.prompt_tokens + e.completion_tokens
        for e in service.records.events.get(conversation_id("ada@example.com"))
        if type(e).__name__ == "ContextCompacted"
    )
    assert summary_tokens > 0
    assert used_tokens(service) == sum(a["usage"]["total_tokens"] for a in answers) + summary_tokens

    plain, plain_model = make_service(context_max_turns=2, context_strategy="truncate")
    for n in range(6):
        await wire(plain, ask(f"r{n}", f"question {n}"))
    assert len(plain_model.calls) == 6 and "ContextCompacted" not in event_names(plain)


async def test_a_failed_summary_falls_back_to_dropping_the_oldest_turns():
    service, model = make_service(context_max_turns=2)
    for n in range(3):
        await wire(service, ask(f"r{n}", f"question {n}"))
    model.script = [ModelError("upstream_error", "down")]  # the summary call fails
    answer = await wire(service, ask("r3", "question 3"))
    assert answer["response"] == "answer to question 3"
    assert model.calls[-2].model == "gpt-4o-mini" and "Summary" not in model.calls[-1].messages[0].text
    assert [m.text for m in model.calls[-1].messages if m.role == "user"] == [
        "question 1", "question 2", "question 3"
    ]
    assert "ContextCompacted" not in event_names(service)


async def test_an_erased_users_summary_is_gone():
    service, model = make_service(context_max_turns=2)
    for n in range(4):
        await wire(service, ask(f"r{n}", f"question {n}"))
    conversation = service.records.conversation(conversation_id("ada@example.com"))
    assert conversation.context_summary() is not None
    conversation.erase(requested_by="ada", erased_at="2026-11-25T12:00:00Z")
    assert conversation.context_summary() is None and conversation.unsummarised_turns() == []


async def test_a_summary_whose_save_conflicted_is_reused_not_paid_again():
    from eventsourcing.persistence import RecordConflictError

    service, model = make_service(context_max_turns=2, summary_model="cheap-model")
    for n in range(3):
        await wire(service, ask(f"r{n}", f"question {n}"))
    save = service.writer.save
    conflicts = []

    async def conflicting_once(conversation, **options):
        if not conflicts and any(type(e).__name__ == "ContextCompacted"
                                 for e in conversation.pending_events):
            conflicts.append(conversation.id)
            conversation.collect_events()  # what another writer's win leaves unsaved
            raise RecordConflictError("another worker wrote first")
        return await save(conversation, **options)

    service.writer.save = conflicting_once
    answer = await wire(service, ask("r3", "question 3"))
    assert conflicts and answer["response"] == "answer to question 3"
    assert [c.model for c in model.calls].count("cheap-model") == 1
    assert event_names(service).count("ContextCompacted") == 1


# The compactor itself ------------------------------------------------------------------


def test_a_summary_call_asks_the_summary_model_for_a_note_of_the_turns():
    call = summary_call("cheap-model", None, conversation_of(*EXCHANGES[:2]).turns, 8000)
    assert (call.model, call.temperature, call.max_tokens) == ("cheap-model", 0.0, 8000 // 20)
    assert [m.role for m in call.messages] == ["system", "user"]
    assert call.messages[0].text == SUMMARY_INSTRUCTIONS.format(words=300)
    assert call.messages[1].text == "User: q one\nAssistant: a one\n\nUser: q two\nAssistant: a two"


def test_a_summary_call_builds_on_the_summary_so_far_and_names_images_not_their_content():
    conversation = Conversation("ada@example.com")
    conversation.receive_message(
        "r1", "what is this?", ["sha256:a", "sha256:b"], "gpt-4o", 100, 0.7, None, None, 0
    )
    answer(conversation, "r1", "two cats")
    call = summary_call("cheap-model", "Ada likes tea.", conversation.turns, 100)
    assert call.messages[1].text == (
        "Summary so far:\nAda likes tea.\n\nUser: [2 image(s)] what is this?\nAssistant: two cats"
    )
    assert call.max_tokens == 64  # never less, however small the window


def compactor_of(policy: ChatPolicy):
    """A Compactor on FakeModel, with a budget ledger on an in-memory store."""
    service, model = make_service()
    compactor = Compactor(
        policy, ContextWindow(policy, WordCounter()), service.ledger, CallMasking(None, "off"),
        ModelSlots(CountingLimiter()), model, FixedClock(), trace.get_tracer(__name__),
    )
    return compactor, model


async def compact(compactor: Compactor, conversation: Conversation, hold: str) -> str | None:
    """Compact as the service does for a new request "next" (no expiry, no deadline)."""
    return await compactor.compact_if_needed(
        ask("r9", "next"), conversation, hold, WordCounter().count, "", None
    )


async def test_turns_that_fit_the_window_are_left_alone():
    compactor, model = compactor_of(ChatPolicy(context_max_turns=3))
    conversation = conversation_of(*EXCHANGES)
    assert await compact(compactor, conversation, "h") is None
    assert model.calls == [] and conversation.context_summary() is None


async def test_the_older_turns_are_summarised_once_and_the_summary_reused_until_saved():
    policy = ChatPolicy(context_max_turns=2, summary_model="cheap-model")
    compactor, model = compactor_of(policy)
    conversation = conversation_of(*EXCHANGES)
    digest = await compact(compactor, conversation, "h1")
    # Three turns, a window of two: half the window (one turn) is kept, two are summarised.
    expected = summary_call("cheap-model", None, conversation_of(*EXCHANGES).turns[:2], 8000)
    assert digest == call_digest(expected)
    assert [(c.model, c.messages) for c in model.calls] == [("cheap-model", expected.messages)]
    summary = f"answer to {expected.messages[-1].text}"  # what FakeModel replies
    assert conversation.context_summary() == summary
    assert [t.request_id for t in conversation.unsummarised_turns()] == ["r2"]
    # The same compaction again (its save conflicted, say): the summary is reused.
    again = conversation_of(*EXCHANGES)
    assert await compact(compactor, again, "h2") == digest
    assert len(model.calls) == 1 and again.context_summary() == summary
    # Once saved, it is not kept: a later compaction asks again.
    compactor.saved(digest)
    later = conversation_of(*EXCHANGES)
    assert await compact(compactor, later, "h3") == digest
    assert len(model.calls) == 2
