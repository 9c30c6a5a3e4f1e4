"""The risk reader: what students in danger write beyond the 14 keywords of 第5(4).

Pure (no I/O once built). The lexicon (``risk.yaml`` in the configuration directory) names words
in their dictionary form with a category (自殺念慮, 方法・手段, 自傷, 暴力・虐待) and a structure:
a word, a sequence of words, a word *near* another in the same sentence, and a condition on the
word's form (``intent``: 〜たい, volitional, 〜ばいい/〜たら楽/〜方がいい; ``passive``: 〜られる,
〜される, 〜てくる; ``negative``; ``amount``: 全部, いっぱい, 10錠 …), and context words that
make it everyday text (an accident, a game, a dream).

Every inflected form is read through SudachiPy with sudachidict-core: each morpheme matches by
its surface, its dictionary form and its normalized form (のんじゃった → 飲む + ちゃう + た), so
the lexicon never lists conjugations.

Speed: the analyser runs only where a character-level pre-filter says a risk could match. From
the lexicon, each entry gets its *requirements*: sets of stems (kanji stems, and kana readings
with the first letter of each inflection) of which a sentence the entry matches holds one each
(the word, the word it must be near, the marks of an amount or of the passive). One
Aho-Corasick automaton (pyahocorasick) finds all the stems in a message's letters; only when
some entry has all of its requirements met is the message read, and then only the sentences
(windows around a stem) in which that holds, once each: the analyser's readings of recent
sentences are cached. Romaji (``sinitai``, ``kusuri zenbu nonda``) is turned into kana first
and read the same way.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import ahocorasick
import jaconv
import yaml
from soudan_shared.config import RISK_CATEGORIES
from sudachipy import Dictionary, SplitMode

__all__ = ["Risk", "RiskReader", "load_lexicon"]

LEXICON_FILE: Final = "risk.yaml"
_NEEDS: Final = frozenset({"any", "intent", "passive", "negative", "amount"})
_WINDOW: Final = 32  # characters analysed either side of a pre-filter hit
_NEAR: Final = 8  # morphemes between a word and the word it must be near
_CHAIN: Final = 8  # morphemes after a verb read for its form (auxiliaries, て, しまう …)
_SENTENCE_END = re.compile(r"[。！？!?\n]+")
_ROMAJI_RUN = re.compile(r"[a-z][a-z\s.'-]{3,}[a-z]")
_OD = re.compile(r"od(?<![a-z]od)(?![a-z])")  # written so that ``re`` skips to an o
# Five latin letters (romaji?) or od; written so that ``re`` skips to a latin letter.
_ROMAJI_OR_OD = re.compile(r"[a-z](?:[a-z]{4}|(?<=o)d(?<![a-z]od)(?![a-z]))")
# What an amount can be written with (need: amount): 全部 … and the numbers (十 reads as 10).
_NUMERALS: Final = frozenset("0123456789〇一二三四五六七八九十百千万")
# What 〜られる/〜される/〜てくる leave in the text (need: passive, see ``_passive``).
_PASSIVE_MARKS: Final = ("れ", *(t + k for t in "てで" for k in "来きくこ"))
_NOT_LETTER = re.compile(r"[\W_]+")


@dataclass(frozen=True)
class Risk:
    """One risk found: its category, the lexicon's term, and the text that matched."""

    category: str
    term: str
    match: str

    def to_json(self) -> dict[str, str]:
        return {"category": self.category, "term": self.term, "match": self.match}


@dataclass(frozen=True)
class _Entry:
    category: str
    term: str
    words: tuple[tuple[str, ...], ...]
    near: tuple[frozenset[str], ...]  # each: one of these words must be near
    need: str
    unless: frozenset[str]
    not_after: frozenset[str] = frozenset()  # parts of speech or words not right before it
    hints: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Stem:
    """A stem the pre-filter reads for: its length, whether the analyser reads the sentence
    around it (a *window* stem), and the (entry, requirement) pairs it meets."""

    length: int
    window: bool
    needs: frozenset[tuple[int, int]]


