"""Erasing an address whose compared form changed (domain/addresses.py): what
earlier versions stored for it, under the owner of its legacy form, is erased too
(application/privacy.py)."""

from __future__ import annotations

from uuid import UUID

import pytest

import domain.conversation
from application.privacy import _legacy_owner
from domain.addresses import InvalidAddress, legacy_form
from domain.conversation import ERASED, conversation_id, data_owner
from tests.unit.fakes import ask, make_service, privacy_of, records_with_keys, wire

KARL_IDN = "Karl@B\u00fccher.de"  # legacy "karl@bücher.de", today "karl@xn--bcher-kva.de"
KELVIN = "\u212Aarl@example.com"  # legacy "karl@example.com", the very form of Karl's
KARL = "karl@example.com"


async def said_by_an_earlier_version(service, monkeypatch, request_id, email, message):
    """A turn recorded the way versions before domain.addresses did (legacy form)."""
    with monkeypatch.context() as earlier:
        earlier.setattr(domain.conversation, "compared_or_legacy", legacy_form)
        assert "error" not in await wire(service, ask(request_id, message, user_email=email))


def messages_of(service, cid):
    """What the user said in a conversation, as stored (ERASED once erased)."""
    return [event.message for event in service.records.events.get(cid)
            if type(event).__name__ == "UserMessageReceived"]


async def test_erasure_also_erases_what_earlier_versions_stored_under_the_legacy_form(monkeypatch):
    service, _ = make_service(records=records_with_keys())
    await said_by_an_earlier_version(service, monkeypatch, "old-1", KARL_IDN, "my PIN is 4711")
    [old] = service.records.data_keys.conversations_of(_legacy_owner(KARL_IDN))
    assert old != str(conversation_id(KARL_IDN))  # found no more by its address
    assert messages_of(service, UUID(old)) == ["my PIN is 4711"]
    assert "error" not in await wire(service, ask("new-1", "my PIN is 4712", user_email=KARL_IDN))
    await wire(service, ask("bob-1", "bob's own words", user_email="bob@example.com"))

    erasure = await privacy_of(service, None).erase_user(KARL_IDN, "dpo")

    assert sorted(erasure.conversation_ids) == sorted([old, str(conversation_id(KARL_IDN))])
    assert erasure.keys_destroyed == 2  # one a day for each owner
    assert messages_of(service, UUID(old)) == [ERASED]
    assert messages_of(service, conversation_id(KARL_IDN)) == [ERASED]
    assert messages_of(service, conversation_id("bob@example.com")) == ["bob's own words"]


async def test_the_legacy_form_of_a_look_alike_is_the_ascii_users_own_and_is_left_to_them(
    monkeypatch,
):
    # Earlier versions merged the Kelvin sign with k: both spoke in Karl's conversation.
    service, _ = make_service(records=records_with_keys())
    await wire(service, ask("karl-1", "karl's words", user_email=KARL))
    await said_by_an_earlier_version(service, monkeypatch, "kelvin-1", KELVIN, "kelvin's words")
    assert messages_of(service, conversation_id(KARL)) == ["karl's words", "kelvin's words"]
    assert "error" not in await wire(service, ask("kelvin-2", "apart now", user_email=KELVIN))
    assert messages_of(service, conversation_id(KELVIN)) == ["apart now"]

    erasure = await privacy_of(service, None).erase_user(KELVIN, "dpo")

    # Karl's data is Karl's today: a look-alike's erasure request must not destroy it.
    assert erasure.conversation_ids == [str(conversation_id(KELVIN))]
    assert messages_of(service, conversation_id(KELVIN)) == [ERASED]
    assert messages_of(service, conversation_id(KARL)) == ["karl's words", "kelvin's words"]
    # Karl's own erasure request erases the conversation they shared then.
    await privacy_of(service, None).erase_user(KARL, "dpo")
    assert messages_of(service, conversation_id(KARL)) == [ERASED, ERASED]


async def test_an_ascii_address_erases_its_own_owner_only(monkeypatch):
    service, _ = make_service(records=records_with_keys())
    await wire(service, ask("karl-1", "karl's words", user_email=KARL))
    await wire(service, ask("kelvin-1", "kelvin's words", user_email=KELVIN))

    erasure = await privacy_of(service, None).erase_user(" KARL@example.com", "dpo")

    assert erasure.conversation_ids == [str(conversation_id(KARL))]
    assert messages_of(service, conversation_id(KARL)) == [ERASED]
    assert messages_of(service, conversation_id(KELVIN)) == ["kelvin's words"]


@pytest.mark.parametrize("refused", ["ada\ud800@example.com", "ada", "ada\x07@example.com"])
async def test_an_address_no_version_took_is_raised_before_anything_is_erased(monkeypatch, refused):
    service, _ = make_service(records=records_with_keys())
    await said_by_an_earlier_version(service, monkeypatch, "r1", "ada@\u2603.example.com", "hi")
    with pytest.raises(InvalidAddress):
        await privacy_of(service, None).erase_user(refused, "dpo")
    assert messages_of(service, conversation_id("ada@\u2603.example.com")) == ["hi"]


async def test_an_address_refused_today_but_taken_before_is_erased_under_its_older_form(
    monkeypatch,
):
    service, _ = make_service(records=records_with_keys())
    await said_by_an_earlier_version(service, monkeypatch, "r1", "Ada@\u2603.example.com", "hi")
    erasure = await privacy_of(service, None).erase_user("ada@\u2603.example.com", "dpo")
    assert erasure.conversation_ids == [str(conversation_id("ada@\u2603.example.com"))]
    assert messages_of(service, conversation_id("ada@\u2603.example.com")) == [ERASED]


async def test_a_look_alike_with_an_international_domain_leaves_the_older_owner_too(monkeypatch):
    # "\u212Aarl@Bücher.de" was "karl@bücher.de" to earlier versions, and so was Karl
    # at that domain: that older data is Karl's as much, and left to Karl.
    service, _ = make_service(records=records_with_keys())
    await said_by_an_earlier_version(service, monkeypatch, "k1", KARL_IDN, "karl's old words")
    [old] = service.records.data_keys.conversations_of(_legacy_owner(KARL_IDN))
    erasure = await privacy_of(service, None).erase_user("\u212Aarl@B\u00fccher.de", "dpo")
    assert old not in erasure.conversation_ids
    assert messages_of(service, UUID(old)) == ["karl's old words"]


def test_the_legacy_owner_is_the_owner_earlier_versions_computed():
    for address in [KARL, "Grace.Hopper@Example.com"]:  # unchanged for ASCII addresses
        assert _legacy_owner(address) == data_owner(address)
    assert _legacy_owner(KARL_IDN) != data_owner(KARL_IDN)
    assert _legacy_owner(KELVIN) == data_owner(KARL) != data_owner(KELVIN)
