"""Sharing replies (application/reply_sharing.py): identical deterministic calls get
one reply, from the response cache or from the identical call in flight
(single-flight), within each follower's own deadline."""

import asyncio

from application.chat_policy import ChatPolicy
from application.context_window import call_digest
from application.ports import ChatMessage, ModelCall, ModelError, ModelReply
from application.reply_sharing import Lead, ReplySharing, Share
from domain.conversation import conversation_id, data_owner
from tests.unit.fakes import (
    FakeModel,
    MemoryCache,
    ask,
    event_names,
    make_service,
    privacy_of,
    records_with_keys,
    used_tokens,
    wire,
)

FOUR = ModelReply("4", "gpt-4o-mini", 3, 1)


def call_at(temperature: float) -> ModelCall:
    return ModelCall("gpt-4o-mini", [ChatMessage("user", "2+2?")], 100, temperature)


# Through the service -----------------------------------------------------------------


async def test_a_repeated_deterministic_request_is_answered_from_the_cache_for_free():
    cache = MemoryCache()
    service, model = make_service(service_parts={"cache": cache})
    first = await wire(service, ask("r1", "capital of France?", temperature=0.0, conversation_id="a"))
    await service.close()  # settles the budget lease
    spent = used_tokens(service)
    again = await wire(service, ask("r2", "capital of France?", temperature=0.0, conversation_id="b"))
    assert len(model.calls) == 1
    assert again["response"] == first["response"] and again["cached"] is True
    assert "cached" not in first
    assert again["cost_usd"] == 0.0 and again["usage"]["total_tokens"] == 0
    await service.close()
    assert used_tokens(service) == spent  # the budget was not charged
    assert event_names(service, thread="b") == ["Started", "UserMessageReceived", "ReplyRecorded"]
    recorded = service.records.events.get(conversation_id("ada@example.com", "b"))
    assert list(recorded)[-1].source == "cache"


async def test_only_temperature_zero_is_cached_unless_any_temperature_is_allowed():
    cache = MemoryCache()
    service, model = make_service(service_parts={"cache": cache})
    for n in range(2):
        await wire(service, ask(f"r{n}", "tell me a story", temperature=0.7, conversation_id=str(n)))
    assert len(model.calls) == 2 and not cache.entries

    anything, any_model = make_service(service_parts={"cache": MemoryCache()},
                                       cache_any_temperature=True)
    for n in range(2):
        await wire(anything, ask(f"r{n}", "tell me a story", temperature=0.7, conversation_id=str(n)))
    assert len(any_model.calls) == 1


async def test_the_cache_is_per_user_unless_global_and_the_history_must_be_the_same():
    cache = MemoryCache()
    service, model = make_service(service_parts={"cache": cache})
    await wire(service, ask("r1", "2+2?", temperature=0.0))
    await wire(service, ask("r2", "2+2?", temperature=0.0, user_email="bob@example.com"))
    assert len(model.calls) == 2  # another user
    await wire(service, ask("r3", "2+2?", temperature=0.0))
    assert len(model.calls) == 3  # the same user, but the history now differs
    assert {scope for scope, _ in cache.entries} == {
        data_owner("ada@example.com"), data_owner("bob@example.com")
    }

    shared, shared_model = make_service(service_parts={"cache": MemoryCache()}, cache_scope="global")
    await wire(shared, ask("r1", "2+2?", temperature=0.0))
    answer = await wire(shared, ask("r2", "2+2?", temperature=0.0, user_email="bob@example.com"))
    assert len(shared_model.calls) == 1 and answer["cached"] is True


async def test_a_cache_outage_is_a_miss_and_erasure_forgets_the_users_entries():
    cache = MemoryCache()
    service, model = make_service(service_parts={"cache": cache}, records=records_with_keys())
    cache.down = True
    for n in range(2):
        answer = await wire(service, ask(f"r{n}", "hi", temperature=0.0, conversation_id=str(n)))
        assert "error" not in answer
    assert len(model.calls) == 2
    cache.down = False
    await wire(service, ask("r3", "hi", temperature=0.0, conversation_id="3"))
    assert cache.entries
    erasure = await privacy_of(service, cache).erase_user("Ada@Example.com", "dpo")
    assert erasure.replies_dropped == 1 and not cache.entries


async def test_identical_requests_in_flight_at_once_share_one_model_call():
    model = FakeModel(delay=0.05)
    service, _ = make_service(model)
    answers = await asyncio.gather(*(
        wire(service, ask(f"r{n}", "same question", temperature=0.0, conversation_id=str(n)))
        for n in range(5)
    ))
    assert len(model.calls) == 1
    assert {a["response"] for a in answers} == {"answer to same question"}
    assert sorted(a.get("cached", False) for a in answers) == [False, True, True, True, True]
    assert sum(a["usage"]["total_tokens"] for a in answers) == answers[0]["usage"]["total_tokens"] or \
        len([a for a in answers if a["usage"]["total_tokens"]]) == 1
    await service.close()
    assert used_tokens(service) == max(a["usage"]["total_tokens"] for a in answers)


