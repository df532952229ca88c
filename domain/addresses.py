"""E-mail addresses as the service compares them: one person, one address.

An address decides a user's conversations (their ids) and whose data keys hold
their words (the data owner, destroyed on erasure). Two addresses that compare
equal share all of that, so only what mail systems themselves treat as the same
mailbox is made equal:

- surrounding whitespace is not part of the address;
- the local part (before the last "@") is compared as sent, except that the ASCII
  letters A-Z are lower-cased (every earlier version lower-cased, and mail
  providers treat ASCII case alike, so ASCII addresses keep their conversations);
  no other character is case-folded or Unicode-normalised: U+212A KELVIN SIGN is
  not "k", U+017F LONG S is not "s", U+0131 DOTLESS I is not "i", fullwidth letters
  are not ASCII letters, Cyrillic "а" is not Latin "a", U+212B ANGSTROM SIGN is not
  "Å", and a decomposed "é" (e + U+0301) is not the precomposed one. Mail systems
  deliver to such local parts as they are; folding them (str.lower, casefold, NFC
  or NFKC, which maps the Kelvin and Angstrom signs to K and Å) would hand one
  person's conversation to another;
- the domain is a DNS name: case-insensitive, and an internationalised name is the
  same domain as its A-label. A domain with non-ASCII characters is converted by
  IDNA 2008 with the UTS #46 mapping (non-transitional: "faß.de" stays apart from
  "fass.de") to its lower-case A-label, so "Bücher.de", "BÜCHER.de" and
  "xn--bcher-kva.de" are one domain; one IDNA refuses is refused. An all-ASCII
  domain is only lower-cased, as before (it is already in the form IDNA would give,
  and one that IDNA would not take, an address literal say, stays accepted).

Refused (InvalidAddress): an address without a local part or a domain, over 254
characters (as sent or in the compared form), with whitespace or control
characters inside, or that is not valid text (lone surrogates). The messages never
quote the address. Normalising a compared form again changes nothing.

Versions before this rule compared `address.strip().lower()` (`legacy_form`): data
they stored for an address with non-ASCII characters sits under that form, which
may be shared with a look-alike (application/privacy.py erases it with the user).
"""

from __future__ import annotations

import functools
import unicodedata

import idna

MAX_LENGTH = 254  # characters, as the contract's EMAIL_SHAPE counts them

_ASCII_UPPER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class InvalidAddress(ValueError):
    """An address that cannot be compared; the message is safe to show the sender
    (it never quotes the address)."""


# Every request normalises its address several times (its conversation, its data
# owner, each event's key): the forms of the addresses seen lately are kept.
@functools.lru_cache(maxsize=10_000)
def normalise_email(address: str) -> str:
    """The form in which addresses are compared (see the module's docstring); raise
    InvalidAddress for one that is refused."""
    if not isinstance(address, str):
        raise InvalidAddress("the address must be text")
    address = address.strip()
    try:
        address.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        raise InvalidAddress("the address is not valid text") from None
    if len(address) > MAX_LENGTH:
        raise InvalidAddress(f"the address is longer than {MAX_LENGTH} characters")
    if any(char.isspace() or unicodedata.category(char) == "Cc" for char in address):
        raise InvalidAddress("the address contains whitespace or control characters")
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise InvalidAddress("the address needs a local part, an @ and a domain")
    compared = f"{local.translate(_ASCII_UPPER)}@{_domain(domain)}"
    # An A-label may make it longer; refused then too, so that normalising the
    # compared form again changes nothing.
    if len(compared) > MAX_LENGTH:
        raise InvalidAddress(f"the address is longer than {MAX_LENGTH} characters")
    return compared


def legacy_form(address: str) -> str:
    """The form every version before `normalise_email` compared addresses in (to find
    the data they stored). Not for new comparisons: it merges look-alikes."""
    return address.strip().lower()


def _domain(domain: str) -> str:
    """A domain in the form DNS compares it in: its lower-case ASCII (A-label) form."""
    if domain.isascii():
        return domain.translate(_ASCII_UPPER)
    try:
        return idna.encode(domain, uts46=True, transitional=False).decode("ascii").lower()
    except (idna.IDNAError, UnicodeError, ValueError):  # never quoted: it names the label
        raise InvalidAddress("the address's domain is not a valid domain name") from None
