"""One person, one address (domain/addresses.py): addresses are compared in a form
that keeps distinct people distinct, and equal only what mail systems treat alike."""

from __future__ import annotations

import unicodedata

import pytest

from application.contract import EMAIL_SHAPE
from domain.addresses import InvalidAddress, legacy_form, normalise_email
from domain.conversation import Conversation, conversation_id, data_owner
from domain.conversation import compared_or_legacy

# Pairs that look alike, or that str.lower(), casefold() or NFC/NFKC would merge:
# different mailboxes, so different people.
APART = [
    ("\u212Aarl@example.com", "karl@example.com"),  # KELVIN SIGN vs k
    ("\u212Aarl@example.com", "Karl@example.com"),
    ("ro\u017Fa@example.com", "rosa@example.com"),  # LATIN SMALL LETTER LONG S vs s
    ("\u0131da@example.com", "ida@example.com"),  # LATIN SMALL LETTER DOTLESS I vs i
    ("\u0130da@example.com", "ida@example.com"),  # CAPITAL I WITH DOT ABOVE vs i
    ("\uff4barl@example.com", "karl@example.com"),  # FULLWIDTH k vs k
    ("\uff2barl@example.com", "karl@example.com"),  # FULLWIDTH K vs k
    ("\u0430da@example.com", "ada@example.com"),  # CYRILLIC а vs Latin a
    ("\u212Bsa@example.com", "\u00c5sa@example.com"),  # ANGSTROM SIGN vs Å
    ("\u212Bsa@example.com", "\u00e5sa@example.com"),  # ANGSTROM SIGN vs å
    ("\u00e9lise@example.com", "e\u0301lise@example.com"),  # NFC é vs NFD e + acute
    ("\u00c9lise@example.com", "\u00e9lise@example.com"),  # non-ASCII case is kept
    ("stra\u00dfe@example.com", "strasse@example.com"),  # ß vs ss
    ("ada@fa\u00df.de", "ada@fass.de"),  # IDNA 2008, non-transitional: two domains
    ("ada@ex\u0430mple.com", "ada@example.com"),  # a Cyrillic а in the domain
]

# Pairs that are the same mailbox.
SAME = [
    ("Karl@Example.COM", "karl@example.com"),  # ASCII case, as every version did
    ("ada@EXAMPLE.com", "ada@example.com"),  # DNS names are case-insensitive
    ("  ada@example.com\t\n", "ada@example.com"),  # surrounding whitespace
    ("ada@B\u00fccher.de", "ada@xn--bcher-kva.de"),  # U-label vs A-label
    ("ada@B\u00dcCHER.de", "ada@b\u00fccher.de"),
    ("ada@XN--BCHER-KVA.DE", "ada@b\u00fccher.de"),
    ("\u00e9lise@B\u00fccher.de", "\u00e9lise@xn--bcher-kva.de"),
]


@pytest.mark.parametrize(("one", "other"), APART)
def test_look_alikes_stay_apart_with_their_conversations_and_data(one, other):
    assert normalise_email(one) != normalise_email(other)
    assert conversation_id(one) != conversation_id(other)
    assert conversation_id(one, "t1") != conversation_id(other, "t1")
    assert data_owner(one) != data_owner(other)


@pytest.mark.parametrize(("one", "other"), SAME)
def test_the_same_mailbox_is_one_address(one, other):
    assert normalise_email(one) == normalise_email(other)
    assert conversation_id(one) == conversation_id(other)
    assert data_owner(one) == data_owner(other)


def test_the_local_part_is_kept_as_sent_but_for_ascii_case():
    local = "\u212A\u00c9e\u0301\u0130\uff21Z"
    assert normalise_email(f"{local}@example.com") == "\u212A\u00c9e\u0301\u0130\uff21z@example.com"
    assert unicodedata.is_normalized("NFC", "e\u0301") is False  # not normalised


