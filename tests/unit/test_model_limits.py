"""Caller mistakes are invalid_request (domain/model_limits.py,
application/context_window.py): a reply longer than the model writes, a prompt that
cannot fit the model's context window, or a request bigger than the whole daily
budget is refused at once, unrecorded, instead of "try again tomorrow"."""

from application.chat_policy import ChatPolicy
from application.context_window import ContextWindow
from application.ports import ModelReply
from domain.conversation import Conversation, conversation_id
from domain.model_limits import DEFAULT_MODEL_LIMITS, ModelLimits, ModelLimitTable
from tests.support.conversations import answer, conversation_of, receive
from tests.unit.fakes import WordCounter, ask, event_names, make_service, wire


def refusal(payload: dict) -> str:
    assert payload["error"]["type"] == "invalid_request", payload
    return payload["error"]["message"]


# The table ------------------------------------------------------------------------------


def test_known_models_and_their_dated_snapshots_have_the_published_limits():
    table = ModelLimitTable(DEFAULT_MODEL_LIMITS)
    assert table.limits_of("gpt-4o-mini") == ModelLimits(128_000, 16_384)
    assert table.limits_of("gpt-4o-mini-2024-07-18") == ModelLimits(128_000, 16_384)
    assert table.limits_of("gpt-4o-2024-05-13") == ModelLimits(128_000, 4_096)  # its own entry
    assert table.limits_of("gpt-4o-latest") == table.limits_of("chatgpt-4o-latest")
    assert table.limits_of("gpt-4.1-nano") == ModelLimits(1_047_576, 32_768)
    assert table.limits_of("gpt-4-turbo") == ModelLimits(128_000, 4_096)
    assert table.limits_of("gpt-3.5-turbo") == ModelLimits(16_385, 4_096)
    assert table.limits_of("o3-mini") == ModelLimits(200_000, 100_000)
    assert table.limits_of("gpt-5-mini-2025-08-07") == ModelLimits(400_000, 128_000)
    # Unknown models (and fine-tunes, as with prices) are left to the provider.
    for unknown in ("my-model", "ft:gpt-4o-mini:org::abc", "GPT-4O", "offline:gpt-4o-mini"):
        assert table.limits_of(unknown) is None, unknown


def test_limits_must_be_positive_token_counts():
    import pytest

    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError):
            ModelLimits(bad, 10)  # type: ignore[arg-type]


# Through the service ---------------------------------------------------------------------


async def test_max_tokens_above_the_models_output_limit_is_refused_unrecorded():
    service, model = make_service()
    await wire(service, ask("r1", "hello"))
    events = event_names(service)
    refused = await wire(service, ask("r2", "hello", max_tokens=100_000))
    assert refusal(refused) == (
        "'max_tokens' is 100000, but gpt-4o-mini writes at most 16384 tokens in a reply.")
    assert event_names(service) == events and len(model.calls) == 1
    assert service.records.conversation(conversation_id("ada@example.com")).outcome("r2") is None
    # Within the limit it is a request like any other.
    assert "response" in await wire(service, ask("r3", "hello", max_tokens=16_384))


async def test_a_prompt_that_cannot_fit_the_models_window_is_refused_with_its_figures():
    service, model = make_service()
    words = "word " * 8_000
    refused = await wire(service, ask("r1", words, model="gpt-4", max_tokens=500,
                                      system_prompt="be brief"))
    # 3 to prime the reply, 8000 + 4 for the message, 2 + 4 for the system prompt.
    assert refusal(refused) == (
        "The request needs 8513 tokens (8013 for the message, its images and the system "
        "prompt, plus 500 for the reply), but gpt-4's context window holds 8192.")
    assert "word" not in refused["error"]["message"] and model.calls == []
    assert event_names(service) == ["Started"]  # the conversation, not the request


async def test_a_request_bigger_than_the_whole_daily_budget_is_invalid_not_budget_exceeded():
    service, model = make_service(daily_token_limit=1_000)
    refused = await wire(service, ask("r1", "word " * 600, max_tokens=500))
    assert refusal(refused) == (
        "The request needs up to 1107 tokens (607 for the message, its images and the system "
        "prompt, plus 500 for the reply), more than the service's whole daily token budget "
        "of 1000.")
    too_long_a_reply = await wire(service, ask("r2", "hello", model="my-model", max_tokens=10**30))
    assert refusal(too_long_a_reply) == (
        f"'max_tokens' is {10**30}, more than the service's whole daily token budget of 1000.")
    assert model.calls == []
    # Within it, a request the day's spending has no room for left is still budget_exceeded.
    model.script.append(ModelReply("a long answer", "gpt-4o-mini", 500, 100))
    assert "response" in await wire(service, ask("r3", "hello", max_tokens=600))
    late = await wire(service, ask("r4", "hello", max_tokens=600))
    assert late["error"]["type"] == "budget_exceeded"


