"""PII_MODE on model calls (application/call_masking.py): personal data masked on the
way out and put back in the reply, refused in block mode, left alone when off."""

from application.call_masking import CallMasking
from application.pii import EMAIL, PiiMasker
from application.ports import ChatMessage, ModelCall, ModelReply
from domain.conversation import conversation_id
from tests.unit.fakes import ScriptedDetector, ask, make_service, wire

GRACE = "grace@example.com"


def call_of(system: str, message: str) -> ModelCall:
    return ModelCall("gpt-4o-mini", [ChatMessage("system", system), ChatMessage("user", message)],
                     100, 0.7)


# Through the service (with the library detector) -------------------------------------


def _with_pii(mode: str):
    from adapters.pii_detector import LibraryPiiDetector
    from application.pii import PiiMasker

    return make_service(pii_mode=mode, service_parts={"pii": PiiMasker(LibraryPiiDetector())})


ADDRESSED = "write to grace@example.com or call +44 20 7946 0958"


async def test_personal_data_is_masked_for_the_model_and_put_back_for_the_user():
    service, model = _with_pii("mask")
    model.script.append(ModelReply("I will write to [EMAIL_1] and call [PHONE_1].", "gpt-4o-mini", 10, 5))
    answer = await wire(service, ask("r1", ADDRESSED, system_prompt="reply to grace@example.com"))
    sent = " ".join(m.text for m in model.calls[-1].messages)
    assert "grace@example.com" not in sent and "7946" not in sent
    assert sent.count("[EMAIL_1]") == 2 and "[PHONE_1]" in sent  # one mapping for the call
    assert answer["response"] == "I will write to grace@example.com and call +44 20 7946 0958."
    # The history keeps what the user wrote; the next call masks it again.
    await wire(service, ask("r2", "and again?"))
    history = " ".join(m.text for m in model.calls[-1].messages)
    assert "grace@example.com" not in history and "[EMAIL_1]" in history


async def test_personal_data_is_refused_in_block_mode_before_the_model_or_the_store():
    service, model = _with_pii("block")
    refused = await wire(service, ask("r1", ADDRESSED))
    assert refused["error"]["type"] == "pii_rejected"
    assert "email" in refused["error"]["message"] and "grace" not in refused["error"]["message"]
    assert model.calls == []
    events = list(service.records.events.get(conversation_id("ada@example.com")))
    assert [type(e).__name__ for e in events] == ["Started", "RequestFailed"]  # nothing of it kept
    assert (await wire(service, ask("r2", "no personal data here")))["response"]


# The masking itself (with a scripted detector) -----------------------------------------


async def test_off_leaves_the_call_as_it_is_and_finds_nothing():
    detector = ScriptedDetector({GRACE: EMAIL})
    off = CallMasking(PiiMasker(detector), "off")
    call = call_of(f"reply to {GRACE}", f"write to {GRACE}")
    masked, session = await off.mask(call)
    assert masked is call and session is None
    assert await off.found_in(f"write to {GRACE}") == {}
    assert not off.blocks and detector.calls == 0


def test_only_block_mode_with_a_detector_blocks():
    masker = PiiMasker(ScriptedDetector({GRACE: EMAIL}))
    assert CallMasking(masker, "block").blocks
    assert not CallMasking(masker, "mask").blocks
    assert not CallMasking(masker, "off").blocks
    assert not CallMasking(None, "block").blocks


async def test_a_call_is_masked_with_one_mapping_and_the_reply_unmasked():
    masking = CallMasking(PiiMasker(ScriptedDetector({GRACE: EMAIL})), "mask")
    call = call_of(f"reply to {GRACE}", f"write to {GRACE} today")
    masked, session = await masking.mask(call)
    assert [(m.role, m.text) for m in masked.messages] == [
        ("system", "reply to [EMAIL_1]"), ("user", "write to [EMAIL_1] today")
    ]
    assert (masked.model, masked.max_tokens, masked.temperature) == ("gpt-4o-mini", 100, 0.7)
    assert masked.progress is call.progress  # one call: sent is sent, masked or not
    assert call.messages[1].text == f"write to {GRACE} today"  # the original is untouched
    assert session is not None and session.unmask("I wrote to [EMAIL_1].") == f"I wrote to {GRACE}."
    assert await masking.found_in(f"{GRACE} and {GRACE}", "nothing here") == {EMAIL: 2}
    clean = call_of("be kind", "nothing personal")
    masked, session = await masking.mask(clean)
    assert masked is clean and session is None


async def test_long_texts_are_masked_all_the_same():
    masking = CallMasking(PiiMasker(ScriptedDetector({GRACE: EMAIL})), "mask")
    long_text = "word " * 1000 + GRACE  # searched off the event loop
    masked, session = await masking.mask(call_of("be kind", long_text))
    assert masked.messages[1].text == "word " * 1000 + "[EMAIL_1]"
    assert session is not None and session.found == {EMAIL: 1}
