"""What e-mail addresses, IBANs, card numbers, IP addresses and national ids look like,
and which validator decides that a candidate is one.

Each recogniser finds candidates with a pattern and yields a ``Detection`` for those
the validator accepts (python-stdnum, ``ipaddress``); overlaps between them are left
to ``LibraryPiiDetector``, which combines them (adapters/pii_detector.py). Phone
numbers have a recogniser of their own (adapters/pii_phone_recogniser.py).

- CARD: the Luhn checksum (``stdnum.luhn``), 13 to 19 digits, with the prefix of a card
  scheme at its length, written bare, in fours or in the issuer's groups; not after a
  gift-card or voucher word.
- IBAN: ``stdnum.iban`` (country, length, the country's format, ISO 7064 mod 97), in
  capitals or not, grouped or not.
- NATIONAL_ID: the validators of ``stdnum`` (``NATIONAL_ID_FORMATS``) and ``nino_valid``.
  Those whose own shape tells them apart (letters, a fixed punctuation, a long
  checksum) are taken anywhere; those that are a bare run of digits with a weak
  checksum only near their name (``BSN``, ``PESEL``), before or after them, or (``bare``)
  where no word nearby says they are a phone or another kind of number.
- IP: ``ipaddress`` (IPv4 and IPv6). Loopback and unspecified addresses, netmasks and
  versions (after "version", "v", "firmware", "build") identify nobody and are left
  alone.
- EMAIL: a pattern (local part, ``@``, a domain of dotted labels ending in a TLD).

The words that say what a number is (``PHONE_CUES``, ``NUMBER_WORDS``, ``NOT_PERSONAL``)
are here too: the phone recogniser and the national ids share them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from stdnum import iban as stdnum_iban
from stdnum import isbn as stdnum_isbn
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
from stdnum.se import personnummer as se_personnummer
from stdnum.us import ssn as us_ssn

from application.pii import CARD, EMAIL, IBAN, IP, NATIONAL_ID, Detection

# How far before a candidate (characters) a word naming it is looked for.
CONTEXT_WINDOW = 48


def _words(*words: str) -> re.Pattern[str]:
    return re.compile(r"(?<!\w)(?:" + "|".join(words) + r")(?!\w)", re.IGNORECASE)


# Words that say a number nearby (before or after it) is a phone number, in the
# languages of the users: English, German, French, Spanish, Italian, Dutch, Polish,
# Portuguese, Swedish.
PHONE_CUES = _words(
    r"tel", r"tél", r"tlf", r"phone\w*", r"telephone", r"call", r"calls", r"calling", r"ring",
    r"dial", r"mobile", r"mob", r"cell\w*", r"landline", r"fax", r"whats ?app", r"signal",
    r"sms", r"text me", r"reach me", r"reach", r"contact", r"hotline",
    r"telefon\w*", r"anruf\w*", r"ruf\w*", r"handy\w*", r"mobil\w*", r"erreichbar",
    r"erreichst", r"erreichen", r"festnetz\w*", r"durchwahl",
    r"téléphone", r"portable", r"appel\w*", r"joindre", r"joignable",
    r"teléfono", r"telefono", r"móvil", r"movil", r"llama\w*", r"celular",
    r"localizar\w*",
    r"cellulare", r"chiama\w*", r"raggiungibile", r"reperibile",
    r"telefoon\w*", r"mobiel\w*", r"bel", r"bellen", r"bereik\w*",
    r"komórk\w*", r"komork\w*", r"zadzwo\w*", r"dzwo\w*", r"skontaktować",
    r"telemóvel", r"telemovel", r"ligue", r"liga", r"ligar", r"contato", r"contacto", r"fone",
    r"ringa", r"ring mig", r"når", r"mobilnummer",
)
# The words for "number": a weaker cue ("Mon numéro, c'est le 0181000264"), which any
# word of NOT_PERSONAL nearby overrides ("the routing number").
NUMBER_WORDS = _words(r"number", r"nummer", r"numéro", r"numero", r"número", r"numer")

# Words that say a number nearby is something else: an order, an invoice, a parcel, a
# product, a gift card, a bank's routing number, a version. Looked for before it.
NOT_PERSONAL = _words(
    r"order\w*", r"invoice\w*", r"tracking", r"track", r"parcel", r"shipment", r"ref",
    r"reference", r"ticket", r"serial", r"sku", r"isbn", r"ean", r"upc", r"gtin",
    r"barcode", r"routing", r"aba", r"version", r"build", r"firmware", r"gift ?card",
    r"voucher", r"coupon", r"customer", r"account", r"part", r"konto", r"bankleitzahl", r"blz",
    r"bestell\w*", r"rechnung\w*", r"sendung\w*", r"kunden\w*", r"geschenkkarte\w*",
    r"gutschein\w*", r"artikel\w*", r"aba-nummer", r"barcode",
    r"commande", r"facture", r"colis", r"suivi", r"carte cadeau", r"code-barres",
    r"pedido", r"factura", r"seguimiento", r"envío", r"tarjeta regalo", r"código de barras",
    r"ordine", r"fattura", r"spedizione", r"carta regalo", r"codice a barre",
    r"bestelling", r"factuur", r"zending", r"track-and-trace", r"cadeaukaart",
    r"zamówieni\w*", r"faktur\w*", r"przesyłk\w*", r"karta podarunkowa", r"kod\w* kreskow\w*",
    r"fatura", r"rastreio", r"encomenda", r"cartão-presente", r"código de barras",
    r"beställning\w*", r"faktura\w*", r"kollinummer\w*", r"presentkort\w*",
    r"streckkod\w*",
)

# Words shortly before a Luhn-valid number that say it is no payment card.
_NOT_A_CARD = _words(
    r"gift ?cards?", r"voucher", r"coupon", r"loyalty", r"membership", r"tracking",
    r"order (?:number|no\.?|#)", r"geschenkkarte\w*", r"gutschein\w*", r"kundenkarte\w*",
    r"sendungsnummer", r"carte cadeau", r"bon d'achat", r"tarjeta regalo", r"carta regalo",
    r"buono", r"cadeaukaart\w*", r"cadeaubon\w*", r"karta podarunkowa", r"karty podarunkowej",
    r"cartão-presente", r"cartão presente", r"vale-presente", r"presentkort\w*",
)

# Words before a dotted number that make it a version, not an IPv4 address.
_VERSION_BEFORE = re.compile(
    r"(?<!\w)(?:v|ver|version|versions|versión|versão|versione|versie|wersj[ai]|firmware|"
    r"build|release|rev|kernel)\.?\s*[:#]?\s*$", re.IGNORECASE)


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
_CARD_RE = re.compile(r"[1-6](?<![\w+.,/-][1-6])\d{2}(?:[ \-]?\d){10,16}(?![\w]|[.,/-]\d)",
                      re.ASCII)
_IPV4_RE = re.compile(r"\d(?<![\w.]\d)\d{0,2}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?![\w]|\.\d)", re.ASCII)
# A run of hex digits, colons and dots (an IPv6 address, maybe with an IPv4 tail);
# ipaddress decides.
_IPV6_RUN_RE = re.compile(r"[0-9A-Fa-f:](?<![\w:.][0-9A-Fa-f:])[0-9A-Fa-f:.]*+(?!\w)", re.ASCII)
_PREFIX_LENGTH_RE = re.compile(r"/\d{1,3}(?!\d)")


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
    # With a context: True if it is taken without its name too, when its check digits
    # hold and no word nearby says it is a phone number or some other kind of number
    # (NOT_PERSONAL): a checksum that few random numbers pass (BSN, PESEL, CPF...).
    bare: bool = False
    # Else a pattern that finds a distinctive part of it, ``finder_back`` characters
    # after its start (scanning for its first character visits every word).
    finder: re.Pattern[str] | None = None
    finder_back: int = 0


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

_NINO_FIRST = frozenset("ABCEGHJKLMNOPRSTWXYZ")
_NINO_SECOND = frozenset("ABCEGHJKLMNPRSTWXYZ")
_NINO_NEVER_ISSUED = frozenset({"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"})


def nino_valid(value: str) -> bool:
    """A UK National Insurance number as HMRC allocates them: prefix letters not D, F,
    I, Q, U or V (nor O second), not one of the prefixes never issued; suffix A-D."""
    compact = value.replace(" ", "").upper()
    return (len(compact) == 9 and compact[0] in _NINO_FIRST and compact[1] in _NINO_SECOND
            and compact[:2] not in _NINO_NEVER_ISSUED and compact[2:8].isdigit()
            and compact[8] in "ABCD")


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
                            r"identifikationsnummer", "tin", "tax id", r"steuerliche id\w*"),
                     bare=True),
    NationalIdFormat("nl.bsn", re.compile(r"\d(?<!\w\d)(?:\d{8}|\d{3}\.\d{2}\.\d{3})(?!\w)",
                                          re.ASCII), nl_bsn.is_valid,
                     _words("bsn", "burgerservicenummer", "sofinummer", "sofi-nummer",
                            "citizen service number"), bare=True),
    NationalIdFormat("pl.pesel", _ELEVEN_DIGITS, pl_pesel.is_valid, _words("pesel"), bare=True),
    NationalIdFormat("br.cpf", _ELEVEN_DIGITS, br_cpf.is_valid, _words("cpf"), bare=True),
    NationalIdFormat("be.nn", _ELEVEN_DIGITS, be_nn.is_valid,
                     _words("rijksregisternummer", r"num[ée]ro national", "registre national",
                            "national number", "insz", "niss"), bare=True),
    # Swedish personnummer: birth date, a dash (a plus past 100), four digits with a Luhn
    # check; with the century (19640720-5324) too.
    NationalIdFormat("se.personnummer", re.compile(
        r"\d(?<![\w-]\d)\d(?:\d\d)?[01]\d[0-3]\d[-+]\d{4}(?![\w-])", re.ASCII),
        se_personnummer.is_valid),
    NationalIdFormat("se.personnummer", re.compile(
        r"\d(?<!\w\d)\d(?:\d\d)?[01]\d[0-3]\d\d{4}(?!\w)", re.ASCII),
        se_personnummer.is_valid, _words("personnummer", "personnr", "pnr")),
    # UK National Insurance number: two letters, six digits, A-D (no stdnum module).
    NationalIdFormat("gb.nino", re.compile(
        r"[A-Z](?<![\w-][A-Z])[A-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D](?!\w)", re.ASCII),
        lambda value: nino_valid(value), digit_first=False),
    NationalIdFormat("in.aadhaar", re.compile(r"[2-9](?<!\w[2-9])\d{3} ?\d{4} ?\d{4}(?!\w)",
                                              re.ASCII), in_aadhaar.is_valid,
                     _words("aadhaar", "aadhar", "uidai", "uid", "आधार")),
    NationalIdFormat("pt.nif", _NINE_DIGITS, pt_nif.is_valid,
                     _words("nif", "contribuinte"), bare=True),
)


def has_context(text: str, start: int, words: re.Pattern[str],
                window: int = CONTEXT_WINDOW) -> bool:
    """Whether one of ``words`` comes shortly (``window``) before ``start``."""
    return words.search(text, max(0, start - window), start) is not None


def has_context_after(text: str, end: int, words: re.Pattern[str],
                      window: int = CONTEXT_WINDOW) -> bool:
    """Whether one of ``words`` comes shortly (``window``) after ``end``."""
    return words.search(text, end, end + window) is not None


def has_context_around(text: str, start: int, end: int, words: re.Pattern[str],
                       window: int = CONTEXT_WINDOW) -> bool:
    return has_context(text, start, words, window) or has_context_after(text, end, words, window)


def find_emails(text: str) -> Iterable[Detection]:
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


def find_ibans(text: str) -> Iterable[Detection]:
    for start, end in _valid_runs(_IBAN_RE, text, _iban_valid):
        yield Detection(IBAN, start, end, text[start:end])


def find_cards(text: str) -> Iterable[Detection]:
    for start, end in _valid_runs(_CARD_RE, text, _is_card):
        # A gift card, a voucher or a tracking number that passes Luhn is no payment card.
        if not has_context(text, start, _NOT_A_CARD, window=24):
            yield Detection(CARD, start, end, text[start:end])


def _valid_runs(pattern: re.Pattern[str], text: str, is_valid: Callable[[str], bool],
                ) -> Iterable[tuple[int, int]]:
    """The longest valid runs of whole pieces where ``pattern`` matches; the search
    goes on where the valid run ended, not where the greedy match did (two IBANs in a
    row: "NL87RCYB3990998171 Kun je checken of NL34 IFZF 7442 1235 75")."""
    position = 0
    while (match := pattern.search(text, position)) is not None:
        span = _longest_valid(text, match.start(), match.end(), is_valid)
        if span:
            yield span
            position = span[1]
        else:
            position = match.end()


def find_ips(text: str) -> Iterable[Detection]:
    for match in _IPV4_RE.finditer(text):
        if _VERSION_BEFORE.search(text, max(0, match.start() - 12), match.start()):
            continue  # "version 12.17.6.20", "firmware 16.6.16.13": a version
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


class NationalIdRecogniser:
    """Finds the national ids of the given formats."""

    def __init__(self, formats: Sequence[NationalIdFormat]) -> None:
        # Formats written alike (eleven digits: PESEL, CPF, Belgian number) are matched
        # once, and tried in turn.
        by_pattern: dict[re.Pattern[str], list[NationalIdFormat]] = {}
        for id_format in formats:
            by_pattern.setdefault(id_format.pattern, []).append(id_format)
        grouped = [(pattern, tuple(formats)) for pattern, formats in by_pattern.items()]
        self._digit_first = tuple(g for g in grouped if g[1][0].digit_first)
        self._scanned = tuple(g for g in grouped if not g[1][0].digit_first)

    def find(self, text: str) -> Iterable[Detection]:
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
                if id_format.context is None and id_format.digit_first and has_context(
                        text, position, NOT_PERSONAL, 16):
                    continue  # "Part no. 300-45-6789"
                if id_format.context is not None and not has_context_around(
                        text, position, match.end(), id_format.context) and not (
                        id_format.bare and _bare_id_ok(text, position, match.end())):
                    continue
                if id_format.is_valid(value):
                    yield Detection(NATIONAL_ID, position, match.end(), value)
                    return


def _bare_id_ok(text: str, start: int, end: int) -> bool:
    """Whether a number could be a national id written without its name: no word
    nearby says it is a phone number, nor another kind of number."""
    return (not has_context(text, start, NOT_PERSONAL)
            and not has_context_after(text, end, NOT_PERSONAL, 24)
            and not has_context_around(text, start, end, PHONE_CUES)
            and not has_context_around(text, start, end, NUMBER_WORDS))


def _nearest(text: str, start: int, end: int, words: re.Pattern[str],
             window: int = CONTEXT_WINDOW, after: bool = True) -> int | None:
    """How far (characters) the nearest of ``words`` is from text[start:end], within
    ``window`` before it (and after it, unless not ``after``); None if none is."""
    # (From a little further back: a word that ends within the window may begin before.)
    distances = [start - m.end() for m in words.finditer(text, max(0, start - window - 24), start)
                 if start - m.end() <= window]
    following = words.search(text, end, end + window) if after else None
    if following:
        distances.append(following.start() - end)
    return min(distances) if distances else None


# Before a number written in national form, words that say it is no phone number:
# those of NOT_PERSONAL and the names of what is validated elsewhere.
# ("customer" and "account" not: "Customer service: 0800 123 456".)
_NOT_A_PHONE = _words(*(word for word in NOT_PERSONAL.pattern[
    len("(?<!\\w)(?:"):-len(")(?!\\w)")].split("|") if word not in ("customer", "account")),
    r"ssn", r"social security", r"iban", r"artikel\w*")


def other_number_before(text: str, start: int, window: int = 24) -> bool:
    """Whether a word shortly (``window``) before ``start`` says the number there is
    another kind of number ("Artikelnummer 0815-4711-23") and no word nearer to it says
    it is a phone number."""
    other = _nearest(text, start, start, _NOT_A_PHONE, window, after=False)
    if other is None:
        return False
    cue = _nearest(text, start, start, PHONE_CUES, after=False)
    return cue is None or other < cue


def phone_cue(text: str, start: int, end: int) -> bool:
    """Whether the words around text[start:end] say it is a phone number: a word of
    PHONE_CUES nearer than any of NOT_PERSONAL, or a word for "number" with none of
    NOT_PERSONAL nearby."""
    not_personal_before = _nearest(text, start, start, NOT_PERSONAL, 24, after=False)
    if not_personal_before is not None:  # "An order number like 4151234567"
        cue_before = _nearest(text, start, start, PHONE_CUES, after=False)
        if cue_before is None or not_personal_before < cue_before:
            return False
    not_personal = _nearest(text, start, end, NOT_PERSONAL, 24)
    cue = _nearest(text, start, end, PHONE_CUES)
    if cue is not None and (not_personal is None or cue < not_personal):
        return True
    return not_personal is None and _nearest(text, start, end, NUMBER_WORDS) is not None


_ISBN_X_RE = re.compile(r"[- ][Xx](?!\w)")
_ISBN_SEPARATOR_RE = re.compile(r"[- ]")


def is_isbn(text: str, start: int, end: int) -> bool:
    """Whether text[start:end], with an X check digit that may follow it, is an ISBN
    written in its hyphenated groups (0-12-382057-X, 978-3-16-148410-0), or comes
    right after the word ISBN."""
    if "isbn" in text[max(0, start - 12):start].lower():
        return True
    candidate = text[start:end]
    tail = _ISBN_X_RE.match(text, end)
    if tail:
        candidate += tail.group(0)
    groups = _ISBN_SEPARATOR_RE.split(candidate)
    return len(groups) in (4, 5) and stdnum_isbn.is_valid(candidate)


def _iban_valid(candidate: str) -> bool:
    # The country's length and format and the mod-97 check digits. Not the extra
    # national checks (check_country): the Belgian one looks bank codes up in a list
    # that misses real banks, and rejects, for one, the IBAN the standard shows.
    return stdnum_iban.is_valid(candidate, check_country=False)


def _is_card(candidate: str) -> bool:
    digits = candidate.replace(" ", "").replace("-", "")
    return (13 <= len(digits) <= 19 and _card_scheme_ok(digits)
            and _card_grouping_ok(candidate, digits) and luhn.is_valid(digits))


def _card_scheme_ok(digits: str) -> bool:
    """Whether the digits start like a card of a payment scheme (its issuer
    identification number), at that scheme's length."""
    length = len(digits)
    two, three, four = int(digits[:2]), int(digits[:3]), int(digits[:4])
    six = int(digits[:6])
    if digits[0] == "4":  # Visa
        return length in (13, 16, 19)
    if 51 <= two <= 55 or 2221 <= four <= 2720:  # Mastercard
        return length == 16
    if two in (34, 37):  # American Express
        return length == 15
    if four in (1800, 2131):  # JCB's old 15-digit ranges
        return length == 15
    if two == 35:  # JCB
        return 16 <= length <= 19
    if two in (36, 38, 39) or 300 <= three <= 305:  # Diners Club
        return 14 <= length <= 19
    if 2200 <= four <= 2204:  # Mir
        return 16 <= length <= 19
    if four == 6011 or 644 <= three <= 649 or two == 65:  # Discover (and RuPay's 65)
        return 16 <= length <= 19
    if two == 62 or two == 81:  # UnionPay
        return 16 <= length <= 19
    if (four in (5018, 5019, 5020, 5038, 5893, 6304, 6759, 6761, 6762, 6763)
            or 508500 <= six <= 508999 or 606985 <= six <= 607984
            or 608001 <= six <= 608500):  # Maestro, Dankort, RuPay
        return 13 <= length <= 19
    return False


def _card_grouping_ok(candidate: str, digits: str) -> bool:
    """Whether the digits are grouped the way cards are written: not at all, in fours
    (the last group maybe shorter), or in the issuer's own groups (American Express
    and Diners Club 4-6-5 and 4-6-4); with one kind of separator. An order number
    (610-4914779-2469383) is grouped otherwise."""
    if candidate == digits:
        return True
    separators = {c for c in candidate if not c.isdigit()}
    if len(separators) != 1:
        return False
    groups = [len(g) for g in candidate.split(separators.pop())]
    if groups in ([4, 6, 5], [4, 6, 4]):
        return True
    return all(g == 4 for g in groups[:-1]) and 1 <= groups[-1] <= 4


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
