"""Phone numbers, found with Google's libphonenumber (the ``phonenumbers`` package, its
``PhoneNumberMatcher``).

Numbers in international form (``+CC`` or ``00CC``) of any country are taken when valid
for their country (``Leniency.VALID``); numbers in the national form of one of
``DEFAULT_PHONE_REGIONS`` must also be grouped the way that country writes its numbers
(``Leniency.STRICT_GROUPING``: "2024-118734" is a valid US number, but nobody writes
one like that), unless a word before or after them says they are phone numbers
(``phone_cue``) or their area code stands in parentheses. A national number written as
one bare run of digits (``612345678``) is only taken near such a word: order and
customer numbers look just the same. A national number right after a word naming
another kind of number ("Artikelnummer", "order", "IBAN") is not taken unless a phone
word stands nearer. An extension (``x41865``, ``ext. 753``, ``#12``, ``Durchwahl 12``,
``poste 204``...) is masked with its number. A hyphenated ISBN with a valid check digit
(``0-12-382057-X``) is not a phone number.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import phonenumbers
from phonenumbers import Leniency, PhoneMetadata, PhoneNumberMatcher

from adapters.pii_recognisers import is_isbn, other_number_before, phone_cue
from application.pii import PHONE, Detection

# National phone formats understood without a +CC: where the users write from.
# Numbers of any other country are found in their international form.
DEFAULT_PHONE_REGIONS: tuple[str, ...] = (
    "US", "GB", "DE", "FR", "ES", "IT", "NL", "BE", "CH", "AT",
    "PL", "PT", "BR", "IN", "IE", "SE", "MX", "AU",
)

# An extension after a number: "x41865", "ext. 753", "#12", and the words of the
# users' languages (Durchwahl, poste, extensión, interno, toestel, wewn., ramal, ankn.).
_EXTENSION_RE = re.compile(
    r"[ \t]?(?:x|ext\.?|extn\.?|extension|#|durchwahl|dw\.|poste|extensión|int\.|interno|"
    r"toestel|tst\.|wewn\.|wew\.|ramal|ankn\.|anknytning)[ \t]?[.:]?[ \t]?\d{1,6}(?!\d)",
    re.IGNORECASE)

# Where a phone number could be: a digit run with the punctuation numbers are written with.
_PHONE_WINDOW_RE = re.compile(r"[+(\d]\+?[\d \t\u00a0().\-/]{4,}\d")
_DIGIT_RE = re.compile(r"\d")
_AREA_CODE_RE = re.compile(r"\(0\d{1,5}\)[ \t\u00a0/-]?\d")
_SEPARATOR_RE = re.compile(r"[ \t\u00a0().\-/]")
_NUMBER_LIST_RE = re.compile(r"\s+/\s+")
# A window shaped like a date is not worth asking the phone matcher about.
_DATE_RE = re.compile(
    r"(?:19|20)\d\d([-./])(?:0?[1-9]|1[0-2])\1(?:0?[1-9]|[12]\d|3[01])"
    r"|(?:0?[1-9]|[12]\d|3[01])([-./])(?:0?[1-9]|1[0-2])\2(?:19|20)\d\d"
    r"|(?:0?[1-9]|1[0-2])/(?:0?[1-9]|[12]\d|3[01])/(?:19|20)\d\d"
)


class PhoneRecogniser:
    """Finds phone numbers: international ones of any country, national ones of
    ``phone_regions``."""

    def __init__(self, phone_regions: Sequence[str] = DEFAULT_PHONE_REGIONS,
                 international_leniency: Leniency = Leniency.VALID,
                 national_leniency: Leniency = Leniency.STRICT_GROUPING,
                 window_cache_size: int = 4096) -> None:
        unknown = [r for r in phone_regions if r not in phonenumbers.SUPPORTED_REGIONS]
        if unknown:
            raise ValueError(f"unknown phone regions: {', '.join(unknown)}")
        self._regions = tuple(_PhoneRegion.of(region) for region in phone_regions)
        self.international_leniency = international_leniency
        self.national_leniency = national_leniency
        # Windows (a date, a number that comes back) repeat across texts: their
        # matches are kept (window_cache_size 0: nothing is).
        self._match_window = (
            lru_cache(maxsize=window_cache_size)(self._match_window_uncached)
            if window_cache_size else self._match_window_uncached)

    def find(self, text: str, taken: Sequence[Detection]) -> Iterable[Detection]:
        """The phone numbers in text outside ``taken``."""
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
                if "-" in text[start:end] or "isbn" in text[max(0, start - 12):start].lower():
                    if is_isbn(text, start, end):
                        continue  # 0-12-382057-X
                last = index == len(pieces) - 1
                extension = _EXTENSION_RE.match(text, end) if last else None
                # A little of either side: the matcher looks at the neighbours of a number
                # (a letter glued to it, the ":30" that makes "2024-01-15 10" a time). Where
                # a window was cut between two numbers, or an extension follows, blanks.
                before = text[max(0, start - 4):start] if index == 0 else "    "
                after = text[end:end + 4] if last and not extension else "    "
                yield from self._phones_in(text, start, end, digits, before, after,
                                           extension.end() if extension else None)

    def _phones_in(self, text: str, start: int, end: int, digits: str, before: str,
                   after: str, extension_end: int | None) -> Iterable[Detection]:
        chunk = before + text[start:end] + after
        offset = start - len(before)
        international = text[start:end].lstrip("(").startswith("+") or digits.startswith("00")
        cue: bool | None = None  # a word nearby says it is a phone number (looked up once)
        lenient = False
        found = self._match_window(chunk, len(before), len(chunk) - len(after), digits,
                                   international, False)
        if not international and not any(s <= len(before) and e >= len(chunk) - len(after)
                                         for s, e, _ in found):
            # Grouped otherwise than the country does ("0898-780 11"): valid numbers are
            # taken where a word says they are phone numbers, or where an area code
            # with its trunk prefix stands in parentheses ("(0360) 721729"), as only
            # phone numbers are written.
            cue = self._cue(text, start, end, extension_end)
            lenient = bool(cue or _AREA_CODE_RE.match(text, start))
            if lenient:
                found = self._match_window(chunk, len(before), len(chunk) - len(after),
                                           digits, international, True)
        for match_start, match_end, bare in found:
            if match_start < len(before) or match_end > len(chunk) - len(after):
                continue  # took in a neighbour
            # "Artikelnummer 0815-4711-23": a number grouped as the country does is
            # another kind of number only right after its word ("Invoice questions:
            # 020 7946 0959" is a phone number); others, shortly after it.
            if not international and other_number_before(
                    text, offset + match_start, 24 if bare or lenient else 6):
                continue
            if bare:
                if cue is None:
                    cue = self._cue(text, start, end, extension_end)
                if not cue:
                    continue
            detection_end = offset + match_end
            if extension_end is not None and detection_end == end:
                detection_end = extension_end
            yield Detection(PHONE, offset + match_start, detection_end,
                            text[offset + match_start:detection_end])

    @staticmethod
    def _cue(text: str, start: int, end: int, extension_end: int | None) -> bool:
        """A word before or after the number says it is a phone number, and no nearer one
        says it is an order, an invoice, a parcel... (``phone_cue``)"""
        return phone_cue(text, start, extension_end or end)

    def _match_window_uncached(self, chunk: str, at: int, stop: int, digits: str,
                               international: bool, lenient: bool,
                               ) -> tuple[tuple[int, int, bool], ...]:
        """The phone numbers in chunk[at:stop]: (start, end, written as a bare digit run).
        ``lenient``: national numbers need only be valid, however they are grouped."""
        if international:  # "00": any region that dials abroad with 00 reads it
            regions: Iterable[str | None] = (None,) if "+" in chunk[at:at + 2] else ("DE",)
            leniency = self.international_leniency
        else:
            regions = (r.region for r in self._regions if r.could_be(digits))
            leniency = Leniency.VALID if lenient else self.national_leniency
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
