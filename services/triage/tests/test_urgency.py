"""The urgency detector: every official keyword in every form students write it, and the
everyday text that must not match."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from soudan_shared.config import OFFICIAL_KEYWORDS
from soudan_triage.urgency import Detector, _letters, _letters_with_origin, normalize

pytestmark = pytest.mark.unit

DETECTOR = Detector()

# keyword → (as written, kana, katakana, half-width, spaced / with symbols)
FORMS: dict[str, tuple[str, ...]] = {
    "死ぬ": ("もう死ぬ", "しぬ", "シヌ", "ｼﾇ", "し ぬ", "死💀ぬ"),
    "死に": ("死にたい", "しにたい", "シニタイ", "ｼﾆﾀｲ", "し　に　た　い", "死.に.た.い"),
    "自殺": ("自殺したい", "じさつ", "ジサツ", "ｼﾞｻﾂ", "じ・さ・つ", "自 殺"),
    "殺せ": ("だれか殺せ", "ころせ", "コロセ", "ｺﾛｾ", "こ ろ せ", "殺_せ"),
    "死ね": ("死ね", "しね", "シネ", "ｼﾈ", "し　ね", "死.ね"),
    "殺し": ("殺してやる", "ころして", "コロシテ", "ｺﾛｼﾃ", "こ、ろ、し", "殺🔪し"),
    "消えたい": ("消えたい", "きえたい", "キエタイ", "ｷｴﾀｲ", "き え た い", "消…え…た…い"),
    "リスカ": ("リスカした", "りすか", "リスカ", "ﾘｽｶ", "リ ス カ", "リ.ス.カ"),
    "虐待": ("虐待されてる", "ぎゃくたい", "ギャクタイ", "ｷﾞｬｸﾀｲ", "ぎゃ く たい", "虐-待"),
    "いじめ": ("いじめられてる", "いじめ", "イジメ", "ｲｼﾞﾒ", "い じ め", "い。じ。め"),
    "暴力": ("暴力をふるわれる", "ぼうりょく", "ボウリョク", "ﾎﾞｳﾘｮｸ", "ぼう りょく", "暴★力"),
    "暴行": ("暴行された", "ぼうこう", "ボウコウ", "ﾎﾞｳｺｳ", "ぼ う こ う", "暴!行"),
    "自傷": ("自傷しちゃう", "じしょう", "ジショウ", "ｼﾞｼｮｳ", "じ しょう", "自/傷"),
    "助け": ("助けて", "たすけて", "タスケテ", "ﾀｽｹﾃ", "た す け て", "助〜け〜て"),
}


def test_the_table_covers_the_fourteen_official_keywords() -> None:
    assert tuple(FORMS) == OFFICIAL_KEYWORDS


@pytest.mark.parametrize(
    ("keyword", "text"),
    [(k, t) for k, forms in FORMS.items() for t in forms],
)
def test_every_official_keyword_is_caught_in_every_form(keyword: str, text: str) -> None:
    detection = DETECTOR.detect(text)

    assert detection.urgent
    assert keyword in detection.keywords


@pytest.mark.parametrize(
    ("keyword", "text"),
    [
        ("死ね", "氏ね"),
        ("死ね", "タヒね"),
        ("死ね", "ﾀﾋね"),
        ("死ね", "4ね"),
        ("死ね", "おまえしね"),
        ("死ね", "あいつらまじしね"),
        ("死ね", "学校しね"),
        ("死ね", "しねばいいのに"),
        ("死ね", "死ねーーー"),
        ("死ね", "しね〜"),
        ("死ぬ", "氏ぬ"),
        ("死ぬ", "タヒ"),
        ("死ぬ", "もうタヒぬ"),
        ("死に", "氏にたい"),
        ("死に", "タヒにたい"),
        ("死に", "4にたい"),
        ("死に", "しにてぇ"),
        ("死に", "しにたーい"),
        ("死に", "シニタィ"),
        ("死に", "しにそう"),
        ("死に", "しにかけた"),
        ("死に", "死に物狂いで勉強した"),
        ("消えたい", "消えてしまいたい"),
        ("消えたい", "きえちゃいたい"),
        ("リスカ", "リストカット"),
        ("いじめ", "虐められてる"),
        ("殺し", "ひところし"),
        ("暴行", "ボーコー"),
        ("自傷", "ジショー"),
        ("助け", "助けてくれてありがとう"),  # 助け is literally there: flagged, by rule 第5(4)
    ],
)
def test_slang_and_variants_are_caught(keyword: str, text: str) -> None:
    assert keyword in DETECTOR.detect(text).keywords


@pytest.mark.parametrize(
    "text",
    [
        "買い物しに行く",
        "あした遊びにいこう",
        "わたしにはむりかも",
        "わたしにたいして冷たい",
        "わたしにたくさん話してくれた",
        "わたしにそうだんしてくれた",
        "話しにくいことがある",
        "しにせの和菓子屋さん",
        "老舗のお店",
        "わたしね、きょうがっこうで",
        "あたしね、部活やめたい",
        "むかしね、ここに住んでた",
        "たのしいしね",
        "いいしね",
        "勉強しねーよ",
        "宿題しねえ",
        "シネマに行った",
        "そうじしよう",
        "へんじしよう",
        "ところせましと並んでる",
        "いいところしかない",
        "こころしずかに",
        "またひとりになった",
        "行ったひに雨だった",
        "あと4ねんで卒業",
        "わたしぬきで決めないで",
        "くまのぬいぐるみほしぬいぐるみ",
        "テストがんばった",
        "ありがとう",
        "😀😀😀",
        "",
        "   ",
        "しにがお",
    ],
)
def test_everyday_text_does_not_match(text: str) -> None:
    detection = DETECTOR.detect(text)

    assert not detection.urgent, detection


def test_the_matches_are_the_text_as_the_student_wrote_it() -> None:
    detection = DETECTOR.detect("もう　し　に　た　い…だれか　ﾀｽｹﾃ")

    assert detection.keywords == ("死に", "助け")
    assert detection.matches == ("し　に　た　い", "ﾀｽｹ")
    assert detection.to_json() == {
        "urgent": True,
        "keywords": ["死に", "助け"],
        "matches": ["し　に　た　い", "ﾀｽｹ"],
        "risks": [],
    }


def test_a_keyword_spread_over_messages_is_caught_by_the_message_that_completes_it() -> None:
    assert DETECTOR.detect_across(["し", "に"], "たい").keywords == ("死に",)
    assert DETECTOR.detect_across(["じ", "さ"], "つ").keywords == ("自殺",)
    assert DETECTOR.detect_across(["死"], "ね").keywords == ("死ね",)
    assert DETECTOR.detect_across(["もう", "き"], "えたい").keywords == ("消えたい",)


def test_a_split_keyword_needs_the_new_message_to_complete_it() -> None:
    # whole in an earlier message: detect() caught it then
    assert not DETECTOR.detect_across(["死にたい"], "ねむい").urgent
    # split like everyday text
    assert not DETECTOR.detect_across(["買い物し"], "に行く").urgent
    assert not DETECTOR.detect_across([], "たい").urgent


def test_extra_keywords_are_matched_after_the_same_normalization() -> None:
    detector = Detector(["オーバードーズ", "飛び降り", "死ね"])

    assert detector.detect("おーばーどーず しようかな").keywords == ("オーバードーズ",)
    assert detector.detect("飛 び 降 り").keywords == ("飛び降り",)
    assert detector.detect("死ね").keywords == ("死ね",)  # official, not an extra


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("ｼﾈ", "しね"),
        ("シ　ネ", "しね"),
        ("ＡＢＣ１２３", "abc123"),
        ("しにたぃ", "しにたい"),
        ("ボーコー", "ぼうこう"),
        ("しねーーー", "しねえ"),
        ("しにたーい", "しにたい"),
        ("死.に.た.い", "死にたい"),
        ("し゛さつ", "じさつ"),
        ("殺", "殺"),  # CJK compatibility ideograph → 殺
    ],
)
def test_normalization(text: str, normalized: str) -> None:
    assert normalize(text) == normalized


@given(st.text(max_size=60))
def test_the_fast_and_the_traced_normalization_agree(text: str) -> None:
    # NFKC composes across characters (e + U+0301 → é) where the traced one cannot: compare
    # on text where it does not.
    import unicodedata

    if unicodedata.normalize("NFKC", text) != "".join(
        unicodedata.normalize("NFKC", c) for c in text
    ):
        return
    assert _letters_with_origin(text)[0] == _letters(text)


@given(st.text(max_size=200))
def test_the_detector_never_fails(text: str) -> None:
    detection = DETECTOR.detect(text)
    assert detection.urgent == bool(detection.keywords)
    assert len(detection.matches) <= len(text) or not detection.matches
