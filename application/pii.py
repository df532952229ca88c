"""Personal data kept from the model: detected, replaced by placeholders, put back.

One model call is one masking session: the system prompt, the caller's context, the
history turns and the new message are all masked with one shared mapping, so the
model sees the same placeholder wherever the same value appears (``[EMAIL_1]``,
``[PHONE_2]``, ``[CARD_1]``, ``[IBAN_1]``, ``[NATIONAL_ID_1]``, ``[IP_1]``). The
placeholders in the model's reply are then put back, so the user sees their own
data and the provider never does.

Text that already contains something shaped like a placeholder survives the round
trip unchanged: a literal ``[EMAIL_1]`` reserves its number, so no value is given
that placeholder; and when it only shows up after its number was given to a value
(the new message written after the history was masked), the literal itself is
masked like a value, with a placeholder of its own that unmasks back to the literal.

Unmasking restores the session's placeholders written exactly, in another case
(``[email_1]``) or markdown-escaped (``\\[EMAIL_1\\]``). Bare ``EMAIL_1`` without
brackets is left alone: identifiers like that are common in code, and treating them
as placeholders would change the user's code on the way to the model. A placeholder
the model invents, or one the session did not give, stays as it is.

Pure: no I/O. Detection is a port (``PiiDetector``); adapters/pii_detector.py fills it.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

from application.ports import Detection, PiiDetector

EMAIL = "EMAIL"
PHONE = "PHONE"
CARD = "CARD"
IBAN = "IBAN"
NATIONAL_ID = "NATIONAL_ID"
IP = "IP"

ENTITY_TYPES: tuple[str, ...] = (EMAIL, PHONE, CARD, IBAN, NATIONAL_ID, IP)

# Which of two overlapping detections wins: the type checked by the stronger validator
# (a checksum, a complete syntax) before the weaker; then the longer span.
# A phone-looking run of digits inside an IBAN or a card number is part of it.
_PRECEDENCE = {EMAIL: 0, IBAN: 1, CARD: 2, NATIONAL_ID: 3, IP: 4, PHONE: 5}

# A placeholder as the session writes it, and the variants a model may write back:
# another case, spaces inside the brackets, markdown-escaped brackets (both of
# them: a user's own backslash before a placeholder must survive the round trip).
_TYPES = "|".join(sorted(ENTITY_TYPES, key=len, reverse=True))
PLACEHOLDER_RE = re.compile(
    rf"\\\[\s*({_TYPES})_(\d{{1,6}})\s*\\\]|\[\s*({_TYPES})_(\d{{1,6}})\s*\]",
    re.IGNORECASE | re.ASCII,
)


def _placeholder_key(match: re.Match[str]) -> tuple[str, int]:
    """(entity type, number) of a placeholder match, whichever form it has."""
    kind, number = (match.group(1), match.group(2)) if match.group(1) else match.group(3, 4)
    return kind.upper(), int(number)


def resolve_overlaps(detections: Iterable[Detection]) -> list[Detection]:
    """Keep one detection wherever several overlap, sorted by position.

    The stronger type wins (see ``_PRECEDENCE``), then the longer span, then the
    earlier one.
    """
    ranked = sorted(
        detections,
        key=lambda d: (_PRECEDENCE.get(d.entity_type, 99), d.start - d.end, d.start),
    )
    kept: list[Detection] = []  # sorted by start, never overlapping
    starts: list[int] = []
    for candidate in ranked:
        if candidate.end <= candidate.start:
            continue
        index = bisect_right(starts, candidate.start)
        if index > 0 and kept[index - 1].end > candidate.start:
            continue
        if index < len(kept) and kept[index].start < candidate.end:
            continue
        kept.insert(index, candidate)
        starts.insert(index, candidate.start)
    return kept


class PiiSession:
    """One mapping of values to placeholders, shared by every text of one model call."""

    def __init__(self, detector: PiiDetector) -> None:
        self._detector = detector
        # (entity type, "value" or "literal", the text) -> its placeholder
        self._by_key: dict[tuple[str, str, str], str] = {}
        self._originals: dict[tuple[str, int], str] = {}  # (type, n) -> original text
        self._reserved: defaultdict[str, set[int]] = defaultdict(set)
        self._next: defaultdict[str, int] = defaultdict(lambda: 1)
        self._found: Counter[str] = Counter()

    @property
    def found(self) -> dict[str, int]:
        """Occurrences of personal data masked so far, per entity type."""
        return dict(self._found)

    def mask(self, text: str) -> str:
        """The text with every detected value replaced by its placeholder."""
        if not text:
            return text
        literals = list(PLACEHOLDER_RE.finditer(text)) if "[" in text else []
        self._reserve(literals)
        replacements: list[tuple[int, int, str]] = []
        for match in literals:
            literal_key = (_placeholder_key(match)[0], "literal", match.group(0))
            if literal_key in self._by_key or self._issued(match):
                # Its number already stands for a value of this session: masked like one.
                placeholder = self._placeholder_for(literal_key)
                replacements.append((match.start(), match.end(), placeholder))
        for detection in self._detector.detect(text):
            if any(detection.start < m.end() and detection.end > m.start() for m in literals):
                continue
            placeholder = self._placeholder_for((detection.entity_type, "value", detection.value))
            self._found[detection.entity_type] += 1
            replacements.append((detection.start, detection.end, placeholder))
        if not replacements:
            return text
        replacements.sort()
        parts: list[str] = []
        position = 0
        for start, end, placeholder in replacements:
            if start < position:  # a detector that broke its contract: keep the first
                continue
            parts.append(text[position:start])
            parts.append(placeholder)
            position = end
        parts.append(text[position:])
        return "".join(parts)

    def mask_all(self, texts: Sequence[str]) -> list[str]:
        """Several texts with one mapping. The placeholder-like literals anywhere in them
        reserve their numbers before any value gets a placeholder, so none of those
        literals has to be masked (with ``mask`` one text at a time, a literal in a later
        text whose number an earlier text already gave to a value is masked instead)."""
        for text in texts:
            if text and "[" in text:
                self._reserve(PLACEHOLDER_RE.finditer(text))
        return [self.mask(text) for text in texts]

    def unmask(self, text: str) -> str:
        """The text with this session's placeholders replaced by what they stand for."""
        if not text or not self._originals or "[" not in text:
            return text

        def restore(match: re.Match[str]) -> str:
            original = self._originals.get(_placeholder_key(match))
            return match.group(0) if original is None else original

        return PLACEHOLDER_RE.sub(restore, text)

    def _issued(self, match: re.Match[str]) -> bool:
        return _placeholder_key(match) in self._originals

    def _reserve(self, literals: Iterable[re.Match[str]]) -> None:
        for match in literals:
            if not self._issued(match):
                kind, number = _placeholder_key(match)
                self._reserved[kind].add(number)

    def _placeholder_for(self, key: tuple[str, str, str]) -> str:
        placeholder = self._by_key.get(key)
        if placeholder is None:
            entity_type, _, original = key
            number = self._next[entity_type]
            while number in self._reserved[entity_type] or (entity_type, number) in self._originals:
                number += 1
            self._next[entity_type] = number + 1
            placeholder = f"[{entity_type}_{number}]"
            self._by_key[key] = placeholder
            self._originals[(entity_type, number)] = original
        return placeholder


class PiiMasker:
    """Masking sessions and checks built on one detector."""

    def __init__(self, detector: PiiDetector) -> None:
        self.detector = detector

    def session(self) -> PiiSession:
        return PiiSession(self.detector)

    def detect(self, text: str) -> list[Detection]:
        return self.detector.detect(text) if text else []

    def contains_pii(self, *texts: str) -> bool:
        return any(self.detect(text) for text in texts)

    def found_in(self, *texts: str) -> dict[str, int]:
        """Occurrences of personal data per entity type in the texts (for ``block``)."""
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(d.entity_type for d in self.detect(text))
        return dict(counts)
