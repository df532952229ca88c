"""Personal data detection with phonenumbers, python-stdnum and the standard library.

Implements ``application.pii.PiiDetector``. A few patterns find candidates; whether a
candidate is personal data is decided by the libraries:

- PHONE: Google's libphonenumber (the ``phonenumbers`` package, its ``PhoneNumberMatcher``):
  numbers in international form (``+CC`` or ``00CC``) of any country, valid for their
  country (``Leniency.VALID``); and numbers in the national form of one of
  ``DEFAULT_PHONE_REGIONS``, which must also be grouped the way that country writes its
  numbers (``Leniency.STRICT_GROUPING``: "2024-118734" is a valid US number, but nobody
  writes one like that). A national number written as one bare run of digits
  (``612345678``) is only taken near a word that says it is a phone number: order and
  customer numbers look just the same.
- CARD: the Luhn checksum (``stdnum.luhn``), 13 to 19 digits, spaces or dashes allowed,
  with the first digits of a card scheme.
- IBAN: ``stdnum.iban`` (country, length, the country's format, ISO 7064 mod 97), in
  capitals or not, grouped or not.
- NATIONAL_ID: the validators of ``stdnum`` for US SSN, DE Steuer-IdNr, FR NIR,
  ES DNI and NIE, IT codice fiscale, NL BSN, PL PESEL, BR CPF, IN Aadhaar, CH AHV,
  BE national number, PT Cartão de Cidadão and NIF. Those whose own shape tells them
  apart (letters, a fixed punctuation, a long checksum) are taken anywhere; those that
  are a bare run of digits with a weak checksum only near their name (``BSN``, ``PESEL``).
- IP: ``ipaddress`` (IPv4 and IPv6). Loopback and unspecified addresses and netmasks
  identify nobody and are left alone.
- EMAIL: a pattern (local part, ``@``, a domain of dotted labels ending in a TLD).

Where two detections overlap, the stronger validator wins (``resolve_overlaps``); a
phone-like run of digits inside an IBAN or a card number is part of it. Everything
is local: no data files are fetched, nothing touches the network. Results are cached
per text (every request masks the conversation's history again).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import phonenumbers
from phonenumbers import Leniency, PhoneMetadata, PhoneNumberMatcher
from stdnum import iban as stdnum_iban
from stdnum import luhn
from stdnum.be import nn as be_nn
from stdnum.br import cpf as br_cpf
from stdnum.ch import ssn as ch_ssn
from stdnum.de import idnr as de_idnr
from stdnum.es import dni as es_dni
from stdnum.es import nie as es_nie
from stdnum.fr import nir as fr_nir
from stdnum.in_ import aadhaar as in_aadhaar
from stdnum.it import codicefiscale as it_codicefiscale
from stdnum.nl import bsn as nl_bsn
from stdnum.pl import pesel as pl_pesel
from stdnum.pt import cc as pt_cc
from stdnum.pt import nif as pt_nif
from stdnum.us import ssn as us_ssn

from application.pii import (
    CARD,
    EMAIL,
    IBAN,
    IP,
    NATIONAL_ID,
    PHONE,
    Detection,
    resolve_overlaps,
)

# National phone formats understood without a +CC: where the users write from.
# Numbers of any other country are found in their international form.
DEFAULT_PHONE_REGIONS: tuple[str, ...] = (
    "US", "GB", "DE", "FR", "ES", "IT", "NL", "BE", "CH", "AT",
    "PL", "PT", "BR", "IN", "IE", "SE", "MX", "AU",
)

# How far before a candidate (characters) a word naming it is looked for.
CONTEXT_WINDOW = 48
# Texts up to this length have their detections cached (see LibraryPiiDetector).
CACHED_TEXT_CHARS = 16_384

_PHONE_CONTEXT = re.compile(
    r"(?<!\w)(?:tel|tél|tlf|phone|telephone|call|calls|ring|mobile|mob|cell|cellphone|fax|"
    r"whatsapp|signal|sms|text me|reach me|contact|hotline|"
    r"telefon\w*|anruf\w*|ruf\w*|handy|mobil\w*|erreichbar|festnetz|"
    r"téléphone|telephone|portable|appel\w*|joindre|"
    r"teléfono|telefono|móvil|movil|llama\w*|celular|"
    r"cellulare|chiama\w*|"
    r"telefoon|bel|bellen|"
    r"komórka|komorka|zadzwoń|zadzwon|"
    r"telemóvel|telemovel|ligue|ligar|contato|contacto)(?!\w)",
    re.IGNORECASE,
)

# The local part takes letters, digits and . _ % + ' - : the other characters RFC 5322
# allows (= / ! # ...) hardly occur in real addresses and would swallow "user=" of
# "user=bob@example.org".
_EMAIL_RE = re.compile(
    r"(?<![\w.%+'-])"
    r"([\w%+'-]+(?:\.[\w%+'-]+)*)"
    r"@((?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+[^\W\d_]{2,63})"
    r"(?![\w-]|\.[^\W_])"
)

_LOCAL_CHARS = frozenset("._%+'-")

# (The look-behinds come after the first character: a pattern that starts with one
# cannot use the regex engine's fast scan for its first character, and is 2-3x slower.)
_IBAN_RE = re.compile(
    r"[A-Za-z](?<![\w-][A-Za-z])[A-Za-z]\d{2}(?:[ \-]?[A-Za-z0-9]){11,32}(?!\w)", re.ASCII
)
_CARD_RE = re.compile(r"[2-6](?<![\w+.,/-][2-6])\d{2}(?:[ \-]?\d){10,16}(?![\w]|[.,/-]\d)",
                      re.ASCII)
_IPV4_RE = re.compile(r"\d(?<![\w.]\d)\d{0,2}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?![\w]|\.\d)", re.ASCII)
# A run of hex digits, colons and dots (an IPv6 address, maybe with an IPv4 tail);
# ipaddress decides.
_IPV6_RUN_RE = re.compile(r"[0-9A-Fa-f:](?<![\w:.][0-9A-Fa-f:])[0-9A-Fa-f:.]*+(?!\w)", re.ASCII)
# Where a phone number could be: a digit run with the punctuation numbers are written with.
_PHONE_WINDOW_RE = re.compile(r"[+(\d]\+?[\d \t\u00a0().\-/]{4,}\d")
_DIGIT_RE = re.compile(r"\d")
_SEPARATOR_RE = re.compile(r"[ \t\u00a0().\-/]")
_NUMBER_LIST_RE = re.compile(r"\s+/\s+")
_PREFIX_LENGTH_RE = re.compile(r"/\d{1,3}(?!\d)")
# A window shaped like a date is not worth asking the phone matcher about.
_DATE_RE = re.compile(
    r"(?:19|20)\d\d([-./])(?:0?[1-9]|1[0-2])\1(?:0?[1-9]|[12]\d|3[01])"
    r"|(?:0?[1-9]|[12]\d|3[01])([-./])(?:0?[1-9]|1[0-2])\2(?:19|20)\d\d"
    r"|(?:0?[1-9]|1[0-2])/(?:0?[1-9]|[12]\d|3[01])/(?:19|20)\d\d"
)


@dataclass(frozen=True)
class NationalIdFormat:
    """How one national id is written, which stdnum validator decides, and when."""

    name: str
    pattern: re.Pattern[str]
    is_valid: Callable[[str], bool]
    # None: the shape is telling enough; else a word that must come shortly before.
    context: re.Pattern[str] | None = None
    # True: it begins with a digit that begins a word, and is looked for where
    # _ID_START_RE finds one (with all such formats), not by a scan of its own.
    digit_first: bool = True
    # Else a pattern that finds a distinctive part of it, ``finder_back`` characters
    # after its start (scanning for its first character visits every word).
    finder: re.Pattern[str] | None = None
    finder_back: int = 0


def _words(*words: str) -> re.Pattern[str]:
    return re.compile(r"(?<!\w)(?:" + "|".join(words) + r")(?!\w)", re.IGNORECASE)


def _ssn_valid(number: str) -> bool:
    return us_ssn.is_valid(number.replace(" ", "-"))  # stdnum knows the dashed form only


# The patterns test "nothing word-like before" after their first character: a pattern
# that starts with a look-behind cannot use the regex engine's fast first-character
# scan, and is twice as slow.
# A digit that begins a word and is followed by seven more digits (or the A/B of a
# Corsican NIR), each maybe after one separator: where every digit-first id begins.
_ID_START_RE = re.compile(r"\d(?<!\w\d)(?=(?:[ .\-]?[\dABab]){7})", re.ASCII)
# The core of a codice fiscale (birth year, month letter, day), found before the six
# letters in front of it: scanning letter-first visits every word. (The year's digits
# become letters only for the sixth person with the same code: not looked for.)
_CF_CORE_RE = re.compile(r"\d\d[A-EHLMPR-Ta-ehlmpr-t][0-9LMNP-Vlmnp-v]{2}[A-Za-z]", re.ASCII)
_NINE_DIGITS = re.compile(r"\d(?<!\w\d)\d{8}(?!\w)", re.ASCII)
_ELEVEN_DIGITS = re.compile(r"\d(?<!\w\d)\d{10}(?!\w)", re.ASCII)

NATIONAL_ID_FORMATS: tuple[NationalIdFormat, ...] = (
    NationalIdFormat("us.ssn", re.compile(r"\d(?<![\w-]\d)\d\d([- ])\d{2}\1\d{4}(?![\w-])",
                                          re.ASCII), _ssn_valid),
    NationalIdFormat("us.ssn", _NINE_DIGITS, _ssn_valid,
                     _words("ssn", "social security", "social security number")),
    NationalIdFormat("fr.nir", re.compile(
        r"[12](?<![\w-][12]) ?\d{2} ?\d{2} ?(?:\d{2}|2[ABab]) ?\d{3} ?\d{3} ?\d{2}(?!\w)",
        re.ASCII), fr_nir.is_valid),
    NationalIdFormat("es.dni", re.compile(r"\d(?<![\w-]\d)\d{7}-?[A-Z](?!\w)", re.ASCII),
                     es_dni.is_valid),
    NationalIdFormat("es.nie", re.compile(r"[XYZ](?<![\w-][XYZ])-?\d{7}-?[A-Z](?!\w)", re.ASCII),
                     es_nie.is_valid, digit_first=False),
    NationalIdFormat("it.codicefiscale", re.compile(
        r"[A-Za-z](?<!\w[A-Za-z])[A-Za-z]{5}[0-9LMNP-Vlmnp-v]{2}[A-EHLMPR-Ta-ehlmpr-t]"
        r"[0-9LMNP-Vlmnp-v]{2}[A-Za-z][0-9LMNP-Vlmnp-v]{3}[A-Za-z](?!\w)", re.ASCII),
        it_codicefiscale.is_valid, digit_first=False, finder=_CF_CORE_RE, finder_back=6),
    NationalIdFormat("ch.ssn", re.compile(r"7(?<![\w.]7)56\.?\d{4}\.?\d{4}\.?\d{2}(?![\w]|\.\d)",
                                          re.ASCII), ch_ssn.is_valid),
    NationalIdFormat("br.cpf", re.compile(r"\d(?<![\w.]\d)\d\d\.\d{3}\.\d{3}-\d{2}(?![\w-])",
                                          re.ASCII), br_cpf.is_valid),
    NationalIdFormat("be.nn", re.compile(
        r"\d(?<![\w.]\d)\d\.\d{2}\.\d{2}-\d{3}\.\d{2}(?![\w]|\.\d)", re.ASCII), be_nn.is_valid),
    NationalIdFormat("pt.cc", re.compile(r"\d(?<!\w\d)\d{7} ?\d ?[A-Z]{2}\d(?!\w)", re.ASCII),
                     pt_cc.is_valid),
    NationalIdFormat("de.idnr", re.compile(r"\d(?<!\w\d)\d ?\d{3} ?\d{3} ?\d{3}(?!\w)", re.ASCII),
                     de_idnr.is_valid,
                     _words(r"steuer-?id\w*", r"steuer-?identifikationsnummer", "idnr", "id-nr",
                            r"identifikationsnummer", "tin", "tax id", r"steuerliche id\w*")),
    NationalIdFormat("nl.bsn", re.compile(r"\d(?<!\w\d)(?:\d{8}|\d{3}\.\d{2}\.\d{3})(?!\w)",
                                          re.ASCII), nl_bsn.is_valid,
                     _words("bsn", "burgerservicenummer", "sofinummer", "sofi-nummer",
                            "citizen service number")),
    NationalIdFormat("pl.pesel", _ELEVEN_DIGITS, pl_pesel.is_valid, _words("pesel")),
    NationalIdFormat("br.cpf", _ELEVEN_DIGITS, br_cpf.is_valid, _words("cpf")),
    NationalIdFormat("be.nn", _ELEVEN_DIGITS, be_nn.is_valid,
                     _words("rijksregisternummer", r"num[ée]ro national", "registre national",
                            "national number", "insz", "niss")),
    NationalIdFormat("in.aadhaar", re.compile(r"[2-9](?<!\w[2-9])\d{3} ?\d{4} ?\d{4}(?!\w)",
                                              re.ASCII), in_aadhaar.is_valid,
                     _words("aadhaar", "aadhar", "uidai", "uid", "आधार")),
    NationalIdFormat("pt.nif", _NINE_DIGITS, pt_nif.is_valid,
                     _words("nif", "contribuinte")),
)


def _iban_valid(candidate: str) -> bool:
    # The country's length and format and the mod-97 check digits. Not the extra
    # national checks (check_country): the Belgian one looks bank codes up in a list
    # that misses real banks, and rejects, for one, the IBAN the standard shows.
    return stdnum_iban.is_valid(candidate, check_country=False)


def _card_scheme_ok(digits: str) -> bool:
    """Whether the digits start like a card of a payment scheme, at that scheme's length."""
    length = len(digits)
    two, four = int(digits[:2]), int(digits[:4])
    if digits[0] == "4":  # Visa
        return length in (13, 16, 19)
    if 51 <= two <= 55 or 2221 <= four <= 2720:  # Mastercard
        return length == 16
    if two in (34, 37):  # American Express
        return length == 15
    if 3528 <= four <= 3589 or two in (36, 38, 39) or 300 <= int(digits[:3]) <= 305:
        return 14 <= length <= 19  # JCB, Diners Club
    if digits[0] in "56":  # Maestro, Discover, UnionPay, RuPay
        return 13 <= length <= 19
    return False


