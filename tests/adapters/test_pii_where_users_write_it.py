"""Personal data where users actually write it (issue 20): phone extensions, numbers
without spaces or cue words in front, adjacent IBANs, national ids without their name,
fewer false alarms; and the quality targets on the hand-written corpus and on the two
corpora generated with Faker (tests/data/pii_corpus_generated.make.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from adapters.pii_detector import LibraryPiiDetector
from adapters.pii_recognisers import nino_valid
from application.pii import CARD, EMAIL, ENTITY_TYPES, IBAN, IP, NATIONAL_ID, PHONE

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
CORPORA = ("pii_corpus.jsonl", "pii_corpus_generated.jsonl", "pii_corpus_heldout.jsonl")
# Other seeds and other sentences, some without any word that names the data: reported
# by pii_bench.py, held to what the detector does (a bare digit run in a sentence
# without a phone word is not taken: order numbers look the same).
WORDING = "pii_corpus_heldout_wording.jsonl"

DETECTOR = LibraryPiiDetector()


def found(text: str) -> list[tuple[str, str]]:
    return [(d.entity_type, d.value) for d in DETECTOR.detect(text)]


@pytest.mark.parametrize("text,value", [
    ("+1-572-436-5313x41865", "+1-572-436-5313x41865"),
    ("Call me at 206.687.5781x75382.", "206.687.5781x75382"),
    ("Tel: (479)472-5051x5395", "(479)472-5051x5395"),
    ("Call +1 212-555-0198 ext. 753 after 5pm", "+1 212-555-0198 ext. 753"),
    ("Call +1 212-555-0198 #123 now", "+1 212-555-0198 #123"),
    ("Tel. 030 901820 Durchwahl 12", "030 901820 Durchwahl 12"),
    ("Appelez le 01 99 00 12 35 poste 204", "01 99 00 12 35 poste 204"),
])
def test_phone_numbers_with_their_extension_are_masked_whole(text, value):
    assert found(text) == [(PHONE, value)]


@pytest.mark.parametrize("text,value", [
    ("Mon numéro, c'est le 0181000264", "0181000264"),
    ("Sono raggiungibile al 08749918051", "08749918051"),
    ("Is 5576444571 a valid phone number format?", "5576444571"),  # the cue after it
    ("Mijn telefoonnummer is 0201234567.", "0201234567"),
    ("0612345678 is mijn mobiel.", "0612345678"),
    ("Meine Nummer: 030901820", "030901820"),
    ("Mi número es 612345678.", "612345678"),
    ("Mitt telefonnummer är 0701234567.", "0701234567"),
    ("(0360) 721729 is mijn mobiel.", "(0360) 721729"),  # valid, grouped otherwise
    ("Kan du ringa 0898-780 11?", "0898-780 11"),
    ("Die Zentrale: (02018) 85133", "(02018) 85133"),  # an area code in parentheses
])
def test_numbers_without_spaces_with_a_cue_word_before_or_after(text, value):
    assert found(text) == [(PHONE, value)]


@pytest.mark.parametrize("text", [
    "An order number like 4151234567 is not a phone without context.",
    "Is 016344747 the routing number of Chase?",
    "Ist 029859944 die ABA-Nummer der Bank?",
    "Bestellnummer 0301234567 ist unterwegs.",
    "Die Artikelnummer 0815-4711-23 ist ausverkauft.",  # grouped like a phone, even
])
def test_a_number_that_a_word_says_is_something_else_is_no_phone(text):
    assert found(text) == []


def test_a_phone_cue_nearer_than_the_other_word_wins():
    assert found("Invoice questions: 020 7946 0959") == [(PHONE, "020 7946 0959")]
    assert found("Customer service: 0800 123 456") == [(PHONE, "0800 123 456")]
    assert found("Order 12345 shipped, call me on 030 901820") == [(PHONE, "030 901820")]
    assert found("Rechnung anbei, Tel. 030901820") == [(PHONE, "030901820")]


def test_adjacent_ibans_cards_and_numbers_are_each_found():
    assert found("NL87RCYB3990998171 Kun je checken of NL34 IFZF 7442 1235 75 een geldige "
                 "IBAN is?") == [(IBAN, "NL87RCYB3990998171"), (IBAN, "NL34 IFZF 7442 1235 75")]
    assert found("DE89370400440532013000 GB29NWBK60161331926819") == [
        (IBAN, "DE89370400440532013000"), (IBAN, "GB29NWBK60161331926819")]
    assert found("Cards 4111 1111 1111 1111 5555 5555 5555 4444 both charged") == [
        (CARD, "4111 1111 1111 1111"), (CARD, "5555 5555 5555 4444")]
    assert found("Call +44 20 7946 0958 or +33 6 12 34 56 78.") == [
        (PHONE, "+44 20 7946 0958"), (PHONE, "+33 6 12 34 56 78")]


@pytest.mark.parametrize("text,value", [
    ("Vul 327905463 in op het formulier", "327905463"),  # BSN
    ("Wpisz 44051401359 w formularzu.", "44051401359"),  # PESEL
    ("Coloque 39053344705 no formulário.", "39053344705"),  # CPF
    ("Fyll i 640720-5324 i formuläret.", "640720-5324"),  # Swedish personnummer
    ("Mitt personnummer är 19640720-5324.", "19640720-5324"),
    ("Kan du kolla 6407205324, mitt personnummer?", "6407205324"),  # its name after it
    ("My National Insurance number is AB 12 34 56 C.", "AB 12 34 56 C"),
    ("NINO: PW473953A", "PW473953A"),
    ("358384023 is mijn BSN.", "358384023"),  # the name after the number
])
def test_national_ids_without_a_name_in_front(text, value):
    assert found(text) == [(NATIONAL_ID, value)]


def test_national_ids_that_a_word_says_are_other_numbers_are_left_alone():
    assert found("Ordernummer 358384023 is verzonden.") == []
    assert found("Part no. 300-45-6789 is back in stock.") == []
    assert found("640720-5325 fails its check digit.") == []
    # prefixes HMRC never issues (ZZ, Faker's), letters it does not use (D, F, I, Q, U, V)
    assert found("NI ZZ 12 34 56 C, QQ 12 34 56 C, AD 12 34 56 C") == []


def test_the_national_insurance_validator():
    assert nino_valid("AB123456C") and nino_valid("ab 12 34 56 d")
    for invalid in ("ZZ123456C", "GB123456A", "DA123456A", "AO123456A", "AB123456E",
                    "AB12345C", "AB1234567C"):
        assert not nino_valid(invalid), invalid


@pytest.mark.parametrize("text", [
    "After updating to version 12.17.6.20 the app crashes.",
    "The router runs firmware 16.6.16.13, is that the latest?",
    "Windows build 10.0.19045.3803 breaks the driver.",
    "Fixed in v4.2.1.7 and 1.2.3.4.5.",
    "My order 610-4914779-2469383 never arrived.",  # Luhn-valid, grouped like no card
    "6696 9188 6534 1670 is on the back.",  # Luhn-valid, no issuer starts with 6696
    "The gift card 6481 9942 9019 5469 shows a zero balance.",
    "Can you summarise 0-12-382057-X for me?",  # an ISBN with a valid check digit
    "The book is ISBN 0-7046-5138-6.",
    "Ship it to 4111-11111-111-1111 please.",  # a card's digits, grouped like no card
])
def test_look_alikes_are_left_alone(text):
    assert found(text) == []


def test_cards_grouped_as_their_issuer_does_are_still_found():
    assert found("Amex 3782-822463-10005") == [(CARD, "3782-822463-10005")]
    assert found("Diners 3056 930902 5904") == [(CARD, "3056 930902 5904")]
    assert found("JCB 1800-5996-3709-751") == [(CARD, "1800-5996-3709-751")]
    assert found("Charge my order to 4111 1111 1111 1111") == [(CARD, "4111 1111 1111 1111")]
    assert found("IP 10.20.30.40, version 2") == [(IP, "10.20.30.40")]


# --- the corpora ---------------------------------------------------------------------

def load(name: str) -> list[dict]:
    with (DATA / name).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def scores(rows: list[dict]) -> tuple[dict[str, float], dict[str, float], float]:
    """Recall and precision per type (exact spans), and the share of look-alike
    snippets (or, in the hand-written corpus, hard negatives) with a detection."""
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    negatives = negatives_hit = 0
    detector = LibraryPiiDetector(cache_size=0)
    for row in rows:
        expected = {(s["type"], s["start"], s["end"]) for s in row["spans"]}
        got = {(d.entity_type, d.start, d.end) for d in detector.detect(row["text"])}
        tp.update(kind for kind, *_ in expected & got)
        fp.update(kind for kind, *_ in got - expected)
        fn.update(kind for kind, *_ in expected - got)
        if "lookalike" in row["tags"] or not row["spans"]:
            negatives += 1
            negatives_hit += bool(got)
    recall = {k: tp[k] / (tp[k] + fn[k]) if tp[k] + fn[k] else 1.0 for k in ENTITY_TYPES}
    precision = {k: tp[k] / (tp[k] + fp[k]) if tp[k] + fp[k] else 1.0 for k in ENTITY_TYPES}
    return recall, precision, negatives_hit / negatives


@pytest.mark.parametrize("name", CORPORA)
def test_quality_targets_on_each_corpus(name):
    """Recall at least 0.95 for e-mail, phone, card and IBAN and 0.90 for national ids;
    precision at least 0.95 for every type; on the generated corpora, at most 3 % of the
    look-alike snippets with a false detection (on the hand-written one, whose hard
    negatives were written to be hard, at most 5 %)."""
    recall, precision, false_alarms = scores(load(name))
    for kind in (EMAIL, PHONE, CARD, IBAN):
        assert recall[kind] >= 0.95, (kind, recall[kind])
    assert recall[NATIONAL_ID] >= 0.90, recall[NATIONAL_ID]
    for kind in ENTITY_TYPES:
        assert precision[kind] >= 0.95, (kind, precision[kind])
    assert false_alarms <= (0.05 if name == "pii_corpus.jsonl" else 0.03), false_alarms


def test_quality_on_the_corpus_with_other_wording():
    recall, precision, false_alarms = scores(load(WORDING))
    assert recall[PHONE] >= 0.90, recall[PHONE]
    for kind in (EMAIL, CARD, IBAN):
        assert recall[kind] >= 0.95, (kind, recall[kind])
    assert recall[NATIONAL_ID] >= 0.90, recall[NATIONAL_ID]
    for kind in ENTITY_TYPES:
        assert precision[kind] >= 0.95, (kind, precision[kind])
    assert false_alarms <= 0.03, false_alarms


@pytest.mark.parametrize("name", (*CORPORA[1:], WORDING))
def test_the_generated_corpora_cover_ten_locales_and_look_alikes(name):
    rows = load(name)
    assert len(rows) >= 600
    assert {r["lang"] for r in rows} == {"en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT",
                                         "nl_NL", "pl_PL", "pt_BR", "sv_SE"}
    assert sum("lookalike" in r["tags"] for r in rows) >= 150
    kinds = Counter(s["type"] for r in rows for s in r["spans"])
    assert set(kinds) == set(ENTITY_TYPES) and min(kinds.values()) >= 30
    for row in rows:
        for span in row["spans"]:
            assert row["text"][span["start"]:span["end"]] == span["value"], row["id"]
    assert not {r["text"] for r in rows} & {r["text"] for r in load("pii_corpus.jsonl")}


def test_the_generated_corpora_are_what_their_script_writes():
    pytest.importorskip("faker")
    result = subprocess.run(
        [sys.executable, str(DATA / "pii_corpus_generated.make.py"), "--check"],
        capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
