"""Urgency detector throughput: messages per second on one core.

    .venv/bin/python bench/triage_detector.py [--messages 50000] [--runs 5] [--seed 1]

Builds a corpus of typical student messages of 1–200 characters (everyday chat, with about one
in twenty carrying a keyword in some written form: kanji, kana, half-width, spaced, slang),
pins the process to one CPU where the OS allows it, and times ``Detector.detect`` over the
whole corpus ``--runs`` times. Prints the median and the spread, per length band too, and the
same corpus through NFKC alone as a baseline from the same run (the machine is shared: compare
the ratio, not only the absolute figure). The target is ≥ 50,000 messages/s.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path

from soudan_triage.risk import load_lexicon
from soudan_triage.urgency import Detector

EVERYDAY = [
    "きょう学校でともだちとけんかしちゃって、どうしたらいいかわからない。",
    "先生にも相談しにくいし、家でもなんか話しづらい",
    "テストの点がわるくて親におこられた😢",
    "部活やめたいけどみんなに言えない…",
    "なんか最近ずっとねむれなくて、朝起きるのがつらいです。",
    "学校に行きたくない日が増えてきました",
    "わたしね、きょうね、すごくたのしかったの！",
    "買い物しに行くって言ったのに来なかった",
    "ありがとう",
    "はい",
    "うん",
    "ねえきいて",
    "クラスのLINEグループで無視されてる気がする",
    "進路のことで親と話が合わない。私立に行きたいけどお金のことを言われる",
    "スマホ取り上げられた",
    "ｗｗｗ",
    "だれかに話を聞いてほしくて",
    "塾の帰りが遅くて疲れた",
    "老舗のお店でバイトしてる",
    "勉強しねーよって言ったら怒られた",
]
URGENT = [
    "もう死にたい",
    "し　に　た　い",
    "ｼﾈって言われた",
    "タヒにたい",
    "いじめられてる",
    "親に暴力をふるわれる",
    "リスカしちゃった",
    "消えたい",
    "だれか助けて",
    "じさつ",
    "死.に.た.い",
    "ぎゃくたい",
]


def corpus(size: int, seed: int) -> list[str]:
    rng = random.Random(seed)  # noqa: S311 - a reproducible corpus, not security
    messages = []
    for _ in range(size):
        target = rng.choice((rng.randint(1, 20), rng.randint(1, 80), rng.randint(1, 200)))
        parts: list[str] = []
        while sum(map(len, parts)) < target:
            pool = URGENT if rng.random() < 0.05 / max(1, len(parts) + 1) else EVERYDAY
            parts.append(rng.choice(pool))
        messages.append("".join(parts)[:target])
    return messages


def per_second(work: Callable[[str], object], messages: list[str]) -> float:
    started = time.perf_counter()
    for message in messages:
        work(message)
    return len(messages) / (time.perf_counter() - started)


def pin_to_one_core() -> str:
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return f"pinned to CPU {cpu}"
    return "not pinned (no sched_setaffinity)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    pinned = pin_to_one_core()
    detector = Detector(lexicon=load_lexicon(Path("deploy/config")))
    messages = corpus(args.messages, args.seed)
    urgent = sum(detector.detect(m).urgent for m in messages)
    per_second(detector.detect, messages[:2000])  # warm up

    def with_matches(message: str) -> object:
        return detector.detect(message).matches

    def report(label: str, work: Callable[[str], object]) -> float:
        runs = [per_second(work, messages) for _ in range(args.runs)]
        median = statistics.median(runs)
        print(
            f"{label}: median {median:,.0f} messages/s over {args.runs} runs "
            f"(min {min(runs):,.0f}, max {max(runs):,.0f})"
        )
        return median

    print(
        f"corpus: {len(messages)} messages, {urgent} urgent, mean length "
        f"{statistics.mean(map(len, messages)):.0f} chars; {pinned}"
    )
    nfkc = report("baseline, NFKC alone", lambda m: unicodedata.normalize("NFKC", m))
    median = report("detect (urgent? which keywords?)", detector.detect)
    report("detect + matches (the detect command)", with_matches)
    print(f"detect / NFKC alone = {median / nfkc:.2f}")
    for low, high in ((1, 20), (21, 80), (81, 200)):
        band = [m for m in messages if low <= len(m) <= high]
        rate = statistics.median(per_second(detector.detect, band) for _ in range(args.runs))
        print(f"  {low:>3}–{high:<3} chars: {len(band):>6} messages, median {rate:,.0f} messages/s")
    print("target ≥ 50,000 messages/s:", "met" if median >= 50_000 else "NOT MET")


if __name__ == "__main__":
    main()
