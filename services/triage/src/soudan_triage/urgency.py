"""The urgency detector (運営要領 第5(4)): does a message contain one of the urgent keywords?

Students write the keywords in kanji, hiragana, katakana, half-width katakana, with spaces,
dots or emoji between the letters, across several short messages, and in net slang. Detection
survives all of that in two steps:

1. **Normalization** to the message's *letters*: NFKC (full-width → ASCII, half-width katakana →
   katakana, compatibility kanji → kanji), lower case, half-width voicing marks joined to their
   kana (ｼﾞ → ジ), everything that is not a letter or a digit dropped (spaces, punctuation,
   symbols, emoji, zero-width characters), and the long-vowel mark ー written out after an o-row
   kana (ボーコー → ボウコウ) and an e-row kana (シネー → シネエ) and dropped elsewhere
   (シニターイ → シニタイ).
2. **Matching** with patterns written once in hiragana with large kana, and expanded so that
   each kana also matches its katakana and its small form (し → [しシ], い → [いイぃィ],
   や → [やヤゃャ]): katakana → hiragana and small-kana folding happen in the pattern, not in the
   text. A pattern that writes a small kana wants exactly that: じしょう (自傷) is not じしよう
   (…じ しよう, "let's …"). Katakana written in a pattern stays katakana: the net slang タヒ
   (死 split into two katakana) is not またひとり.

:func:`normalize` shows the text as the patterns read it (hiragana, small kana folded).

The official 14 keywords are always matched in three forms: as written (死に, 消えたい, …, kana
in any script, so 死ネ and 消エタイ count), their kana reading (しに, きえたい, …) and common net
slang (氏ね, タヒ, 4ね, リストカット, 虐め, …). Extra keywords from ``keywords.yaml`` are matched
as written, after the same normalization.

Short kana readings collide with everyday Japanese, so they match only in context (each rule
is pinned by a test in ``tests/test_urgency.py``):

- しに (死に) only with what makes it "die": たい, たく (not たくさん), たかっ, そう (not
  そうだん/そうじ), かけ, ます, まし, がみ, ぞこない, ものぐるい, てえ. 買い物しに行く,
  わたしに, 話しにくい, 老舗 (しにせ), わたしにたいして (に対して) do not match. The kanji 死に
  always matches (死に物狂い too: the keyword is literally there).
- しね (死ね) at the start of a message, after a kanji (学校しね, unless it is the colloquial
  negative 勉強しねえ), after an insulting or urging word (おまえ, あいつ, みんな, まじ, はよ,
  もう, さっさと, …), or before what makes it "die" (しねば, しねよ, しねる, しねない, しねしね).
  Never in わたしね, あたしね, はなしね, むかしね, おかしね, nor in シネマ; 楽しいしね (し + ね)
  does not match.
- しぬ (死ぬ) everywhere except わたしぬき, あたしぬき and ぬいぐるみ.
- ころせ, ころし not inside ところ/こころ (ところせまし, こころしずか), but ひところし matches.

Speed: all patterns are one regular expression, grouped by first character, so ``re`` skips in
C to the places where a keyword can start and tries only the patterns starting there. Finding
*where* in the original message a match came from (:attr:`Detection.matches`) is slower and done
only for messages that matched.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import jaconv
from soudan_shared.config import OFFICIAL_KEYWORDS

from soudan_triage.risk import Risk, RiskReader

__all__ = ["Detection", "Detector", "normalize"]


# -- normalization ------------------------------------------------------------------------------

_VOICING_MARKS: Final = "\u3099\u309a"
_LONG_VOWEL: Final = "ー"
_O_ROW: Final = "おこそとのほもよろをごぞどぼぽょぉオコソトノホモヨロヲゴゾドボポョォ"
_E_ROW: Final = "えけせてねへめれゑげぜでべぺぇエケセテネヘメレヱゲゼデベペェ"
_LONG_RUN = re.compile(f"{_LONG_VOWEL}+")
# ``\w`` is letters, digits and "_": drop the rest, and "_".
_NOT_LETTER = re.compile(r"[\W_]+")
# The same, keeping the voicing marks half-width katakana leave after NFKC (ｼﾞ → シ + U+3099).
_NOT_LETTER_OR_MARK = re.compile(f"(?:(?![{_VOICING_MARKS}])[\\W_])+")


def _nfkc_unstable() -> re.Pattern[str]:
    """Runs of characters NFKC may change: half-width katakana, full-width ASCII, compatibility
    characters, combining marks (they join the character before). Text outside them is left
    alone, which is much faster than NFKC over a whole message."""
    ranges: list[tuple[int, int]] = []
    for code in range(0x80, 0x10000):
        char = chr(code)
        if 0xD800 <= code <= 0xDFFF:
            continue
        if unicodedata.category(char)[0] == "M" or unicodedata.normalize("NFKC", char) != char:
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1] = (ranges[-1][0], code)
            else:
                ranges.append((code, code))
    members = "".join(f"\\u{a:04x}" if a == b else f"\\u{a:04x}-\\u{b:04x}" for a, b in ranges)
    return re.compile(f"[{members}\\U00010000-\\U0010ffff]+")


_UNSTABLE_RUN = _nfkc_unstable()


def _nfkc(text: str) -> str:
    if unicodedata.is_normalized("NFKC", text):
        return text
    parts: list[str] = []
    done = 0
    for m in _UNSTABLE_RUN.finditer(text):
        start = max(m.start() - 1, done)  # a combining mark joins the character before it
        parts.append(text[done:start])
        parts.append(unicodedata.normalize("NFKC", text[start : m.end()]))
        done = m.end()
    parts.append(text[done:])
    return "".join(parts)


def _join_voicing_marks(text: str) -> str:
    out: list[str] = []
    for c in text:
        if c in _VOICING_MARKS:
            if out:
                joined = unicodedata.normalize("NFC", out[-1] + c)
                if len(joined) == 1:
                    out[-1] = joined
        else:
            out.append(c)
    return "".join(out)


def _long_vowel(previous: str) -> str:
    """What ー after ``previous`` reads as: う after an o-row kana, え after an e-row one."""
    if len(previous) != 1:
        return ""
    return "う" if previous in _O_ROW else "え" if previous in _E_ROW else ""


def _write_out_long_vowels(text: str) -> str:
    parts: list[str] = []
    last = 0
    for m in _LONG_RUN.finditer(text):
        start = m.start()
        parts.append(text[last:start])
        parts.append(_long_vowel(text[start - 1] if start else ""))
        last = m.end()
    parts.append(text[last:])
    return "".join(parts)


def _letters(text: str) -> str:
    """The letters of a message (see the module's docstring), the fast way."""
    s = _nfkc(text).lower()
    if "\u3099" in s or "\u309a" in s:
        s = _join_voicing_marks(_NOT_LETTER_OR_MARK.sub("", s))
    else:
        s = _NOT_LETTER.sub("", s)
    if _LONG_VOWEL in s:
        s = _write_out_long_vowels(s)
    return s


# Characters that are their own letters (NFKC- and case-stable letters, no marks, no ー).
_PLAIN_RUN = re.compile("[\u3041-\u3096\u30a1-\u30fa\u4e00-\u9fffa-z0-9]+")


@functools.lru_cache(maxsize=8192)
def _char_letters(char: str) -> str:
    """What one character contributes to :func:`_letters`, before marks and long vowels."""
    return _NOT_LETTER_OR_MARK.sub("", unicodedata.normalize("NFKC", char).lower())


def _letters_with_origin(text: str) -> tuple[str, list[int], list[int]]:
    """:func:`_letters` with, for each of its characters, the span ``[start, end)`` of ``text``
    it came from. Slower; used only once a message matched, to report what matched."""
    chars: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    in_long_run = False  # the last letter kept came from a ー (a run writes out once)
    position = 0
    for run in (*_PLAIN_RUN.finditer(text), None):
        stop = run.start() if run else len(text)
        for i in range(position, stop):
            for out in _char_letters(text[i]):
                if out in _VOICING_MARKS:
                    if chars:
                        joined = unicodedata.normalize("NFC", chars[-1] + out)
                        if len(joined) == 1:
                            chars[-1] = joined
                            ends[-1] = i + 1
                    continue
                if out == _LONG_VOWEL:
                    if in_long_run:
                        continue
                    in_long_run = True
                    out = _long_vowel(chars[-1]) if chars else ""
                    if not out:
                        continue
                else:
                    in_long_run = False
                chars.append(out)
                starts.append(i)
                ends.append(i + 1)
        if run is None:
            break
        chars.extend(run.group())
        starts.extend(range(run.start(), run.end()))
        ends.extend(range(run.start() + 1, run.end() + 1))
        in_long_run = False
        position = run.end()
    return "".join(chars), starts, ends


def normalize(text: str) -> str:
    """The text as the patterns read it: letters, hiragana, small kana large.

    ``normalize("ｼ　ﾆ　ﾀ　ｨ") == "しにたい"``.
    """
    return jaconv.enlarge_smallkana(jaconv.kata2hira(_letters(text)))


# -- pattern expansion ---------------------------------------------------------------------------

_HIRAGANA = re.compile("[\u3041-\u3096]")


@functools.cache
def _variants(kana: str) -> str:
    """The characters a hiragana of a pattern stands for: itself in katakana, and (for a large
    kana) its small forms. ``し`` → ``しシ``, ``や`` → ``やヤゃャ``, ``ょ`` → ``ょョ``."""
    forms = [kana, jaconv.hira2kata(kana)]
    for small in "ぁぃぅぇぉっゃゅょゎゕゖ":
        if jaconv.enlarge_smallkana(small) == kana != small:
            forms += [small, jaconv.hira2kata(small)]
    return "".join(dict.fromkeys(f for f in forms if len(f) == 1))


def _expand(regex: str) -> str:
    """``regex`` (kana written in hiragana) with every hiragana outside a character class made a
    class of its variants, and every hiragana inside one extended by them."""
    out: list[str] = []
    in_class = False
    i = 0
    while i < len(regex):
        c = regex[i]
        if c == "\\":
            out.append(regex[i : i + 2])
            i += 2
            continue
        if c == "[" and not in_class:
            in_class = True
        elif c == "]" and in_class:
            in_class = False
        elif _HIRAGANA.fullmatch(c):
            variants = _variants(c)
            c = variants if in_class or len(variants) == 1 else f"[{variants}]"
        out.append(c)
        i += 1
    return "".join(out)


def _alternatives(regex: str) -> list[str]:
    """The top-level alternatives of ``regex``."""
    parts: list[str] = []
    depth = 0
    in_class = False
    start = 0
    i = 0
    while i < len(regex):
        c = regex[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            parts.append(regex[start:i])
            start = i + 1
        i += 1
    parts.append(regex[start:])
    return parts


# -- the patterns ---------------------------------------------------------------------------------
#
# Written in hiragana with large kana (expanded by ``_expand``); each alternative starts with a
# literal character, and any look-behind comes after it, so the alternatives can be grouped by
# their first character.

# After し/氏/4 + に: what makes it 死に rather than "…しに行く", "わたしに", "話しにくい".
_SHINI_DIE = (
    "(?:たい(?!して|する|しま)|たく(?!さん)|たかつ|そう(?!だん|じ|ぞう)|かけ|ます|まし"
    "|がみ|ぞこない|ものぐるい|てえ)"
)
# Words before しね that make it an insult or a wish to die, not "…し、ね".
_SHINE_BEFORE = (
    "おまえ",
    "てめえ",
    "てめ",
    "きさま",
    "あいつ",
    "こいつ",
    "そいつ",
    "やつ",
    "ら",  # おまえら, あいつら, やつら
    "みんな",
    "みな",
    "まじ",
    "まぢ",
    "まじで",
    "はよ",
    "はやく",
    "さつさと",
    "いつそ",
    "もう",
    "ほんとに",
    "ぜんいん",
    "くそ",
)
# What makes しね "die" whatever comes before it.
_SHINE_AFTER = "(?:ば|よ|や|る|ない|なかつた|たら|ます|ません|しね)"
# Nouns ending in し before the particle ね: わたしね, はなしね, むかしね, おかしね.
_SHINE_NEVER_AFTER = "".join(f"(?<!{w}しね)" for w in ("わた", "あた", "はな", "むか", "おか"))
_NOT_CINEMA = "(?!ま(?!じ))"
_KANJI = "\\u3005\\u4e00-\\u9fff\\uf900-\\ufaff"


def _shine() -> str:
    after_word = "|".join(f"(?<={w}しね)" for w in _SHINE_BEFORE)
    return "|".join(
        (
            f"しね(?<!...){_NOT_CINEMA}",  # at the start of the message
            f"しね(?<=[{_KANJI}]しね)(?!え){_NOT_CINEMA}",  # 学校しね, not 勉強しねえ
            f"しね(?:{after_word}){_NOT_CINEMA}",
            f"しね{_SHINE_NEVER_AFTER}{_SHINE_AFTER}",
        )
    )


_NOT_AFTER_DIGIT = "(?<![0-9]4)"


@dataclass(frozen=True)
class _Pattern:
    keyword: str
    regex: str


_OFFICIAL: Final = (
    _Pattern("死ぬ", f"死ぬ|氏ぬ|4{_NOT_AFTER_DIGIT}ぬ"),
    _Pattern("死ぬ", "しぬ(?<!わたしぬ)(?<!あたしぬ)(?!いぐるみ)"),
    _Pattern("死に", f"死に|氏に{_SHINI_DIE}|しに{_SHINI_DIE}|4{_NOT_AFTER_DIGIT}に{_SHINI_DIE}"),
    _Pattern("自殺", "自殺|じさつ"),
    _Pattern("殺せ", "殺せ|こ(?<!とこ)(?<!ここ)ろせ"),
    _Pattern("死ね", f"死ね|氏ね|4{_NOT_AFTER_DIGIT}ね(?!ん)"),
    _Pattern("死ね", _shine()),
    _Pattern("殺し", "殺し|ひところし|こ(?<!とこ)(?<!ここ)ろし"),
    _Pattern("消えたい", "消え(?:たい|たく|てしまいたい|ちやいたい)"),
    _Pattern("消えたい", "きえ(?:たい|たく|てしまいたい|ちやいたい)"),
    _Pattern("リスカ", "りすか|りすとかつと"),
    _Pattern("虐待", "虐待|ぎやくたい"),
    _Pattern("いじめ", "いじめ|虐め|苛め"),
    _Pattern("暴力", "暴力|ぼうりよく"),
    _Pattern("暴行", "暴行|ぼうこう"),
    # with a small ょ: じしょう, not じしよう (掃除しよう)
    _Pattern("自傷", "自傷|じしょう"),
    _Pattern("助け", "助け|たすけ"),
    # タヒ (死 split in two katakana) is slang only in katakana: またひとり is not.
    _Pattern("死ね", "タヒね"),
    _Pattern("死に", "タヒに"),
    _Pattern("死ぬ", "タヒ(?![ねネにニ])"),
)


class _Matcher:
    """One regex of every pattern, grouped by first character; and per first character, the
    patterns that may start with it, to say which keyword matched."""

    def __init__(self, patterns: Sequence[_Pattern]) -> None:
        groups: dict[str, list[str]] = {}
        self._by_first: dict[str, list[tuple[re.Pattern[str], str]]] = {}
        for pattern in patterns:
            expanded = [_expand(alt) for alt in _alternatives(pattern.regex)]
            single = (re.compile("|".join(expanded)), pattern.keyword)
            for alternative in expanded:
                for first, rest in _split_first(alternative):
                    groups.setdefault(first, []).append(rest)
                    candidates = self._by_first.setdefault(first, [])
                    if single not in candidates:
                        candidates.append(single)
        self.regex = re.compile(
            "|".join(f"{re.escape(first)}(?:{'|'.join(rests)})" for first, rests in groups.items())
        )

    def find(self, letters: str) -> list[tuple[str, int, int]]:
        """(keyword, start, end) of every match, in order of position."""
        found = []
        for m in self.regex.finditer(letters):
            # The first pattern that matches here is the one the alternation took.
            start = m.start()
            keyword = next(k for r, k in self._by_first[letters[start]] if r.match(letters, start))
            found.append((keyword, start, m.end()))
        return found


def _split_first(alternative: str) -> list[tuple[str, str]]:
    """(first character, rest) for each first character ``alternative`` may start with."""
    if alternative.startswith("["):
        end = alternative.index("]")
        return [(c, alternative[end + 1 :]) for c in alternative[1:end]]
    if alternative[0] in "\\()|.^$*+?{":
        raise ValueError(f"a pattern must start with a literal character: {alternative!r}")
    return [(alternative[0], alternative[1:])]


# -- the detector -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Detection:
    """The verdict on one message: the keywords matched (official spelling, or the extra
    keyword as configured; first occurrence first), the text of the message that matched, and
    the risks the risk reader found (:mod:`soudan_triage.risk`). Urgent when either holds.

    ``matches`` is worked out on first reading (triage itself needs only the keywords).
    """

    keywords: tuple[str, ...] = ()
    risks: tuple[Risk, ...] = ()
    _trace: Callable[[], tuple[str, ...]] | None = field(default=None, repr=False, compare=False)

    @property
    def urgent(self) -> bool:
        return bool(self.keywords or self.risks)

    @property
    def categories(self) -> tuple[str, ...]:
        """The risk categories found, first occurrence first."""
        return tuple(dict.fromkeys(r.category for r in self.risks))

    @functools.cached_property
    def matches(self) -> tuple[str, ...]:
        return self._trace() if self._trace else ()

    def to_json(self) -> dict[str, object]:
        return {
            "urgent": self.urgent,
            "keywords": list(self.keywords),
            "matches": list(self.matches),
            "risks": [r.to_json() for r in self.risks],
        }


NOT_URGENT: Final = Detection()


class Detector:
    """Matches the official 14 keywords (always) and ``extra`` keywords, and reads the message
    for risks when given a ``risk.yaml`` lexicon (:func:`soudan_triage.risk.load_lexicon`).
    Pure and reusable."""

    def __init__(
        self,
        extra: Iterable[str] = (),
        lexicon: Mapping[str, Any] | None = None,
        risk_cache: int = 4096,
    ) -> None:
        """``risk_cache``: how many sentences the risk reader keeps its readings of."""
        patterns = list(_OFFICIAL)
        for word in dict.fromkeys(extra):
            folded = normalize(word)
            if word in OFFICIAL_KEYWORDS or not folded:
                continue
            patterns.append(_Pattern(word, re.escape(folded)))
        self._matcher = _Matcher(patterns)
        self._official = _Matcher(_OFFICIAL)
        self._risk = (
            RiskReader(lexicon, self._official_in, risk_cache) if lexicon is not None else None
        )

    @property
    def risk_reader(self) -> RiskReader | None:
        return self._risk

    def _official_in(self, kana: str) -> tuple[str, ...]:
        return _keywords(self._official.find(_letters(kana)))

    def detect(self, text: str) -> Detection:
        """The keywords and risks in one message."""
        letters = _letters(text)
        found = self._matcher.find(letters)
        risks = self._risk.read(text, letters) if self._risk is not None else ()
        if not found and not risks:
            return NOT_URGENT
        return Detection(_keywords(found), risks, lambda: _trace(found, letters, text))

    def detect_across(self, earlier: Sequence[str], text: str) -> Detection:
        """A keyword that ``text`` completes, begun in the ``earlier`` messages (oldest first).

        Keywords wholly inside one message are :meth:`detect`'s business and not reported here.
        ``matches`` holds the letters that matched (they span several messages).
        """
        if not earlier:
            return NOT_URGENT
        risks = self._risk.read_across(earlier, text) if self._risk is not None else ()
        head = "".join(_letters(t) for t in earlier)
        tail = _letters(text)
        joined = head + tail
        boundary = len(head)
        found = []
        if head and tail:
            found = [f for f in self._matcher.find(joined) if f[1] < boundary < f[2]]
        if not found and not risks:
            return NOT_URGENT
        return Detection(
            _keywords(found),
            risks,
            lambda: tuple(dict.fromkeys(joined[a:b] for _, a, b in found)),
        )


def _keywords(found: list[tuple[str, int, int]]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(keyword for keyword, _, _ in found))


def _trace(found: list[tuple[str, int, int]], letters: str, text: str) -> tuple[str, ...]:
    """The text of the message behind each match."""
    traced, starts, ends = _letters_with_origin(text)
    if traced != letters:  # NFKC joined characters across positions (e + U+0301 → é)
        return tuple(dict.fromkeys(letters[a:b] for _, a, b in found))
    return tuple(dict.fromkeys(text[starts[a] : ends[b - 1]] for _, a, b in found))
