"""The context window (application/context_window.py): what a request's model call
carries (system prompt, summary, caller's context, history, message), on which
model, and the most it can cost; `call_digest`, what identifies a call's reply."""

import base64
from datetime import UTC, datetime

from application.chat_policy import ChatPolicy
from application.context_window import ContextWindow, call_digest
from application.images import Image
from application.ports import ChatMessage, ModelCall
from tests.support.conversations import conversation_of
from tests.unit.fakes import WordCounter, ask, make_service, wire

PNG = Image("image/png", base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
))
COUNT = WordCounter().count


# Through the service -----------------------------------------------------------------


async def test_follow_ups_carry_the_history_and_the_callers_context():
    service, model = make_service()
    await wire(service, ask("r1", "my name is Ada"))
    await wire(service, ask("r2", "what is my name?", context="we met yesterday", system_prompt="be kind"))
    sent = [(m.role, m.text) for m in model.calls[-1].messages]
    assert sent == [
        ("system", "be kind"),
        ("system", "Earlier in this conversation:\nwe met yesterday"),
        ("user", "my name is Ada"),
        ("assistant", "answer to my name is Ada"),
        ("user", "what is my name?"),
    ]


async def test_history_is_bounded_by_turns_and_tokens_but_keeps_system_prompt_and_message():
    service, model = make_service(context_max_turns=2, context_strategy="truncate")
    for n in range(4):
        await wire(service, ask(f"r{n}", f"question {n}"))
    users = [m.text for m in model.calls[-1].messages if m.role == "user"]
    assert users == ["question 1", "question 2", "question 3"]

    tight, tight_model = make_service(context_max_tokens=30, context_strategy="truncate")
    await wire(tight, ask("r1", "one two three"))
    long_message = "word " * 40
    await wire(tight, ask("r2", long_message, system_prompt="stay on topic"))
    sent = [(m.role, m.text) for m in tight_model.calls[-1].messages]
    assert sent == [("system", "stay on topic"), ("user", long_message)]


async def test_other_threads_of_the_same_user_are_separate_conversations():
    service, model = make_service()
    await wire(service, ask("r1", "in thread a", conversation_id="a"))
    await wire(service, ask("r2", "in thread b", conversation_id="b"))
    assert [m.text for m in model.calls[-1].messages] == ["in thread b"]


async def test_images_go_to_the_vision_model_unless_a_model_is_named():
    service, model = make_service()
    await wire(service, ask("r1", "what is this?", images=(PNG,)))
    assert model.calls[-1].model == "gpt-4o"
    assert model.calls[-1].messages[-1].images == (PNG,)
    await wire(service, ask("r2", "and this?", images=(PNG,), model="gpt-4.1"))
    assert model.calls[-1].model == "gpt-4.1"
    await wire(service, ask("r3", "text only", max_tokens=12, temperature=0.1))
    assert (model.calls[-1].model, model.calls[-1].max_tokens, model.calls[-1].temperature) == (
        "gpt-4o-mini", 12, 0.1
    )


# The window itself ---------------------------------------------------------------------


def test_a_plan_carries_system_prompt_context_history_and_message_in_this_order():
    window = ContextWindow(ChatPolicy(max_tokens=100, temperature=0.7), WordCounter())
    conversation = conversation_of(("q one", "a one"), ("q two", "a two"))
    request = ask("r9", "what now", system_prompt="be kind", context="ctx words")
    planned = window.plan(request, conversation, COUNT, not_before="")
    assert [(m.role, m.text) for m in planned.call.messages] == [
        ("system", "be kind"),
        ("system", "Earlier in this conversation:\nctx words"),
        ("user", "q one"), ("assistant", "a one"),
        ("user", "q two"), ("assistant", "a two"),
        ("user", "what now"),
    ]
    assert (planned.call.model, planned.call.max_tokens, planned.call.temperature) == (
        "gpt-4o-mini", 100, 0.7
    )
    assert planned.history_turns == 2
    # 3 to prime the reply, 18 words, 4 per message (7 of them), 100 at most to answer.
    assert planned.estimate == 3 + 18 + 7 * 4 + 100


