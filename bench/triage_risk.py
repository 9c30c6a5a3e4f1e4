"""Risk reader: recall per category, everyday false positives, messages/s on one core.

    .venv/bin/python bench/triage_risk.py [--runs 5] [--messages 20000] [--misses]
    .venv/bin/python bench/triage_risk.py --write-verdicts   # after a deliberate lexicon change

Reads the labelled set in ``bench/data/``: ``risk_risk.txt`` (category TAB message: phrasings of
students in danger, in many spellings) and ``risk_everyday.txt`` (everyday messages written to
tempt a naive matcher). A message counts as caught when the detector calls it urgent (keyword or
risk). ``--write-verdicts`` writes the detector's whole verdict on every labelled message
(``keywords`` and ``risks``) to ``risk_verdicts.json``, which ``tests/test_risk.py`` holds the
detector to: a speed change must not change one of them.

Speed: ``Detector.detect`` with the shipped ``risk.yaml`` over the typical-message corpus of
``bench/triage_detector.py``, and the keyword-only detector (no lexicon) over the same corpus in
the same run, runs alternating; CPU time of this process (``time.process_time``), median of
``--runs``. Also: how many messages the pre-filter passes to the analyser, and how many sentences
SudachiPy actually read (the rest came from its cache).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from soudan_shared.config import RISK_CATEGORIES
from soudan_triage.risk import load_lexicon
from soudan_triage.urgency import Detector, _letters
from triage_detector import corpus, pin_to_one_core

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bench" / "data"
VERDICTS = DATA / "risk_verdicts.json"


def labelled() -> tuple[list[tuple[str, str]], list[str]]:
    """(category, message) of the risk phrasings, and the everyday messages."""
    risky = [
        (category, text)
        for category, text in (
            line.split("\t", 1)
            for line in (DATA / "risk_risk.txt").read_text(encoding="utf-8").splitlines()
            if line.strip()
        )
    ]
    everyday = [
        line
        for line in (DATA / "risk_everyday.txt").read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    return risky, everyday


def verdicts(detector: Detector) -> dict[str, dict[str, object]]:
    """The verdict on every labelled message: its keywords and risks."""
    risky, everyday = labelled()
    out: dict[str, dict[str, object]] = {}
    for text in [t for _, t in risky] + everyday:
        detection = detector.detect(text)
        out[text] = {
            "keywords": list(detection.keywords),
            "risks": [r.to_json() for r in detection.risks],
        }
    return out


def cpu_rate(work: Callable[[str], object], messages: list[str]) -> float:
    start = time.process_time()
    for m in messages:
        work(m)
    return len(messages) / (time.process_time() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--misses", action="store_true", help="print what was missed/flagged")
    parser.add_argument("--write-verdicts", action="store_true", help=f"write {VERDICTS.name}")
    args = parser.parse_args()

    detector = Detector(lexicon=load_lexicon(ROOT / "deploy" / "config"))
    if args.write_verdicts:
        written = verdicts(detector)
        VERDICTS.write_text(
            json.dumps(written, ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
        )
        print(f"wrote {len(written)} verdicts to {VERDICTS.relative_to(ROOT)}")
        return

    pinned = pin_to_one_core()
    risky, everyday = labelled()
    total: Counter[str] = Counter()
    caught: Counter[str] = Counter()
    for category, text in risky:
        total[category] += 1
        if detector.detect(text).urgent:
            caught[category] += 1
        elif args.misses:
            print(f"  missed [{category}] {text}")
    print(f"labelled set: {len(risky)} risk phrasings, {len(everyday)} everyday messages")
    for category in RISK_CATEGORIES:
        print(
            f"  recall {category}: {caught[category]}/{total[category]} "
            f"= {caught[category] / max(total[category], 1):.0%}"
        )
    print(
        f"  recall, all risk phrasings: {sum(caught.values())}/{len(risky)} "
        f"= {sum(caught.values()) / len(risky):.0%}"
    )
    flagged = [t for t in everyday if detector.detect(t).urgent]
    if args.misses:
        for text in flagged:
            print(f"  flagged {text}")
    print(
        f"  everyday flagged: {len(flagged)}/{len(everyday)} = {len(flagged) / len(everyday):.1%}"
    )

    messages = corpus(args.messages, 1)
    lexicon = load_lexicon(ROOT / "deploy" / "config")
    timed = {
        "keywords + risk reader": Detector(lexicon=lexicon),
        "the same, analyser cache off": Detector(lexicon=lexicon, risk_cache=0),
        "keywords only": Detector(),
    }
    for d in timed.values():
        for m in messages[:2000]:
            d.detect(m)  # warm up
    rates: dict[str, list[float]] = {label: [] for label in timed}
    for _ in range(args.runs):
        for label, d in timed.items():
            rates[label].append(cpu_rate(d.detect, messages))
    print(f"speed: {len(messages)} typical messages, {pinned}, CPU time, {args.runs} runs each")
    medians = {label: statistics.median(runs) for label, runs in rates.items()}
    for label, runs in rates.items():
        print(
            f"  {label}: median {medians[label]:,.0f} messages/s "
            f"(min {min(runs):,.0f}, max {max(runs):,.0f}), "
            f"{1e6 / medians[label]:.1f} µs CPU per message"
        )
    base = medians["keywords only"]
    for label in list(timed)[:2]:
        print(f"  ratio {label} / keywords only: {medians[label] / base:.2f}")
    reader = timed["keywords + risk reader"].risk_reader
    read = sum(reader.might_hold(_letters(m), m) for m in messages) if reader else 0
    print(f"  messages the pre-filter passes on: {read} of {len(messages)}")
    if reader:
        print(f"  analyser: {reader.cache_info()} (all runs and the warm-up)")
    median = medians["keywords + risk reader"]
    print("target ≥ 20,000 messages/s:", "met" if median >= 20_000 else "NOT MET")


if __name__ == "__main__":
    main()