async def test_when_the_shared_call_fails_each_request_asks_on_its_own():
    model = FakeModel(delay=0.05)
    model.script = [ModelError("content_filter", "no")]
    service, _ = make_service(model)
    answers = await asyncio.gather(*(
        wire(service, ask(f"r{n}", "same question", temperature=0.0, conversation_id=str(n)))
        for n in range(3)
    ))
    assert [a.get("error", {}).get("type") for a in answers].count("content_filter") == 1
    assert sum("response" in a for a in answers) == 2
    assert len(model.calls) == 2  # the leader's, then one shared by the other two


async def test_a_follower_does_not_wait_past_its_own_deadline():
    from adapters.system_clock import SystemClock

    model = FakeModel(delay=0.5)
    service, _ = make_service(model)
    service.clock = SystemClock()  # deadlines pass in real time here
    now = service.clock.now().timestamp()
    leader = asyncio.ensure_future(wire(service, 
        ask("slow", "same question", temperature=0.0, conversation_id="a")))
    await asyncio.sleep(0.05)
    follower = await asyncio.wait_for(wire(service, ask(
        "hurried", "same question", temperature=0.0, conversation_id="b", deadline=now + 0.1
    )), timeout=0.4)
    assert follower["error"]["type"] == "upstream_error"
    assert "deadline" in follower["error"]["message"]
    assert (await leader)["response"] == "answer to same question"
    assert len(model.calls) == 1


# Sharing itself ------------------------------------------------------------------------


def test_only_a_deterministic_call_is_shared_and_by_its_user_unless_global():
    sharing = ReplySharing(ChatPolicy())
    request = ask("r1", "2+2?")
    assert sharing.share_of(request, call_at(0.7)) is None
    share = sharing.share_of(request, call_at(0.0))
    ada = data_owner("ada@example.com")
    assert share == Share(ada, call_digest(call_at(0.0)))
    assert share.flight == f"{ada}/{call_digest(call_at(0.0))}"
    bob = sharing.share_of(ask("r1", "2+2?", user_email="Bob@Example.com"), call_at(0.0))
    assert bob == Share(data_owner("bob@example.com"), share.digest) and bob.scope != ada
    everyone = ReplySharing(ChatPolicy(cache_scope="global"))
    assert everyone.share_of(request, call_at(0.0)) == Share("global", share.digest)
    anything = ReplySharing(ChatPolicy(cache_any_temperature=True))
    assert anything.share_of(request, call_at(0.7)) == Share(ada, call_digest(call_at(0.7)))


async def test_the_first_caller_leads_and_a_follower_takes_the_reply_it_lands():
    cache = MemoryCache()
    sharing = ReplySharing(ChatPolicy(), cache)
    share = Share("owner", "digest")
    leader = await sharing.lead(share, lambda: None)
    assert leader.flight is not None and leader.reply is None
    following = asyncio.ensure_future(sharing.lead(share, lambda: None))
    await asyncio.sleep(0.01)
    assert not following.done()  # waiting for the leader's reply
    await sharing.land(share, leader, FOUR, keep=True)
    assert await following == Lead(reply=FOUR)
    assert cache.entries == {("owner", "digest"): FOUR}
    assert await sharing.find(share, None) == (FOUR, "cache")
    # A reply not worth keeping is shared with those waiting, but not cached.
    other = Share("owner", "other")
    leader = await sharing.lead(other, lambda: None)
    following = asyncio.ensure_future(sharing.lead(other, lambda: None))
    await asyncio.sleep(0.01)
    await sharing.land(other, leader, FOUR, keep=False)
    assert (await following).reply == FOUR and ("owner", "other") not in cache.entries


async def test_a_follower_out_of_time_gets_neither_and_a_failed_flight_leaves_nothing():
    sharing = ReplySharing(ChatPolicy(), MemoryCache())
    share = Share("owner", "digest")
    leader = await sharing.lead(share, lambda: None)
    assert await sharing.lead(share, lambda: 0.0) == Lead()
    await sharing.land(share, leader, None, keep=True)  # the leader's call failed
    assert await sharing.find(share, None) is None  # nothing in flight, nothing cached
    assert (await sharing.lead(share, lambda: None)).flight is not None  # the next one leads


async def test_forgetting_a_user_drops_their_cached_replies_only():
    cache = MemoryCache()
    ada, bob = data_owner("ada@example.com"), data_owner("bob@example.com")
    cache.entries = {(ada, "d1"): FOUR, (ada, "d2"): FOUR, (bob, "d1"): FOUR}
    service, _ = make_service(records=records_with_keys())
    erasure = await privacy_of(service, cache).erase_user(" Ada@Example.com", "dpo")
    assert erasure.replies_dropped == 2
    assert list(cache.entries) == [(bob, "d1")]
    nothing = await privacy_of(service, None).erase_user("bob@example.com", "dpo")
    assert nothing.replies_dropped == 0  # no cache