def test_a_plan_keeps_the_latest_turns_within_both_bounds_and_always_the_message():
    conversation = conversation_of(("q one", "a one"), ("q two", "a two"), ("q three", "a three"))
    by_turns = ContextWindow(ChatPolicy(context_max_turns=2), WordCounter())
    planned = by_turns.plan(ask("r9", "next"), conversation, COUNT, "")
    assert planned.history_turns == 2
    assert [m.text for m in planned.call.messages] == [
        "q two", "a two", "q three", "a three", "next"
    ]
    # "next" takes 1 + 4 of 24 tokens; a turn takes 2 + 2 + 2 * 4 = 12: one fits.
    by_tokens = ContextWindow(ChatPolicy(context_max_tokens=24), WordCounter())
    assert by_tokens.history_room(ask("r9", "next"), None, COUNT) == 19
    planned = by_tokens.plan(ask("r9", "next"), conversation, COUNT, "")
    assert planned.history_turns == 1
    assert [m.text for m in planned.call.messages] == ["q three", "a three", "next"]
    tiny = ContextWindow(ChatPolicy(context_max_tokens=5), WordCounter())
    planned = tiny.plan(ask("r9", "next", system_prompt="be kind"), conversation, COUNT, "")
    assert planned.history_turns == 0
    assert [(m.role, m.text) for m in planned.call.messages] == [
        ("system", "be kind"), ("user", "next")
    ]


def test_a_plan_puts_the_summary_first_and_only_the_turns_after_it():
    conversation = conversation_of(("q one", "a one"), ("q two", "a two"), ("q three", "a three"))
    conversation.compact(
        summary="ada likes tea", through_request_id="r1", content_from="2026-01-01T00:00:00.000Z",
        turns_covered=2, model="cheap-model", prompt_tokens=20, completion_tokens=3, cost=None,
        compacted_at="2026-01-01T00:00:00.000Z",
    )
    window = ContextWindow(ChatPolicy(), WordCounter())
    planned = window.plan(ask("r9", "next"), conversation, COUNT, "")
    assert [(m.role, m.text) for m in planned.call.messages] == [
        ("system", "Summary of the earlier conversation:\nada likes tea"),
        ("user", "q three"), ("assistant", "a three"),
        ("user", "next"),
    ]
    assert planned.history_turns == 1
    # The summary's words ("Summary of the earlier conversation:" and three) and
    # overhead come off the room left for turns.
    assert window.history_room(ask("r9", "next"), "ada likes tea", COUNT) == 8000 - 5 - 12


def test_the_model_is_the_one_named_else_the_vision_or_the_text_default():
    window = ContextWindow(ChatPolicy(model="text-model", vision_model="vision-model"),
                           WordCounter())
    assert window.model_for(ask("r1", "hi")) == "text-model"
    assert window.model_for(ask("r1", "hi", images=(PNG,))) == "vision-model"
    assert window.model_for(ask("r1", "hi", images=(PNG,), model="named")) == "named"
    month = ContextWindow(ChatPolicy(retention_days=30), WordCounter())
    assert month.not_before(datetime(2026, 11, 25, 12, tzinfo=UTC)) == "2026-10-26T12:00:00.000Z"


def test_equal_calls_have_one_digest_and_any_difference_changes_it():
    def call(text: str = "hello", role: str = "user", images=(), **fields) -> ModelCall:
        parameters = {"model": "gpt-4o-mini", "max_tokens": 100, "temperature": 0.0, **fields}
        messages = [ChatMessage("system", "be kind"), ChatMessage(role, text, images)]
        return ModelCall(messages=messages, **parameters)

    digest = call_digest(call())
    assert digest == call_digest(call()) and len(digest) == 64
    sent = call()
    sent.progress.sent = True  # how far a call got is not what it asks
    assert call_digest(sent) == digest
    others = [
        call("hello!"), call(role="assistant"), call(images=(PNG,)), call(model="gpt-4.1"),
        call(max_tokens=99), call(temperature=0.5),
    ]
    assert len({digest, *map(call_digest, others)}) == 1 + len(others)