def _tokens(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """The separator-delimited pieces of text[start:end], as (start, end) pairs."""
    pieces, piece_start = [], start
    for position in range(start, end):
        if text[position] in " -\u00a0":
            if position > piece_start:
                pieces.append((piece_start, position))
            piece_start = position + 1
    if end > piece_start:
        pieces.append((piece_start, end))
    return pieces


def _longest_valid(text: str, start: int, end: int, is_valid: Callable[[str], bool],
                   ) -> tuple[int, int] | None:
    """The longest run of whole pieces from ``start`` that the validator accepts: a
    greedy candidate may have taken a word or a number that follows."""
    pieces = _tokens(text, start, end)
    for count in range(len(pieces), 0, -1):
        span_end = pieces[count - 1][1]
        if is_valid(text[start:span_end]):
            return start, span_end
    return None


def _identifies(text: str, start: int, end: int,
                kind: type[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> bool:
    """Whether text[start:end] is an address that could point at someone: not loopback,
    unspecified, a netmask, or a network written with its prefix length
    (``2001:db8::/32``, ``10.0.0.0/8``; a host's ``10.1.2.3/24`` is an address)."""
    candidate = text[start:end]
    try:
        address = kind(candidate)
    except ValueError:
        return False
    if address.is_loopback or address.is_unspecified:
        return False
    if isinstance(address, ipaddress.IPv4Address) and candidate.startswith("255."):
        return False  # a netmask (or the broadcast address)
    prefix = _PREFIX_LENGTH_RE.match(text, end)
    if prefix:
        try:
            network = ipaddress.ip_interface(candidate + prefix.group(0)).network
        except ValueError:
            return True
        return network.network_address != address or network.num_addresses == 1
    return True


def _has_context(text: str, start: int, words: re.Pattern[str]) -> bool:
    return words.search(text, max(0, start - CONTEXT_WINDOW), start) is not None


class LibraryPiiDetector:
    """Finds emails, phone numbers, card numbers, IBANs, national ids and IP addresses."""

    def __init__(self, phone_regions: Sequence[str] = DEFAULT_PHONE_REGIONS,
                 national_ids: Sequence[NationalIdFormat] = NATIONAL_ID_FORMATS,
                 international_leniency: Leniency = Leniency.VALID,
                 national_leniency: Leniency = Leniency.STRICT_GROUPING,
                 cache_size: int = 2048) -> None:
        unknown = [r for r in phone_regions if r not in phonenumbers.SUPPORTED_REGIONS]
        if unknown:
            raise ValueError(f"unknown phone regions: {', '.join(unknown)}")
        self.phone_regions = tuple(phone_regions)
        self._regions = tuple(_PhoneRegion.of(region) for region in phone_regions)
        self.national_ids = tuple(national_ids)
        # Formats written alike (eleven digits: PESEL, CPF, Belgian number) are matched
        # once, and tried in turn.
        by_pattern: dict[re.Pattern[str], list[NationalIdFormat]] = {}
        for id_format in self.national_ids:
            by_pattern.setdefault(id_format.pattern, []).append(id_format)
        grouped = [(pattern, tuple(formats)) for pattern, formats in by_pattern.items()]
        self._digit_first = tuple(g for g in grouped if g[1][0].digit_first)
        self._scanned = tuple(g for g in grouped if not g[1][0].digit_first)
        self.international_leniency = international_leniency
        self.national_leniency = national_leniency
        # Every request masks the conversation's history again: the same texts, whose
        # results are kept (texts up to CACHED_TEXT_CHARS, so the cache stays small).
        # Windows (a date, a number that comes back) repeat across texts too.
        self._detect_cached = lru_cache(maxsize=cache_size)(self._detect) if cache_size else None
        self._match_window = (lru_cache(maxsize=2 * cache_size)(self._match_window_uncached)
                              if cache_size else self._match_window_uncached)

    def detect(self, text: str) -> list[Detection]:
        if not text:
            return []
        if self._detect_cached is not None and len(text) <= CACHED_TEXT_CHARS:
            return list(self._detect_cached(text))
        return list(self._detect(text))

    def _detect(self, text: str) -> tuple[Detection, ...]:
        found: list[Detection] = []
        if "@" in text:
            found.extend(self._emails(text))
        if _DIGIT_RE.search(text):
            found.extend(self._ibans(text))
            found.extend(self._cards(text))
            found.extend(self._ips(text))
            found.extend(self._national_ids(text))
            found = resolve_overlaps(found)
            found.extend(self._phones(text, found))
        return tuple(resolve_overlaps(found))

    def _emails(self, text: str) -> Iterable[Detection]:
        # Found from each "@": a regex scan for the local part from every position of a
        # long text costs ten times more.
        at = text.find("@")
        while at != -1:
            start = at
            while start > 0 and (text[start - 1].isalnum() or text[start - 1] in _LOCAL_CHARS):
                start -= 1
            match = _EMAIL_RE.match(text, start) if start < at else None
            if match:
                yield Detection(EMAIL, match.start(), match.end(), match.group(0))
                at = text.find("@", match.end())
            else:
                at = text.find("@", at + 1)

    def _ibans(self, text: str) -> Iterable[Detection]:
        for match in _IBAN_RE.finditer(text):
            span = _longest_valid(text, match.start(), match.end(), _iban_valid)
            if span:
                yield Detection(IBAN, span[0], span[1], text[span[0]:span[1]])

    def _cards(self, text: str) -> Iterable[Detection]:
        def is_card(candidate: str) -> bool:
            digits = candidate.replace(" ", "").replace("-", "")
            return 13 <= len(digits) <= 19 and _card_scheme_ok(digits) and luhn.is_valid(digits)

        for match in _CARD_RE.finditer(text):
            span = _longest_valid(text, match.start(), match.end(), is_card)
            if span:
                yield Detection(CARD, span[0], span[1], text[span[0]:span[1]])

    def _ips(self, text: str) -> Iterable[Detection]:
        for match in _IPV4_RE.finditer(text):
            if _identifies(text, match.start(), match.end(), ipaddress.IPv4Address):
                yield Detection(IP, match.start(), match.end(), match.group(0))
        if ":" in text:
            for run in _IPV6_RUN_RE.finditer(text):
                candidate = run.group(0).rstrip(".")
                if candidate.endswith(":") and not candidate.endswith("::"):
                    candidate = candidate[:-1]  # "2001:db8::1: is down"
                end = run.start() + len(candidate)
                if candidate.count(":") >= 2 and _identifies(
                        text, run.start(), end, ipaddress.IPv6Address):
                    yield Detection(IP, run.start(), end, candidate)

    def _national_ids(self, text: str) -> Iterable[Detection]:
        # Most formats begin with a digit that begins a word: one scan finds those places,
        # where each such format is tried (thirteen scans of the whole text cost 5x more).
        for start in _ID_START_RE.finditer(text):
            yield from self._national_id_at(text, start.start(), self._digit_first)
        for pattern, formats in self._scanned:
            finder, back = formats[0].finder or pattern, formats[0].finder_back
            for found in finder.finditer(text):
                if found.start() >= back:
                    yield from self._national_id_at(text, found.start() - back,
                                                    ((pattern, formats),))

    @staticmethod
    def _national_id_at(text: str, position: int, patterns: Iterable[
            tuple[re.Pattern[str], tuple[NationalIdFormat, ...]]]) -> Iterable[Detection]:
        for pattern, formats in patterns:
            match = pattern.match(text, position)
            if match is None:
                continue
            value = match.group(0)
            for id_format in formats:
                if id_format.context is not None and not _has_context(
                        text, position, id_format.context):
                    continue
                if id_format.is_valid(value):
                    yield Detection(NATIONAL_ID, position, match.end(), value)
                    return

    def _phones(self, text: str, taken: Sequence[Detection]) -> Iterable[Detection]:
        if taken:  # what a stronger type already holds is no phone number: hidden
            chars = list(text)
            for detection in taken:
                chars[detection.start:detection.end] = " " * (detection.end - detection.start)
            text = "".join(chars)
        for window in _PHONE_WINDOW_RE.finditer(text):
            pieces = _pieces(window.start(), window.end(), text)
            for index, (start, end) in enumerate(pieces):
                digits = "".join(_DIGIT_RE.findall(text, start, end))
                if not 6 <= len(digits) <= 17 or _DATE_RE.fullmatch(text, start, end):
                    continue
                # A little of either side: the matcher looks at the neighbours of a number
                # (a letter glued to it, the ":30" that makes "2024-01-15 10" a time). Where
                # a window was cut between two numbers, blanks: not the other number.
                before = text[max(0, start - 4):start] if index == 0 else "    "
                after = text[end:end + 4] if index == len(pieces) - 1 else "    "
                yield from self._phones_in(text, start, end, digits, before, after)

    def _phones_in(self, text: str, start: int, end: int, digits: str, before: str,
                   after: str) -> Iterable[Detection]:
        chunk = before + text[start:end] + after
        offset = start - len(before)
        international = text[start:end].lstrip("(").startswith("+") or digits.startswith("00")
        for match_start, match_end, bare in self._match_window(
                chunk, len(before), len(chunk) - len(after), digits, international):
            if match_start < len(before) or match_end > len(chunk) - len(after):
                continue  # took in a neighbour
            if bare and not _has_context(text, offset + match_start, _PHONE_CONTEXT):
                continue
            yield Detection(PHONE, offset + match_start, offset + match_end,
                            chunk[match_start:match_end])

    def _match_window_uncached(self, chunk: str, at: int, stop: int, digits: str,
                               international: bool) -> tuple[tuple[int, int, bool], ...]:
        """The phone numbers in chunk[at:stop]: (start, end, written as a bare digit run)."""
        if international:  # "00": any region that dials abroad with 00 reads it
            regions: Iterable[str | None] = (None,) if "+" in chunk[at:at + 2] else ("DE",)
            leniency = self.international_leniency
        else:
            regions = (r.region for r in self._regions if r.could_be(digits))
            leniency = self.national_leniency
        found = []
        for region in regions:
            for match in PhoneNumberMatcher(chunk, region, leniency=leniency):
                bare = not international and not _SEPARATOR_RE.search(match.raw_string)
                found.append((match.start, match.end, bare))
            if any(start <= at and end >= stop for start, end, _ in found):
                break  # the whole window is one number: no other region finds more
        return tuple(found)


def _pieces(start: int, end: int, text: str) -> list[tuple[int, int]]:
    """A window cut where one number ends and the next begins: at " / "."""
    pieces, piece_start = [], start
    for cut in _NUMBER_LIST_RE.finditer(text, start, end):
        pieces.append((piece_start, cut.start()))
        piece_start = cut.end()
    pieces.append((piece_start, end))
    return pieces


@dataclass(frozen=True)
class _PhoneRegion:
    """What libphonenumber's metadata says a region's national numbers look like; a
    cheap first look that spares the matcher the regions a digit run cannot be in."""

    region: str
    national_prefix: str
    lengths: frozenset[int]
    pattern: re.Pattern[str]

    @classmethod
    def of(cls, region: str) -> _PhoneRegion:
        metadata = PhoneMetadata.metadata_for_region(region)
        general = metadata.general_desc
        return cls(region, metadata.national_prefix or "", frozenset(general.possible_length),
                   re.compile(general.national_number_pattern))

    def could_be(self, digits: str) -> bool:
        candidates = [digits]
        if self.national_prefix and digits.startswith(self.national_prefix):
            candidates.append(digits[len(self.national_prefix):])
        return any(len(c) in self.lengths and self.pattern.fullmatch(c) for c in candidates)
