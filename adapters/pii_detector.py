"""Personal data detection with phonenumbers, python-stdnum and the standard library.

Implements ``application.pii.PiiDetector``. A few patterns find candidates; whether a
candidate is personal data is decided by the libraries:

- PHONE: Google's libphonenumber (the ``phonenumbers`` package, its ``PhoneNumberMatcher``):
  numbers in international form (``+CC`` or ``00CC``) of any country, valid for their
  country (``Leniency.VALID``); and numbers in the national form of one of
  ``DEFAULT_PHONE_REGIONS``, which must also be grouped the way that country writes its
  numbers (``Leniency.STRICT_GROUPING``: "2024-118734" is a valid US number, but nobody
  writes one like that), unless a word before or after them says they are phone
  numbers (in nine languages; the word for "number" too) or an area code stands in
  parentheses. A national number written as one bare run of digits (``612345678``) is
  only taken near such a word: order and customer numbers look just the same; and no
  national number is taken right after a word naming another kind of number (order,
  invoice, routing, IBAN...) unless a phone word stands nearer. An extension (``x41865``,
  ``ext. 753``, ``#12``, ``Durchwahl 12``...) is part of the number. A hyphenated ISBN
  with a valid check digit is not one.
- CARD: the Luhn checksum (``stdnum.luhn``), 13 to 19 digits, with the prefix of a card
  scheme at its length, written bare, in fours or in the issuer's groups (Amex 4-6-5,
  Diners 4-6-4); not after a gift-card or voucher word.
- IBAN: ``stdnum.iban`` (country, length, the country's format, ISO 7064 mod 97), in
  capitals or not, grouped or not; the search goes on where a valid one ended, so
  adjacent IBANs (and cards) are each found.
- NATIONAL_ID: the validators of ``stdnum`` for US SSN, DE Steuer-IdNr, FR NIR,
  ES DNI and NIE, IT codice fiscale, NL BSN, PL PESEL, BR CPF, IN Aadhaar, CH AHV,
  BE national number, PT Cartão de Cidadão and NIF, SE personnummer, and a small
  validator for UK National Insurance numbers. Those whose own shape tells them apart
  (letters, a fixed punctuation, a long checksum) are taken anywhere; those that are a
  bare run of digits near their name (before or after: ``BSN``, ``PESEL``), and those
  with a fair checksum (BSN, PESEL, CPF, Steuer-ID, NIF, Belgian number) without it
  too, unless a word nearby says they are a phone or another kind of number.
- IP: ``ipaddress`` (IPv4 and IPv6). Loopback and unspecified addresses, netmasks and
  versions (``version 12.17.6.20``, ``firmware 16.6.16.13``) are left alone.
- EMAIL: a pattern (local part, ``@``, a domain of dotted labels ending in a TLD).

The recognisers of each kind are in adapters/pii_recognisers.py and
adapters/pii_phone_recogniser.py; this module combines them. Where two detections
overlap, the stronger validator wins (``resolve_overlaps``); a phone-like run of digits
inside an IBAN or a card number is part of it. Everything is local: no data files are
fetched, nothing touches the network. Results are cached per text (every request masks
the conversation's history again).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from phonenumbers import Leniency

from adapters.pii_phone_recogniser import DEFAULT_PHONE_REGIONS, PhoneRecogniser
from adapters.pii_recognisers import (
    CONTEXT_WINDOW,
    NATIONAL_ID_FORMATS,
    NationalIdFormat,
    NationalIdRecogniser,
    find_cards,
    find_emails,
    find_ibans,
    find_ips,
)
from application.pii import Detection, resolve_overlaps

__all__ = [
    "CACHED_TEXT_CHARS",
    "CONTEXT_WINDOW",
    "DEFAULT_PHONE_REGIONS",
    "NATIONAL_ID_FORMATS",
    "LibraryPiiDetector",
    "NationalIdFormat",
]

# Texts up to this length have their detections cached (see LibraryPiiDetector).
CACHED_TEXT_CHARS = 16_384

_DIGIT_RE = re.compile(r"\d")


class LibraryPiiDetector:
    """Finds emails, phone numbers, card numbers, IBANs, national ids and IP addresses."""

    def __init__(self, phone_regions: Sequence[str] = DEFAULT_PHONE_REGIONS,
                 national_ids: Sequence[NationalIdFormat] = NATIONAL_ID_FORMATS,
                 international_leniency: Leniency = Leniency.VALID,
                 national_leniency: Leniency = Leniency.STRICT_GROUPING,
                 cache_size: int = 2048) -> None:
        self._phones = PhoneRecogniser(phone_regions, international_leniency,
                                       national_leniency, window_cache_size=2 * cache_size)
        self.phone_regions = tuple(phone_regions)
        self.national_ids = tuple(national_ids)
        self._national_ids = NationalIdRecogniser(self.national_ids)
        self.international_leniency = international_leniency
        self.national_leniency = national_leniency
        # Every request masks the conversation's history again: the same texts, whose
        # results are kept (texts up to CACHED_TEXT_CHARS, so the cache stays small).
        # Windows (a date, a number that comes back) repeat across texts too: the phone
        # recogniser keeps those.
        self._detect_cached = lru_cache(maxsize=cache_size)(self._detect) if cache_size else None

    def detect(self, text: str) -> list[Detection]:
        if not text:
            return []
        if self._detect_cached is not None and len(text) <= CACHED_TEXT_CHARS:
            return list(self._detect_cached(text))
        return list(self._detect(text))

    def _detect(self, text: str) -> tuple[Detection, ...]:
        found: list[Detection] = []
        if "@" in text:
            found.extend(find_emails(text))
        if _DIGIT_RE.search(text):
            found.extend(find_ibans(text))
            found.extend(find_cards(text))
            found.extend(find_ips(text))
            found.extend(self._national_ids.find(text))
            found = resolve_overlaps(found)
            found.extend(self._phones.find(text, found))
        return tuple(resolve_overlaps(found))