@dataclass(frozen=True)
class _Morpheme:
    keys: frozenset[str]
    pos: str
    form: str
    begin: int
    end: int


def load_lexicon(config_dir: Path) -> Mapping[str, Any] | None:
    """``risk.yaml`` of ``config_dir``, or None if there is none (keywords only)."""
    path = config_dir / LEXICON_FILE
    if not path.is_file():
        return None
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{LEXICON_FILE}: expected a mapping")
    return data


def _entries(lexicon: Mapping[str, Any]) -> list[_Entry]:
    if "categories" in lexicon and tuple(lexicon["categories"] or ()) != RISK_CATEGORIES:
        raise ValueError(f"{LEXICON_FILE}: the categories are {', '.join(RISK_CATEGORIES)}")
    entries = []
    for i, raw in enumerate(lexicon.get("entries") or ()):
        category = raw.get("category")
        if category not in RISK_CATEGORIES:
            raise ValueError(f"{LEXICON_FILE} entry {i + 1}: unknown category {category!r}")
        need = raw.get("need", "any")
        if need not in _NEEDS:
            raise ValueError(f"{LEXICON_FILE} entry {i + 1}: unknown need {need!r}")
        words = tuple(tuple(str(w).split()) for w in raw.get("words") or ())
        if not words:
            raise ValueError(f"{LEXICON_FILE} entry {i + 1}: no words")
        entries.append(
            _Entry(
                category=category,
                term=str(raw.get("term") or words[0][0]),
                words=words,
                near=_near_groups(raw.get("near") or (), i),
                need=need,
                unless=frozenset(str(w) for w in raw.get("unless") or ()),
                not_after=frozenset(str(w) for w in raw.get("not_after") or ()),
                hints=tuple(_fold(str(w)) for w in raw.get("hints") or ()),
            )
        )
    return entries


def _near_groups(near: Sequence[Any], i: int) -> tuple[frozenset[str], ...]:
    """``near``: a list of words (one of them), or a list of such lists (one of each)."""
    if all(isinstance(w, list) for w in near):
        return tuple(frozenset(str(w) for w in group) for group in near if group)
    if any(isinstance(w, list) for w in near):
        raise ValueError(f"{LEXICON_FILE} entry {i + 1}: near mixes words and lists of words")
    return (frozenset(str(w) for w in near),) if near else ()


# Godan endings → the first letter of each inflection (飲む: のま のみ のむ のめ のも のん).
_GODAN_ROWS: Final = {
    "う": "わいうえおっ",
    "く": "かきくけこい",
    "ぐ": "がぎぐげごい",
    "す": "さしすせそ",
    "つ": "たちつてとっ",
    "ぬ": "なにぬねのん",
    "ぶ": "ばびぶべぼん",
    "む": "まみむめもん",
    "る": "らりるれろっ",
}
_KANJI_RUN = re.compile("^[\u3005\u4e00-\u9fff]+")
_KANJI = re.compile("[\u3005\u4e00-\u9fff]")


# Katakana → hiragana. Small kana stay small: きょう is not いき + よう.
_FOLD_TABLE: Final = str.maketrans({chr(c): chr(c - 0x60) for c in range(0x30A1, 0x30F7)})


def _fold(text: str) -> str:
    """Letters as the pre-filter reads them: NFKC, lower case, hiragana."""
    return unicodedata.normalize("NFKC", text).lower().translate(_FOLD_TABLE)


def _spelled(stems: set[str]) -> set[str]:
    """``stems`` (folded) as a message's letters may write them: in katakana too, and with the
    long-vowel marks written out or dropped."""
    stems = stems | {jaconv.hira2kata(stem) for stem in stems}
    # The letters write long-vowel marks out (オーバードーズ → オうバドうズ); the windows
    # keep them. Imported here: urgency imports this module.
    from soudan_triage.urgency import _letters

    # Where one is dropped (バー in オーバー, ター in カッター), the stem is its first three
    # letters, unless those are the word without its marks (カッタ: かった starts much).
    written = {(s, _letters(s)) for s in stems if "ー" in s}
    stems |= {w for s, w in written if len(w) == len(s)}
    stems |= {
        w[:3] for s, w in written if 3 <= len(w) < len(s) and w[:3] != s.replace("ー", "")[:3]
    }
    return stems


