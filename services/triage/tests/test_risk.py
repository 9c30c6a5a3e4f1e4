"""The risk reader: what students in danger write beyond the 14 keywords, read as Japanese."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from soudan_shared.config import RISK_CATEGORIES
from soudan_triage.risk import RiskReader, load_lexicon
from soudan_triage.urgency import Detector

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
SHIPPED = ROOT / "deploy" / "config"
LABELLED = ROOT / "bench" / "data"
DETECTOR = Detector(lexicon=load_lexicon(SHIPPED))


def categories(text: str) -> set[str]:
    return {r.category for r in DETECTOR.detect(text).risks}


@pytest.mark.parametrize(
    "text",
    [
        "死んじゃいたい",
        "もう死のうかな",
        "死んだ方がいいのかも",
        "もう生きるのやめたい",
        "生きてる意味ない",
        "生きていたくない",
        "いなくなりたい",
        "このまま消えちゃおうかな",
        "生まれてこなければよかった",
    ],
)
def test_wishes_to_die_or_disappear_are_suicidal_ideation(text: str) -> None:
    assert "自殺念慮" in categories(text)
    assert DETECTOR.detect(text).urgent


@pytest.mark.parametrize(
    "text",
    [
        "ビルから落ちたら楽になれるかな",
        "屋上から飛び降りようかな",
        "電車に飛び込みたい",
        "首つろうかな",
        "薬いっぱいのんじゃった",
        "頭痛薬ぜんぶ飲んだ",
        "ブロン20錠のんだ",
        "ODしちゃった",
        "睡眠薬ためてる",
        "遺書書いた",
        "練炭買おうかな",
    ],
)
def test_methods_heights_hanging_trains_and_overdoses_are_methods(text: str) -> None:
    assert "方法・手段" in categories(text)


@pytest.mark.parametrize(
    "text", ["腕切っちゃった", "手首をカッターで切った", "また自分を殴った", "アムカした"]
)
def test_cutting_and_hitting_oneself_are_self_harm(text: str) -> None:
    assert "自傷" in categories(text)


@pytest.mark.parametrize(
    "text",
    [
        "父親に首をしめられた",
        "クラスの男子に蹴られた",
        "父が毎日殴ってくる",
        "物置に閉じ込められた",
        "ご飯を食べさせてもらえない",
        "家に入れてもらえない",
        "胸を触られた",
        "殺すぞって言われた",
    ],
)
def test_being_hit_choked_locked_in_starved_or_touched_is_violence(text: str) -> None:
    assert "暴力・虐待" in categories(text)


@pytest.mark.parametrize(
    ("text", "category"),
    [
        ("殴られた", "暴力・虐待"),  # passive
        ("殴られてる", "暴力・虐待"),
        ("殴られちゃった", "暴力・虐待"),
        ("飛び降りたい", "方法・手段"),  # desiderative
        ("飛び降りよう", "方法・手段"),  # volitional
        ("飛び降りちゃおうかな", "方法・手段"),  # contraction + volitional
        ("飛び降りれば楽", "方法・手段"),  # conditional
        ("死んじゃおっかな", "自殺念慮"),
    ],
)
def test_every_inflection_is_read_from_its_dictionary_form(text: str, category: str) -> None:
    assert category in categories(text)


@pytest.mark.parametrize(
    "text",
    [
        "頭痛薬を飲んで早めに寝た",
        "はさみで段ボールを切った",
        "犬が迷子でいなくなった",
        "プールの飛び込み台がこわい",
        "髪切った",
        "料理中に指を切っちゃった",
        "肩を叩かれた",
        "ゲームで殴られた",
        "夢で殴られた",
        "データが消えちゃえばいい",
        "テスト死んだ",
        "水いっぱい飲んだ",
        "風邪薬を2錠飲んだ",
        "エレベーターに閉じ込められた",
        "電気が消えちゃった",
        "生き物係になった",
        "I love music so much",
    ],
)
def test_everyday_japanese_is_not_a_risk(text: str) -> None:
    assert DETECTOR.detect(text).risks == ()
    assert not DETECTOR.detect(text).urgent


@pytest.mark.parametrize(
    ("text", "category"),
    [("sinitai", "自殺念慮"), ("shinitai", "自殺念慮"), ("kusuri zenbu nonda", "方法・手段")],
)
def test_romaji_is_read_as_kana(text: str, category: str) -> None:
    assert category in categories(text)


def test_a_risk_names_its_category_term_and_the_text_that_matched() -> None:
    detection = DETECTOR.detect("薬いっぱいのんじゃった")

    assert detection.keywords == ()
    assert detection.urgent
    assert [r.to_json() for r in detection.risks] == [
        {"category": "方法・手段", "term": "薬の大量服用", "match": "薬いっぱいのんじゃった"}
    ]


def test_a_risk_split_over_messages_is_caught_by_the_message_that_completes_it() -> None:
    detection = DETECTOR.detect_across(["頭痛薬"], "ぜんぶ飲んだ")

    assert detection.urgent
    assert detection.categories == ("方法・手段",)
    assert DETECTOR.detect("ぜんぶ飲んだ").risks == ()


def test_the_official_keywords_are_unchanged_by_the_risk_reader() -> None:
    plain = Detector()
    for text in ("死にたい", "しねば", "ｼﾈ", "いじめられてる", "買い物しに行く"):
        assert DETECTOR.detect(text).keywords == plain.detect(text).keywords


def test_without_a_lexicon_only_the_keywords_count(tmp_path: Path) -> None:
    assert load_lexicon(tmp_path) is None
    assert not Detector().detect("薬いっぱいのんじゃった").urgent


@pytest.mark.parametrize(
    ("text", "category"),
    [
        ("しんじゃいたい", "自殺念慮"),
        ("しんでしまいたい", "自殺念慮"),
        ("生きるのがつらい", "自殺念慮"),
        ("生きてるだけで苦しい", "自殺念慮"),
        ("生きる意味なんてない", "自殺念慮"),
        ("生きる意味がわからない", "自殺念慮"),
        ("いなくなれたらいいのに", "自殺念慮"),
        ("電車にひかれたい", "方法・手段"),
        ("💊全部飲んだ", "方法・手段"),
        ("硫化水素の作り方", "方法・手段"),
        ("もう飛び降りよ", "方法・手段"),
        ("壁に頭を打ちつけた", "自傷"),
        ("根性焼きした", "自傷"),
        ("アームカットしてる", "自傷"),
        ("ご飯抜きにされた", "暴力・虐待"),
        ("継父に触られる", "暴力・虐待"),
    ],
)
def test_colloquial_and_split_spellings_of_risks_are_read(text: str, category: str) -> None:
    assert category in categories(text)


@pytest.mark.parametrize(
    "text",
    [
        "わたしにたいしてだけ厳しい",
        "電車で風邪ひきたくない",
        "家に友達を入れてもらえないルール",
        "部活の練習で疲れた",
        "寝台車にのりたい",
    ],
)
def test_everyday_text_near_the_new_spellings_is_not_a_risk(text: str) -> None:
    assert categories(text) == set()


@pytest.mark.parametrize(
    ("text", "category"),
    [
        ("オーバードーズしちゃった", "方法・手段"),
        ("駅のホームで飛び込もうか考えてた", "方法・手段"),
    ],
)
def test_words_with_long_vowel_marks_reach_the_analyser(text: str, category: str) -> None:
    assert category in categories(text)


def test_kana_spellings_of_living_are_read_but_going_to_school_is_not() -> None:
    assert "自殺念慮" in categories("いきるのがつらい")
    assert "自殺念慮" in categories("もういきていたくない")
    assert categories("学校いきたくない") == set()


def test_a_sentence_read_before_is_matched_where_it_stands_in_the_new_message() -> None:
    first = DETECTOR.detect("死んじゃいたい")
    again = DETECTOR.detect("ねえきいて。死んじゃいたい")

    assert [r.to_json() for r in again.risks] == [r.to_json() for r in first.risks]
    assert [r.match for r in again.risks] == ["死んじゃいたい"]


def test_a_stricter_pre_filter_still_reads_kanji_and_kana_mixed_as_students_write() -> None:
    assert "自傷" in categories("タバコを腕に押しつけた")
    assert "方法・手段" in categories("くすりいっぱいのんじゃった")
    assert categories("死.ぬ.ほ.ど.笑った") == set()


def test_every_labelled_message_keeps_its_pinned_keywords_and_risks() -> None:
    """``bench/data/risk_verdicts.json`` (``bench/triage_risk.py --write-verdicts``) holds the
    verdict on each message of the labelled set: a change for speed must not alter one."""
    expected = json.loads((LABELLED / "risk_verdicts.json").read_text(encoding="utf-8"))
    risky = [line.split("\t", 1)[1] for line in _lines("risk_risk.txt")]
    assert set(expected) == set(risky) | set(_lines("risk_everyday.txt"))
    differing = {}
    for text, verdict in expected.items():
        detection = DETECTOR.detect(text)
        actual = {
            "keywords": list(detection.keywords),
            "risks": [r.to_json() for r in detection.risks],
        }
        if actual != verdict:
            differing[text] = actual
    assert differing == {}


def _lines(name: str) -> list[str]:
    text = (LABELLED / name).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize(
    "text", ["ikitakunai", "いきたくない", "もういきたくねえ", "もう生きたくない"]
)
def test_not_wanting_to_live_written_in_kana_or_romaji_is_suicidal_ideation(text: str) -> None:
    assert "自殺念慮" in categories(text)


@pytest.mark.parametrize(
    "text",
    [
        "明日塾いきたくない",
        "ライブにいきたくないわけじゃない",
        "寝坊していきたくない気分",
        "あの店には二度といきたくない",
        "gakkou ikitakunai",
        "学校に行きたくない",
    ],
)
def test_not_wanting_to_go_somewhere_is_not_a_risk(text: str) -> None:
    assert categories(text) == set()


@pytest.mark.parametrize(
    "text",
    ["頭を壁にぶつけてる", "イライラすると壁に頭をガンガンぶつけちゃう", "床に頭を叩きつけた"],
)
def test_hitting_ones_head_against_a_wall_or_the_floor_is_self_harm(text: str) -> None:
    assert "自傷" in categories(text)


@pytest.mark.parametrize(
    "text",
    [
        "ドアに頭をぶつけた",
        "転んで床に頭をぶつけた",
        "廊下で滑って壁に頭をぶつけた",
        "お風呂の床で頭ぶつけた",
        "車を壁にぶつけた",
    ],
)
def test_bumping_ones_head_by_accident_is_not_urgent(text: str) -> None:
    assert categories(text) == set()
    assert not DETECTOR.detect(text).urgent


def test_a_lexicon_with_a_category_the_report_does_not_count_is_refused() -> None:
    entry = {"category": "いたずら", "term": "x", "words": ["死ぬ"]}
    with pytest.raises(ValueError, match="unknown category"):
        RiskReader({"entries": [entry]}, lambda kana: ())
    with pytest.raises(ValueError, match="the categories are"):
        RiskReader({"categories": [*RISK_CATEGORIES, "いたずら"], "entries": []}, lambda kana: ())


def test_every_category_of_the_shipped_lexicon_is_one_the_report_counts() -> None:
    lexicon = load_lexicon(SHIPPED)
    assert lexicon is not None
    assert {entry["category"] for entry in lexicon["entries"]} == set(RISK_CATEGORIES)