def test_the_domain_is_its_lower_case_a_label_and_a_form_normalises_to_itself():
    assert normalise_email("Ada@B\u00dcCHER.De") == "ada@xn--bcher-kva.de"
    assert normalise_email("ada@\u00fc.example.\u0441\u0430\u0439\u0442") == normalise_email(
        "ada@xn--tda.example.xn--80aswg")
    for one, other in APART + SAME:
        for address in (one, other):
            assert normalise_email(normalise_email(address)) == normalise_email(address)


def test_ascii_addresses_compare_as_every_earlier_version_compared_them():
    for address in ["Grace.Hopper@Example.com", " ada@example.com", "a+tag@sub.example.co.uk",
                    "x@b..c", "x@-b.com", "x@b_c.com", "x@[192.0.2.1]", "x@xn--zz.com"]:
        assert EMAIL_SHAPE.match(address.strip())
        assert normalise_email(address) == legacy_form(address) == address.strip().lower()


@pytest.mark.parametrize("address", [
    "ada@\u2603.net",  # a snowman: IDNA 2008 refuses the label
    "ada@b\u00fc_cher.de",  # an underscore in an internationalised domain
    "ada@xn--zz.b\u00fccher.de",  # a broken A-label beside a U-label
    "ada@b\u00fccher..de",  # an empty label
    "ada@" + "\u00fc" * 64 + ".de",  # a label too long
    "ada\ud800@example.com",  # a lone surrogate
    "ada@exa\udfffmple.com",
    "ada\x00@example.com",  # control characters
    "ada@example.com\x7f",
    "ada\x85x@example.com",
    "ada @example.com",  # whitespace inside
    "ada\u00a0@example.com",
    "ada@exam\u3000ple.com",
    "ada.example.com",  # no @
    "@example.com",  # empty parts
    "ada@",
    "@",
    "   ",
    "",
    "a" * 243 + "@example.com",  # 255 characters
    "a" * 215 + "@" + "".join(chr(0x4E00 + n * 97) for n in range(18)) + ".de",  # 237
    # characters, but 270 in its A-label form
])
def test_refused_addresses_raise_a_message_that_never_quotes_them(address):
    with pytest.raises(InvalidAddress) as refused:
        normalise_email(address)
    message = str(refused.value)
    assert "ada" not in message and "example" not in message and "\u00fc" not in message
    assert isinstance(refused.value, ValueError)


def test_an_address_of_254_characters_is_accepted():
    address = "a" * 242 + "@example.com"
    assert len(address) == 254 and normalise_email(address) == address


def test_not_text_is_refused():
    with pytest.raises(InvalidAddress):
        normalise_email(None)  # type: ignore[arg-type]


def test_legacy_form_is_what_earlier_versions_compared():
    assert legacy_form(" \u212Aarl@Example.com ") == "karl@example.com"
    assert legacy_form("Ada@B\u00dcCHER.de") == "ada@b\u00fccher.de"
    assert legacy_form("\u212Bsa@example.com") == "\u00e5sa@example.com"


def test_conversation_ids_of_ascii_addresses_did_not_change():
    from uuid import uuid5

    from domain.conversation import CONVERSATION_NAMESPACE

    for address in ["Grace.Hopper@Example.com", "ada@example.com"]:
        assert conversation_id(address, "t") == uuid5(
            CONVERSATION_NAMESPACE, f"{address.lower()}\nt")


def test_a_stored_address_the_rule_refuses_replays_in_its_legacy_form():
    # An earlier version stored this address (its contract only checked the shape).
    stored = "Ada@\u2603.Example.com"
    assert compared_or_legacy(stored) == legacy_form(stored)
    conversation = Conversation(stored)  # the Started event, replayed just the same
    assert conversation.user_email == "ada@\u2603.example.com"
    copy = None
    for event in conversation.collect_events():
        copy = event.mutate(copy)
    assert copy.user_email == "ada@\u2603.example.com" and copy.id == conversation.id
    assert data_owner(stored) == data_owner(legacy_form(stored))


def test_a_conversation_keeps_the_compared_address():
    assert Conversation("\u212Aarl@Example.com").user_email == "\u212Aarl@example.com"
    assert Conversation("Karl@B\u00fccher.de").user_email == "karl@xn--bcher-kva.de"
