"""Personal data detection: quality on the labelled corpus, and speed.

    python tests/load/pii_bench.py [--errors] [--repeat=200]

Quality: every snippet of each corpus is run through the detector; a detection counts
as right when its type, start and end are exactly those of a labelled span. Prints
precision, recall and F1 per entity type and overall, and how many of the corpus's
hard negatives (snippets with no personal data) had something masked, for:

- tests/data/pii_corpus.jsonl, written by hand (the detector was tuned on it);
- tests/data/pii_corpus_generated.jsonl, generated with Faker in ten locales
  (tests/data/pii_corpus_generated.make.py), with its look-alike snippets (versions,
  order numbers, ISBNs, dates, amounts, tracking numbers: no personal data);
- tests/data/pii_corpus_heldout.jsonl, the same generator with other seeds: held out;
- tests/data/pii_corpus_heldout_wording.jsonl, other seeds and other sentences (some
  without any word that names the data): held out too.

``--errors`` lists every miss and every false detection (``--corpus`` picks one).

Speed: microseconds per ``detect`` of a typical 200-character message (with and
without personal data), and per masking session of a whole model call with
8,000 tokens of history (counted with o200k_base): system prompt, history turns
and new message masked with one mapping, then the reply unmasked. Cold: nothing
cached (a conversation this worker has not seen); warm: the history's detections
cached by an earlier request, the new message not.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from adapters.pii_detector import LibraryPiiDetector
from application.pii import ENTITY_TYPES, PiiMasker

CORPUS = ROOT / "tests" / "data" / "pii_corpus.jsonl"
CORPORA = {
    "hand-written": CORPUS,
    "generated": ROOT / "tests" / "data" / "pii_corpus_generated.jsonl",
    "held-out": ROOT / "tests" / "data" / "pii_corpus_heldout.jsonl",
    "held-out-wording": ROOT / "tests" / "data" / "pii_corpus_heldout_wording.jsonl",
}

MESSAGE_WITH_PII = (
    "Hi! Could you draft a short reply to Ms. Dupont? She wants the refund sent to "
    "FR76 3000 6000 0112 3456 7890 189 and asked me to call her on +33 6 12 34 56 78."
)
MESSAGE_WITHOUT_PII = (
    "Hi! Could you draft a short reply to Ms. Dupont? She wants to know whether order "
    "2024-118734 of 12 May (1 299,00 EUR, version 2.4) can still be returned this week."
)
PROSE = (
    "Thanks for the detailed answer. I went through the steps you suggested and most of "
    "them worked, but the build still fails at the last stage with exit code 137 after "
    "about 12 minutes; memory peaks at 3.5 GB on a machine with 4 GB. I also tried the "
    "flag from version 2.14.3 of the tool, the one released on 2024-03-15, with no luck. "
)


def load_corpus(path: Path = CORPUS) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def evaluate(detector: LibraryPiiDetector, corpus: list[dict], show_errors: bool,
             path: Path = CORPUS) -> None:
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    negatives_hit = negatives = lookalikes_hit = lookalikes = 0
    for row in corpus:
        expected = {(s["type"], s["start"], s["end"]) for s in row["spans"]}
        found = {(d.entity_type, d.start, d.end) for d in detector.detect(row["text"])}
        for kind, *_ in expected & found:
            tp[kind] += 1
        for kind, start, end in found - expected:
            fp[kind] += 1
            if show_errors:
                print(f"  FALSE  {row['id']:8} {kind:11} {row['text'][start:end]!r}")
        for kind, start, end in expected - found:
            fn[kind] += 1
            if show_errors:
                print(f"  MISSED {row['id']:8} {kind:11} {row['text'][start:end]!r}")
        if not row["spans"]:
            negatives += 1
            negatives_hit += bool(found)
        if "lookalike" in row["tags"]:
            lookalikes += 1
            lookalikes_hit += bool(found)
    print(f"\nDetection quality on {path.relative_to(ROOT)} ({len(corpus)} snippets, "
          "exact spans)\n")
    print(f"{'type':12} {'labelled':>8} {'found':>6} {'TP':>5} {'FP':>4} {'FN':>4} "
          f"{'precision':>9} {'recall':>7} {'F1':>6}")
    for kind in (*ENTITY_TYPES, "overall"):
        if kind == "overall":
            t, f_p, f_n = sum(tp.values()), sum(fp.values()), sum(fn.values())
        else:
            t, f_p, f_n = tp[kind], fp[kind], fn[kind]
        precision = t / (t + f_p) if t + f_p else 1.0
        recall = t / (t + f_n) if t + f_n else 1.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        print(f"{kind:12} {t + f_n:8} {t + f_p:6} {t:5} {f_p:4} {f_n:4} "
              f"{precision:9.3f} {recall:7.3f} {f1:6.3f}")
    print(f"\nhard negatives (snippets without personal data) with a false detection: "
          f"{negatives_hit} of {negatives}")
    if lookalikes:
        print(f"look-alike snippets (versions, order numbers, ISBNs, dates...) with a false "
              f"detection: {lookalikes_hit} of {lookalikes} ({lookalikes_hit / lookalikes:.1%})")


def timed(fn, repeat: int) -> tuple[float, float]:
    """Median and 95th percentile in microseconds."""
    fn()  # warm-up
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1e6)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95) - 1]


def history_of(tokens: int, corpus: list[dict], every: int = 1) -> list[tuple[str, str]]:
    """Turns (user, assistant) of about ``tokens`` tokens: prose with the corpus's
    snippets (personal data and hard negatives) mixed in, in every ``every``-th turn."""
    from adapters.tiktoken_counter import TiktokenCounter

    count = TiktokenCounter().count
    turns: list[tuple[str, str]] = []
    total, index = 0, 0
    while total < tokens:
        snippet = corpus[index % len(corpus)]["text"] if index % every == 0 else ""
        user = PROSE + snippet + " " + PROSE
        reply = PROSE * 2 + (corpus[(index + 7) % len(corpus)]["text"] if snippet else PROSE)
        turns.append((user, reply))
        total += count(user) + count(reply)
        index += 1
    return turns


def speed(corpus: list[dict], repeat: int) -> None:
    cold = PiiMasker(LibraryPiiDetector(cache_size=0))
    warm = PiiMasker(LibraryPiiDetector())
    reply = "Here is a draft for [EMAIL_1]: I will call you on [PHONE_1] today. " * 4
    runs = iter(range(10**9))

    def history(every: int) -> list[str]:
        texts = ["You are a helpful assistant. Answer briefly."]
        for user, answer in history_of(8000, corpus, every):
            texts += [user, answer]
        return texts

    def whole_call(masker: PiiMasker, texts: list[str]) -> None:
        session = masker.session()
        # A new message each time: in the warm case only the history was seen before.
        session.mask_all([*texts, f"{MESSAGE_WITH_PII} (#{next(runs)})"])
        session.unmask(reply)

    dense, typical = history(1), history(5)
    whole_call(warm, dense)
    detector = cold.detector
    print(f"\nSpeed (median / p95 of {repeat} runs, one core; cold = no cache)\n")
    for label, fn, times in (
        (f"detect, {len(MESSAGE_WITH_PII)}-char message with PII",
         lambda: detector.detect(MESSAGE_WITH_PII), repeat),
        (f"detect, {len(MESSAGE_WITHOUT_PII)}-char message without PII",
         lambda: detector.detect(MESSAGE_WITHOUT_PII), repeat),
        ("mask + unmask, one session, the message with PII",
         lambda: (s := cold.session(), s.unmask(s.mask(MESSAGE_WITH_PII))), repeat),
        ((f"whole call, cold, PII-dense history ({len(dense) + 1} texts, "
          f"{sum(map(len, dense))} chars)"), lambda: whole_call(cold, dense), max(5, repeat // 20)),
        ((f"whole call, cold, typical history ({len(typical) + 1} texts, "
          f"{sum(map(len, typical))} chars)"), lambda: whole_call(cold, typical),
         max(5, repeat // 20)),
        ("whole call, warm: PII-dense history cached, a new message",
         lambda: whole_call(warm, dense), repeat),
    ):
        median, p95 = timed(fn, times)
        print(f"  {label:66} {median:9.0f} µs {p95:9.0f} µs")
    for name, texts in (("PII-dense", dense), ("typical", typical)):
        session = cold.session()
        session.mask_all(texts)
        print(f"  8,000-token {name} history: a corpus snippet in every "
              f"{'' if texts is dense else '5th '}turn, masked "
              f"{dict(sorted(session.found.items()))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--errors", action="store_true", help="list misses and false detections")
    parser.add_argument("--repeat", type=int, default=200, help="runs per speed figure")
    parser.add_argument("--tag", help="only the snippets with this tag (e.g. holdout)")
    parser.add_argument("--corpus", choices=list(CORPORA), action="append",
                        help="only this corpus (may be repeated; default all)")
    parser.add_argument("--no-speed", action="store_true", help="quality only")
    args = parser.parse_args()
    started = time.perf_counter()
    detector = LibraryPiiDetector()
    corpus = load_corpus()
    detector.detect(MESSAGE_WITH_PII)
    print(f"detector built and first call in {(time.perf_counter() - started) * 1000:.0f} ms")
    for name in args.corpus or CORPORA:
        path = CORPORA[name]
        rows = corpus if path == CORPUS else load_corpus(path)
        evaluate(detector, [r for r in rows if not args.tag or args.tag in r["tags"]],
                 args.errors, path)
    if not args.no_speed:
        speed(corpus, args.repeat)


if __name__ == "__main__":
    main()