class RiskReader:
    """Reads one message (or a window of them) for the lexicon's risks."""

    def __init__(
        self,
        lexicon: Mapping[str, Any],
        romaji_of: Callable[[str], Sequence[str]],
        cache: int = 4096,
    ):
        """``romaji_of`` maps kana text to the official keywords it holds (the keyword matcher),
        so that romaji keywords (``sinitai``) count as risks of the category ``romaji`` names.
        ``cache``: how many sentences' readings to keep (students repeat themselves; 0: none).
        They stay in this process's memory only, as the messages do."""
        self._entries = _entries(lexicon)
        self._amounts = frozenset(str(w) for w in lexicon.get("amounts") or ())
        self._romaji_categories = {str(k): str(v) for k, v in (lexicon.get("romaji") or {}).items()}
        self._keywords_in = romaji_of
        self._tokenizer = Dictionary(dict="core").tokenizer(
            SplitMode.C, fields={"pos", "normalized_form", "dictionary_form", "reading_form"}
        )
        self._spellings = [
            (re.compile(str(k)), str(v)) for k, v in (lexicon.get("spellings") or {}).items()
        ]
        self._by_first: dict[str, list[tuple[_Entry, tuple[str, ...]]]] = {}
        for entry in self._entries:
            for seq in entry.words:
                # A word the analyser splits (硫化水素, 根性焼き) matches as its morphemes.
                parts = tuple(p for w in seq for p in self._parts(w))
                self._by_first.setdefault(parts[0], []).append((entry, parts))
        self._required: list[int] = []  # per entry, how many requirements it has
        self._symbols: list[tuple[str, _Stem]] = []
        self._anchors = ahocorasick.Automaton()  # per entry, its most telling requirement
        self._prefilter = self._build_prefilter()
        self._read_sentence = functools.lru_cache(maxsize=cache)(self._analyse)
        self._read_romaji = functools.lru_cache(maxsize=cache)(self._romaji)

    def _parts(self, word: str) -> list[str]:
        ms = [m for m in self._tokenizer.tokenize(word) if m.surface().strip()]
        if len(ms) <= 1:
            return [word]
        return [m.surface() for m in ms[:-1]] + [ms[-1].dictionary_form()]

    def _respelled(self, sentence: str) -> str:
        """Kana spellings the analyser misreads (しんじゃいたい as 知れる) in kanji, same length."""
        for pattern, kanji in self._spellings:
            sentence = pattern.sub(kanji, sentence)
        return sentence

    # -- the pre-filter -------------------------------------------------------------------------

    def _build_prefilter(self) -> ahocorasick.Automaton:
        """One Aho-Corasick automaton of every stem the pre-filter reads for (see :class:`_Stem`):
        the window stems (where the analyser reads) and, per entry, what each of its
        requirements leaves in the text. And ``_anchors``: per entry, the stems of the
        requirement that starts the least text, so that most messages are let go after one
        scan in C."""
        window: set[str] = {"💊"}
        needs: dict[str, set[tuple[int, int]]] = {}
        for e, entry in enumerate(self._entries):
            groups = [_spelled(group) for group in self._requirements(entry)]
            self._required.append(len(groups))
            for g, group in enumerate(groups):
                for stem in group:
                    needs.setdefault(stem, set()).add((e, g))
            for stem in min(groups, key=_reach):
                self._anchors.add_word(stem, stem)
            if entry.hints:
                window.update(entry.hints)
                continue
            # Either required part will do: the one with fewer short kana stems (they start
            # much everyday text), the word itself on a tie.
            own = set().union(*(self._stems(seq[0]) for seq in entry.words))
            near = set().union(*(self._stems(w) for w in entry.near[0])) if entry.near else set()
            window.update(near if near and _commonness(near) < _commonness(own) else own)
        window = _spelled(window)
        automaton = ahocorasick.Automaton()
        for stem in window | needs.keys():
            value = _Stem(len(stem), stem in window, frozenset(needs.get(stem, ())))
            automaton.add_word(stem, value)
            if not _NOT_LETTER.sub("", stem):
                self._symbols.append((stem, value))  # 💊: not among a message's letters
        automaton.make_automaton()
        self._anchors.make_automaton()
        return automaton

    def _requirements(self, entry: _Entry) -> list[set[str]]:
        """What a sentence the entry matches must hold, one set of stems per requirement (one
        of each set): a required word (the entry's ``hints``, or its words), a word it must be
        near, and the need's marks (an amount; the passive's れ or て/で + 来る). Complete:
        every written form of every word, inflected, however short (unlike the window stems)."""
        groups = [
            set(entry.hints) if entry.hints else self._all_stems(s[0] for s in entry.words),
            # A near word with spaces is a sequence: its first word.
            *(self._all_stems(w.split()[0] for w in near) for near in entry.near),
            self._all_stems(self._amounts) | _NUMERALS if entry.need == "amount" else set(),
            set(_PASSIVE_MARKS) if entry.need == "passive" else set(),
        ]
        return [g for g in groups if g]

    def _all_stems(self, words: Iterable[str]) -> set[str]:
        return set().union(*(self._stems(w, complete=True) for w in words))

    def _stems(self, word: str, *, complete: bool = False) -> set[str]:
        """Character sequences every written form of ``word`` starts with (kanji and kana).
        Without ``complete``: not the single kana (they start too much everyday text to be worth
        reading for), and an adjective as written. With it: all, however short, a word with kana
        between two kanji by what comes before the second (students write the rest in kana:
        押し付ける: 押し, for 押しつけた), an adjective by its stem."""
        morphemes = self._tokenizer.tokenize(word)
        pos = morphemes[-1].part_of_speech() if len(morphemes) else ("",) * 6
        reading = _fold("".join(m.reading_form() for m in morphemes))
        out: set[str] = set()
        for form in {_fold(word), reading}:
            second = _KANJI.search(form, 2) if _KANJI.match(form) else None
            if complete and second and not _KANJI.match(form, 1):
                out.add(form[: second.start()])  # 押し付ける: 押し (押しつけた, 押し付けた)
            elif complete and pos[0] == "形容詞" and len(form) >= 2 and form.endswith("い"):
                out.add(form[:-1])  # 辛い: つら (つらくて, つらかった)
            elif pos[0] != "動詞" or len(form) < 2 or form[-1] not in _GODAN_ROWS:
                out.add(form)
            elif pos[4].startswith(("上一段", "下一段")):
                out.add(form[:-1])  # 消える: きえ, 消え (きえた, 消えよう, きえちゃう)
            else:
                out.update(form[:-1] + c for c in _GODAN_ROWS[form[-1]])
        return {_fold(s) for s in out if complete or len(s) >= 2 or _KANJI_RUN.match(s)}

    def _hits(self, text: str) -> list[tuple[int, _Stem]]:
        """(start, stem) of every stem in ``text``, overlapping ones too."""
        return [(end - stem.length + 1, stem) for end, stem in self._prefilter.iter(text)]

    def _could_match(self, stems: Iterable[_Stem]) -> bool:
        """Whether the stems found meet every requirement of some entry."""
        met: set[tuple[int, int]] = set().union(*(s.needs for s in stems))
        required = self._required
        return any(all((e, g) in met for g in range(required[e])) for e in {e for e, _ in met})

    def might_hold(self, letters: str, text: str = "") -> bool:
        """The pre-filter over a message's letters (NFKC, lower case, without spaces and
        symbols: :func:`soudan_triage.urgency` computes them anyway; ``text``, the message, for
        the stems that are symbols): False means no risk can match; True, read the message."""
        if _ROMAJI_OR_OD.search(letters):
            return True
        symbols = [value for symbol, value in self._symbols if symbol in text]
        if not symbols and next(self._anchors.iter(letters), None) is None:
            return False
        return self._could_match([*(stem for _, stem in self._prefilter.iter(letters)), *symbols])

    # -- reading ---------------------------------------------------------------------------------

    def read(self, text: str, letters: str | None = None) -> tuple[Risk, ...]:
        """The risks in one message, first occurrence first, one per (category, term).
        ``letters``: the message's letters if already known (see :meth:`might_hold`)."""
        return tuple(r for r, _, _ in self._find(text, letters))

    def read_across(self, earlier: Sequence[str], text: str) -> tuple[Risk, ...]:
        """Risks that only the window (``earlier`` messages, oldest first, then ``text``) holds:
        a match that begins in an earlier message and ends in ``text``."""
        if not earlier:
            return ()
        head = "".join(earlier)
        joined = head + text
        boundary = len(head)
        return tuple(r for r, a, b in self._find(joined) if a < boundary < b)

    def cache_info(self) -> str:
        """How often the analyser ran and how often its cache answered (for the bench)."""
        info = self._read_sentence.cache_info()
        return f"sentences analysed {info.misses}, from the cache {info.hits}"

    def _find(self, text: str, letters: str | None = None) -> list[tuple[Risk, int, int]]:
        if letters is None:
            letters = _NOT_LETTER.sub("", unicodedata.normalize("NFKC", text).lower())
        if not self.might_hold(letters, text):
            return []
        normal = unicodedata.normalize("NFKC", text)
        found = []
        for start, stop in self._windows(normal):
            for category, term, a, b in self._read_sentence(normal[start:stop]):
                found.append(
                    (Risk(category, term, normal[start + a : start + b]), start + a, start + b)
                )
        folded = normal.lower()
        for m in _OD.finditer(folded):
            found.append(
                (Risk("方法・手段", "オーバードーズ", normal[m.start() : m.end()]), *m.span())
            )
        for run in _ROMAJI_RUN.finditer(folded):
            source = normal[run.start() : run.end()]
            for category, term in self._read_romaji(run.group()):
                found.append((Risk(category, term, source), *run.span()))
        seen: set[tuple[str, str]] = set()
        out = []
        for risk, a, b in sorted(found, key=lambda f: f[1]):
            if (risk.category, risk.term) not in seen:
                seen.add((risk.category, risk.term))
                out.append((risk, a, b))
        return out

    def _romaji(self, run: str) -> tuple[tuple[str, str], ...]:
        """(category, term) of the risks in a run of romaji, read as kana."""
        kana = jaconv.alphabet2kana(re.sub(r"[\s.'-]+", "", run))
        if re.search("[a-z]{2}", kana):
            return ()  # not romaji (English words, names)
        found = []
        for keyword in self._keywords_in(kana):
            category = self._romaji_categories.get(keyword)
            if category:
                found.append((category, f"{keyword}（ローマ字）"))
        if self._could_match(
            stem for _, stem in self._hits(kana) + self._hits(self._respelled(kana))
        ):
            found += [(category, term) for category, term, _, _ in self._read_sentence(kana)]
        return tuple(found)

    def _windows(self, normal: str) -> list[tuple[int, int]]:
        """The parts of ``normal`` worth analysing: the sentence around each hit of a window
        stem, at most ``_WINDOW`` characters either side (merged where they overlap), where the
        stems found meet every requirement of some entry."""
        folded = normal.lower().translate(_FOLD_TABLE)
        hits = self._hits(folded)
        # The analyser reads the respelled text (same length): しにたい as 死にたい.
        met = hits + self._hits(self._respelled(normal).lower().translate(_FOLD_TABLE))
        if len(folded) != len(normal):
            return [(0, len(normal))] if self._could_match(s for _, s in met) else []
        # Where the windows are read around: the leftmost, then longest window stem, then the
        # next one after it (as a regular expression of the stems would find them).
        longest: dict[int, int] = {}
        for start, stem in hits:
            if stem.window:
                longest[start] = max(longest.get(start, 0), start + stem.length)
        spans: list[tuple[int, int]] = []
        done = 0
        for start in sorted(longest):
            if start < done:
                continue
            end = done = longest[start]
            low, high = max(0, start - _WINDOW), min(len(normal), end + _WINDOW)
            ends = list(_SENTENCE_END.finditer(normal, low, high))
            a = max((e.end() for e in ends if e.end() <= start), default=low)
            b = min((e.start() for e in ends if e.start() >= end), default=high)
            if spans and a <= spans[-1][1]:
                spans[-1] = (spans[-1][0], max(b, spans[-1][1]))
            else:
                spans.append((a, b))
        return [
            (a, b)
            for a, b in spans
            if self._could_match(s for start, s in met if a <= start and start + s.length <= b)
        ]

    def _analyse(self, sentence: str) -> tuple[tuple[str, str, int, int], ...]:
        """(category, term, start, end) of the risks the analyser reads in ``sentence``."""
        morphemes = [
            _Morpheme(
                frozenset((m.surface(), m.dictionary_form(), m.normalized_form())),
                m.part_of_speech()[0],
                m.part_of_speech()[5],
                m.begin(),
                m.end(),
            )
            for m in self._tokenizer.tokenize(self._respelled(sentence))
            if m.surface().strip()
        ]
        keys: set[str] = set().union(*(m.keys for m in morphemes)) if morphemes else set()
        done: set[_Entry] = set()
        found = []
        for i, m in enumerate(morphemes):
            for key in m.keys:
                for entry, seq in self._by_first.get(key, ()):
                    if entry in done or entry.unless & keys:
                        continue
                    hit = self._match(entry, seq, morphemes, i)
                    if hit is not None:
                        done.add(entry)
                        found.append((entry.category, entry.term, *hit))
        return tuple(found)

    def _match(
        self, entry: _Entry, seq: tuple[str, ...], ms: list[_Morpheme], i: int
    ) -> tuple[int, int] | None:
        last = i + len(seq) - 1
        if last >= len(ms) or not all(seq[k] in ms[i + k].keys for k in range(1, len(seq))):
            return None
        if (
            i
            and entry.not_after
            and (ms[i - 1].pos in entry.not_after or ms[i - 1].keys & entry.not_after)
        ):
            return None  # 学校いきたくない, ライブにいきたくない: going somewhere
        span = [ms[i].begin, ms[last].end]
        for near in entry.near:
            j = _near(ms, i, last, near)
            if j is None:
                return None
            span = [min(span[0], ms[j].begin), max(span[1], ms[j].end)]
        if not self._has_need(entry.need, ms, i, last):
            return None
        chain = _chain(ms, last)
        return span[0], max(span[1], chain[-1].end if chain else 0)

    def _has_need(self, need: str, ms: list[_Morpheme], first: int, last: int) -> bool:
        if need == "any":
            return True
        if need == "amount":
            return _amount(ms, first, self._amounts)
        chain = _chain(ms, last)
        if need == "intent":
            return _intent(ms, first, last, chain)
        if need == "passive":
            return _passive(ms, last, chain)
        # 意味ない, 意味なんてない, 意味がわからない: a negation after the particles, or on the
        # next word.
        after = last + 1 + len(chain)
        tail = chain + ms[after : after + 1] + _chain(ms, after)
        return any(m.keys & {"ない", "無い", "ぬ", "ず", "ん"} for m in tail)