async def test_unknown_models_are_left_to_the_provider():
    service, model = make_service()
    answered = await wire(service, ask("r1", "hello", model="my-model", max_tokens=200_000))
    assert "response" in answered and model.calls[-1].max_tokens == 200_000


async def test_a_request_answered_before_is_replayed_whatever_it_asks():
    service, model = make_service()
    conversation = Conversation("ada@example.com")
    receive(conversation, "r1", "old")  # recorded by an earlier version: no digest
    answer(conversation, "r1", "old answer")
    service.records.save(conversation)
    replayed = await wire(service, ask("r1", "old", max_tokens=100_000))
    assert replayed["response"] == "old answer"


async def test_the_default_reply_room_stays_within_the_models_limit():
    service, model = make_service(max_tokens=10_000)
    await wire(service, ask("r1", "hello", model="gpt-3.5-turbo"))
    await wire(service, ask("r2", "hello", model="my-model"))
    assert [call.max_tokens for call in model.calls] == [4_096, 10_000]


async def test_the_message_is_counted_once_per_request():
    service, model = make_service()
    counted: list[str] = []

    class Counting(WordCounter):
        def count(self, text: str) -> int:
            counted.append(text)
            return super().count(text)

    service.window.counter = Counting()
    await wire(service, ask("r1", "a long message to count", system_prompt="be kind"))
    assert counted.count("a long message to count") == 1
    assert counted.count("be kind") == 1


def test_history_fills_no_more_than_the_models_window_leaves():
    # The policy's window is wider than gpt-3.5-turbo's, less the reply's room.
    policy = ChatPolicy(context_max_tokens=20_000, context_max_turns=50)
    window = ContextWindow(policy, WordCounter())
    conversation = conversation_of(*[("q " * 1_000, "a " * 1_000)] * 12)
    request = ask("next", "hello", model="gpt-3.5-turbo", max_tokens=4_096)
    planned = window.plan(request, conversation, WordCounter().count, "")
    assert planned.estimate <= 16_385
    assert planned.history_turns == 6  # 2008 tokens a turn, in 16385 - 4096 - 3 - 5
    wide = window.plan(ask("next", "hello", model="gpt-4.1"), conversation, WordCounter().count, "")
    assert wide.history_turns == 9  # the policy's own window (20000)


async def test_a_pending_request_that_cannot_fit_ends_with_the_refusal():
    service, model = make_service()
    conversation = Conversation("ada@example.com")
    receive(conversation, "r1", "hello")  # received by an earlier version, never answered
    service.records.save(conversation)
    refused = await wire(service, ask("r1", "hello", max_tokens=100_000))
    assert refusal(refused).startswith("'max_tokens' is 100000")
    stored = service.records.conversation(conversation.id)
    assert not stored.is_pending("r1") and stored.outcome("r1").error_type == "invalid_request"
    assert await wire(service, ask("r1", "hello", max_tokens=100_000)) == refused
    assert model.calls == []


def test_a_long_text_is_counted_only_until_it_is_known_not_to_fit():
    from application.context_window import PIECE_CHARS, TextCounts

    calls: list[int] = []

    def count(text: str) -> int:
        calls.append(len(text))
        return len(text.split())

    counts = TextCounts(count)
    long = "w " * (2 * PIECE_CHARS)  # four pieces of PIECE_CHARS // 2 words each
    tokens, whole = counts.within(long, 1_000)
    assert (tokens, whole) == (PIECE_CHARS // 2 - 1, False) and len(calls) == 1
    # Counted whole when asked for its count (or when it fits), then kept.
    assert counts(long) == 2 * PIECE_CHARS and len(calls) == 5
    assert counts.within(long, 10) == (2 * PIECE_CHARS, True) and len(calls) == 5
    short = "a few words"
    assert counts.within(short, 1) == (3, True) and counts(short) == 3 and len(calls) == 6


async def test_a_huge_message_is_refused_without_being_counted_to_its_end():
    from application.context_window import PIECE_CHARS

    service, model = make_service()
    refused = await wire(service, ask("r1", "w " * (20 * PIECE_CHARS), max_tokens=100))
    message = refusal(refused)
    assert message.startswith("The request needs at least ") and "(at least " in message
    assert message.endswith("but gpt-4o-mini's context window holds 128000.")
