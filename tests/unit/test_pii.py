"""Masking sessions: placeholders, one mapping per model call, the way back.

These tests use a scripted detector (tests/unit/fakes.py), so they are about
application/pii.py alone; the library detector is tested in test_pii_detector.py.
"""

from __future__ import annotations

import pytest

from application.pii import (
    CARD,
    EMAIL,
    IBAN,
    PHONE,
    Detection,
    PiiMasker,
    PiiSession,
    resolve_overlaps,
)
from tests.unit.fakes import ScriptedDetector

ADA = "ada@example.com"
BOB = "bob@example.org"
PHONE_ADA = "+44 20 7946 0958"
DETECTOR = ScriptedDetector({ADA: EMAIL, BOB: EMAIL, PHONE_ADA: PHONE,
                             "DE89 3704 0044 0532 0130 00": IBAN})


def new_session() -> PiiSession:
    return PiiMasker(DETECTOR).session()


def test_values_become_numbered_placeholders_per_type():
    session = new_session()
    masked = session.mask(f"Write to {ADA} or {BOB}, or call {PHONE_ADA}.")
    assert masked == "Write to [EMAIL_1] or [EMAIL_2], or call [PHONE_1]."
    assert session.found == {EMAIL: 2, PHONE: 1}


def test_one_mapping_for_every_text_of_a_call():
    session = new_session()
    system, history, message = session.mask_all([
        f"The user is {ADA}.",
        f"Earlier: {BOB} wrote to {ADA}.",
        f"Please answer {BOB}, and copy {ADA}.",
    ])
    assert system == "The user is [EMAIL_1]."
    assert history == "Earlier: [EMAIL_2] wrote to [EMAIL_1]."
    assert message == "Please answer [EMAIL_2], and copy [EMAIL_1]."
    assert session.found == {EMAIL: 5}


def test_every_session_starts_afresh():
    first, second = new_session(), new_session()
    assert first.mask(f"{BOB} {ADA}") == "[EMAIL_1] [EMAIL_2]"
    assert second.mask(f"{ADA} {BOB}") == "[EMAIL_1] [EMAIL_2]"
    assert second.unmask("[EMAIL_1]") == ADA


def test_mask_then_unmask_gives_the_original_texts():
    texts = [f"Mail {ADA}, phone {PHONE_ADA}.", f"IBAN DE89 3704 0044 0532 0130 00 of {BOB}",
             "nothing personal here", ""]
    session = new_session()
    masked = session.mask_all(texts)
    assert ADA not in " ".join(masked) and PHONE_ADA not in " ".join(masked)
    assert [session.unmask(text) for text in masked] == texts


def test_the_placeholders_in_the_reply_are_put_back():
    session = new_session()
    session.mask(f"My address is {ADA} and my phone {PHONE_ADA}.")
    reply = "I will write to [EMAIL_1] and, failing that, call [PHONE_1]."
    assert session.unmask(reply) == f"I will write to {ADA} and, failing that, call {PHONE_ADA}."


@pytest.mark.parametrize("written", ["[email_1]", "[Email_1]", "\\[EMAIL_1\\]", "[ EMAIL_1 ]"])
def test_placeholders_the_model_rewrote_are_put_back_too(written):
    session = new_session()
    session.mask(f"Mail {ADA}")
    assert session.unmask(f"Sure, {written}.") == f"Sure, {ADA}."


def test_placeholders_the_session_did_not_give_stay_as_they_are():
    session = new_session()
    session.mask(f"Mail {ADA}")
    reply = "[EMAIL_2], [PHONE_1], [NAME_1], [EMAIL_10] and [EMAIL_1]"
    assert session.unmask(reply) == f"[EMAIL_2], [PHONE_1], [NAME_1], [EMAIL_10] and {ADA}"


def test_bare_identifiers_are_not_placeholders():
    session = new_session()
    session.mask(f"Mail {ADA}")
    code = "EMAIL_1 = load(); email_1.send(); MY_EMAIL_1"
    assert session.unmask(code) == code