def _reach(stems: set[str]) -> int:
    """How much text ``stems`` start, roughly: a single kana or digit most, a kanji less."""
    return sum(1000 if len(s) == 1 and not _KANJI.match(s) else 5 if len(s) == 1 else
               10 if len(s) == 2 and not _KANJI.match(s) else 1 for s in stems)  # fmt: skip


def _commonness(stems: set[str]) -> int:
    return sum(len(s) <= 2 and not _KANJI_RUN.match(s) for s in stems)


def _near(ms: list[_Morpheme], first: int, last: int, words: frozenset[str]) -> int | None:
    """Where one of ``words`` is near the words ``first`` to ``last``; a word with spaces is a
    sequence (``壁 に``: 壁 as what is hit, not 壁で)."""
    for j in range(max(0, first - _NEAR), min(len(ms), last + _NEAR + 1)):
        if first <= j <= last:
            continue
        if ms[j].keys & words:
            return j
        for word in words:
            parts = word.split()
            if len(parts) > 1 and all(
                j + k < len(ms) and not first <= j + k <= last and p in ms[j + k].keys
                for k, p in enumerate(parts)
            ):
                return j
    return None


_CHAIN_POS: Final = frozenset({"助動詞", "助詞", "接尾辞"})
_CHAIN_VERBS: Final = frozenset(
    {"しまう", "仕舞う", "ちゃう", "じゃう", "ちまう", "いる", "居る", "てる", "くる", "来る",
     "いく", "行く", "みる", "見る", "おく", "置く", "やる", "遣る", "もらう", "貰う",
     "もらえる", "くれる", "呉れる", "ほしい", "欲しい", "成る", "なる", "する", "為る"}
)  # fmt: skip


def _chain(ms: list[_Morpheme], last: int) -> list[_Morpheme]:
    """The auxiliaries, particles and helper verbs after the verb at ``last``."""
    out = []
    for m in ms[last + 1 : last + 1 + _CHAIN]:
        if m.pos in _CHAIN_POS or m.keys & _CHAIN_VERBS or m.keys & {"方", "ほう", "良い", "楽"}:
            out.append(m)
        else:
            break
    return out


def _intent(ms: list[_Morpheme], first: int, last: int, chain: list[_Morpheme]) -> bool:
    """〜たい, volitional (〜よう, 〜ちゃおう), 〜ば/〜たらいい, 〜たら楽, 〜方がいい."""
    if ms[last].form.startswith("意志推量形"):
        return True
    if ms[last].form.startswith("命令形") and any(k.endswith("よ") for k in ms[last].keys):
        return True  # 飛び降りよ, 消えよ: 〜よう without its う, read as an imperative
    for k, m in enumerate(chain):
        if m.keys & {"たい", "たがる"} or m.form.startswith("意志推量形"):
            return True
        rest = set().union(*(x.keys for x in chain[k + 1 : k + 4])) if k + 1 < len(chain) else set()
        if m.keys & {"ば", "たら", "なら"} and rest & {"良い", "いい", "楽"}:
            return True
        if m.keys & {"方", "ほう"} and rest & {"良い", "いい", "まし", "増し"}:
            return True
    after = ms[last + 1 : last + 1 + _CHAIN + 2]
    return any(m.keys & {"楽"} for m in after) and any(m.keys & {"たら", "ば"} for m in chain)


def _passive(ms: list[_Morpheme], last: int, chain: list[_Morpheme]) -> bool:
    """〜られる, 〜される, 〜てくる: something someone did to the writer."""
    for k, m in enumerate(chain):
        if m.keys & {"れる", "られる"}:
            return True
        if m.keys & {"て", "で"} and k + 1 < len(chain) and chain[k + 1].keys & {"来る", "くる"}:
            return True
        if m.keys & {"する", "為る"} and k + 1 < len(chain) and chain[k + 1].keys & {"れる"}:
            return True
    return False


_COUNTERS: Final = frozenset({"錠", "粒", "個", "箱", "本", "シート", "瓶", "袋"})


def _amount(ms: list[_Morpheme], first: int, amounts: frozenset[str]) -> bool:
    """An amount before the verb: 全部, いっぱい, 一箱 …, or ten or more of a counter."""
    window = ms[max(0, first - _NEAR) : first]
    for k, m in enumerate(window):
        if m.keys & amounts:
            return True
        if m.pos == "名詞" and k + 1 < len(window) and window[k + 1].keys & _COUNTERS:
            number = next((key for key in m.keys if key.isdigit()), None)
            if number is not None and int(number) >= 10:
                return True
    return False