def test_a_literal_placeholder_in_the_users_text_survives_the_round_trip():
    text = f"In my template, [EMAIL_1] stands for the recipient, who is {ADA}."
    session = new_session()
    masked = session.mask(text)
    # The literal keeps its number; the real address gets another one.
    assert masked == "In my template, [EMAIL_1] stands for the recipient, who is [EMAIL_2]."
    assert session.unmask(masked) == text
    # The model talking about the literal gets the literal back, not the address.
    assert session.unmask("Replace [EMAIL_1] by [EMAIL_2].") == f"Replace [EMAIL_1] by {ADA}."


def test_a_literal_after_its_number_was_given_is_masked_and_comes_back():
    # One text at a time: the history gave [EMAIL_1] to an address before the new
    # message, which contains "[EMAIL_1]" literally, was seen.
    session = new_session()
    history = session.mask(f"From {ADA}")
    message = session.mask("What does [EMAIL_1] mean in my template? And [email_1]?")
    assert history == "From [EMAIL_1]"
    assert "[EMAIL_1]" not in message and "[email_1]" not in message
    assert session.unmask(message) == "What does [EMAIL_1] mean in my template? And [email_1]?"
    assert session.unmask(history) == f"From {ADA}"
    # The same literal again gets the same placeholder.
    assert session.mask("[EMAIL_1]") == session.mask("[EMAIL_1]")


def test_mask_all_reserves_the_literals_of_every_text_first():
    session = new_session()
    history, message = session.mask_all([f"From {ADA}", "What does [EMAIL_1] mean?"])
    assert history == "From [EMAIL_2]"
    assert message == "What does [EMAIL_1] mean?"
    assert session.unmask(f"{history} / {message}") == f"From {ADA} / What does [EMAIL_1] mean?"


def test_a_value_next_to_a_literal_placeholder():
    text = f"[EMAIL_1]{ADA}[EMAIL_2]"
    session = new_session()
    masked = session.mask(text)
    assert masked == "[EMAIL_1][EMAIL_3][EMAIL_2]"
    assert session.unmask(masked) == text


def test_texts_without_personal_data_are_returned_unchanged():
    session = new_session()
    for text in ["", "Just a question about Python 3.11.", "Order 123456789, [NOTE_1]"]:
        assert session.mask(text) == text
        assert session.unmask(text) == text
    assert session.found == {}


def test_unicode_around_the_values():
    text = f"Grüße 👋 — schreib an «{ADA}» oder ruf 電話 {PHONE_ADA} an. Ünïcödé!"
    session = new_session()
    masked = session.mask(text)
    assert masked == "Grüße 👋 — schreib an «[EMAIL_1]» oder ruf 電話 [PHONE_1] an. Ünïcödé!"
    assert session.unmask(masked) == text


def test_contains_pii_and_found_in():
    masker = PiiMasker(DETECTOR)
    assert masker.contains_pii("hello", f"mail {ADA}")
    assert not masker.contains_pii("hello", "", "order 12345")
    assert masker.found_in(f"{ADA} {BOB}", PHONE_ADA) == {EMAIL: 2, PHONE: 1}
    assert masker.detect("") == []


def test_overlapping_detections_keep_the_stronger_type_then_the_longer_span():
    iban = Detection(IBAN, 10, 37, "x" * 27)
    phone_inside = Detection(PHONE, 15, 29, "y" * 14)
    card = Detection(CARD, 40, 59, "z" * 19)
    phone_across = Detection(PHONE, 35, 45, "w" * 10)
    short_phone = Detection(PHONE, 60, 66, "v" * 6)
    long_phone = Detection(PHONE, 60, 72, "u" * 12)
    kept = resolve_overlaps([phone_inside, short_phone, iban, phone_across, long_phone, card])
    assert kept == [iban, card, long_phone]


def test_a_detector_that_returns_overlaps_does_not_garble_the_text():
    class Sloppy:
        def detect(self, text):
            return [Detection(PHONE, 0, 5, text[0:5]), Detection(PHONE, 3, 8, text[3:8])]

    session = PiiMasker(Sloppy()).session()
    masked = session.mask("0123456789")
    assert masked == "[PHONE_1]56789"
    assert session.unmask(masked) == "0123456789"
