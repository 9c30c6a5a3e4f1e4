"""The month's figures computed in the store agree with their definitions, fact by fact."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from soudan_reporting.aggregate import compute_figures
from soudan_reporting.build import build_month
from soudan_reporting.factgen import MonthGenerator, reference_figures, store_facts
from soudan_reporting.figures import Durations, Figures, TokenState
from soudan_reporting.month import Month
from soudan_reporting.recorder import EVENTS, TOKYO
from soudan_reporting.report import Labels, Limits, as_text, build_report
from soudan_reporting.settings import ReportingSettings
from soudan_shared import fact_types as ft
from soudan_shared.config import load_config
from soudan_shared.contracts import Fact
from soudan_shared.store import Store

pytestmark = pytest.mark.integration
OCTOBER = Month(2026, 10)


def _jst(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=TOKYO).astimezone(UTC)


def _fact(type_: str, at: datetime, **data: object) -> Fact:
    return Fact(type=type_, at=at, service="test", data=data)


async def test_a_generated_month_gives_exactly_the_figures_of_their_definitions(
    store: Store,
) -> None:
    generator = MonthGenerator(OCTOBER, cases=150, seed=3, webhook_every_minutes=120)
    facts = list(generator.facts())
    await store_facts(store.db[EVENTS], facts)

    figures = await compute_figures(store.db[EVENTS], OCTOBER)

    assert figures == reference_figures(facts, OCTOBER)
    assert figures.sends_maybe_twice > 0  # the generated month has some: the count is exercised
    plan = generator.plan
    assert figures.cases_opened == plan.cases_in_month == 152  # 150 + the two boundary cases
    assert figures.followed_new == plan.new_follows
    assert figures.followed_unblocked == plan.unblocks
    assert figures.unfollowed == plan.unfollows
    assert figures.messages_in == plan.counts[ft.MESSAGE_RECEIVED] - _outside(
        facts, ft.MESSAGE_RECEIVED
    )
    assert figures.retention_runs == 31
    assert figures.service_starts == {
        "ingress": 1,
        "triage": 2,
        "dispatch": 1,
        "console": 1,
        "reporting": 1,
    }
    assert {s.staff_id for s in figures.staff} == {f"s0{i}" for i in range(1, 10)} - {"s08"}
    over_90 = sorted(s.staff_id for s in figures.staff if (s.password_age_days or 0) > 90)
    assert over_90 == ["s03", "s05"]
    assert figures.token.age_days == 40
    # the generator's spread makes these non-trivial: a comparison of empties would prove nothing
    assert figures.first_reply.n > 10
    assert figures.flag_to_reply.n > 0
    assert figures.urgent_by_keyword
    assert figures.webhook_latency_ms
    # the month's LINE budget: the last reading of the month, pushes and free replies by kind
    assert figures.quota_limit == 5_000
    readings = [f for f in facts if f.type == ft.LINE_QUOTA_READ and OCTOBER.start <= f.at]
    assert figures.quota_used == max(readings, key=lambda f: f.at).data["used"]
    assert figures.pushes_by_kind["counselor"] > 0
    assert figures.free_replies_by_kind["counselor"] > 0
    assert figures.free_replies_by_kind["auto"] > 0
    # the check-ins after a close: sent, answered by choice (each case once), skipped
    assert figures.checkin_sent > 0
    assert set(figures.checkin_answers) == {"good", "neutral", "bad"}
    assert 0 < sum(figures.checkin_answers.values()) < figures.checkin_sent
    assert figures.checkin_skipped.get("emergency", 0) > 0


def _outside(facts: list[Fact], fact_type: str) -> int:
    return sum(1 for f in facts if f.type == fact_type and not OCTOBER.start <= f.at < OCTOBER.end)


async def test_an_empty_month_gives_zeros(store: Store) -> None:
    figures = await compute_figures(store.db[EVENTS], OCTOBER)
    assert figures == Figures(month="2026-10")
    assert figures.response_rate is None


async def test_a_case_is_counted_in_the_month_of_its_tokyo_date_at_midnight(
    store: Store,
) -> None:
    last_moment = _jst(2026, 10, 31, 23, 59, 59) + timedelta(milliseconds=999)
    first_moment = _jst(2026, 11, 1, 0, 0, 0)
    facts = [
        _fact(ft.CASE_OPENED, _jst(2026, 10, 1, 0, 0, 0), case_id="a", in_hours=False),
        _fact(ft.CASE_OPENED, last_moment, case_id="b", in_hours=False),
        _fact(ft.CASE_OPENED, first_moment, case_id="c", in_hours=False),
        _fact(ft.CASE_OPENED, _jst(2026, 9, 30, 23, 59, 59), case_id="d", in_hours=False),
    ]
    await store_facts(store.db[EVENTS], facts)

    october = await compute_figures(store.db[EVENTS], OCTOBER)
    november = await compute_figures(store.db[EVENTS], OCTOBER.next())

    assert october.cases_opened == 2
    assert october.opened_by_day == {"2026-10-01": 1, "2026-10-31": 1}
    assert october.opened_by_hour == {0: 1, 23: 1}
    assert october.opened_by_weekday == {4: 1, 6: 1}  # Thursday 1st, Saturday 31st
    assert november.cases_opened == 1
    assert november.opened_by_day == {"2026-11-01": 1}


async def test_many_cases_alike_in_one_hour_are_each_counted(store: Store) -> None:
    at = _jst(2026, 10, 9, 19, 0)
    alike = {"in_hours": True, "out_of_scope": True, "urgent": True, "school_type": "other"}
    facts = [
        _fact(ft.CASE_OPENED, at + timedelta(seconds=i), case_id=f"c{i}", **alike)
        for i in range(20)
    ]
    await store_facts(store.db[EVENTS], facts)

    figures = await compute_figures(store.db[EVENTS], OCTOBER)

    assert (figures.cases_opened, figures.cases_in_hours) == (20, 20)
    assert (figures.cases_out_of_scope, figures.cases_urgent_at_open) == (20, 20)
    assert figures.opened_by_hour == {19: 20}
    assert figures.opened_by_school == {"other": 20}


async def test_a_case_whose_school_answer_comes_after_its_first_message_is_counted_out_of_scope(
    store: Store,
) -> None:
    at = _jst(2026, 10, 9, 19, 0)
    opened = {"in_hours": True, "out_of_scope": False, "urgent": False, "school_type": None}

    def answer(seconds: int, user: str, school: str, eligible: bool) -> Fact:
        return _fact(
            ft.SCHOOL_TYPE_SET,
            at + timedelta(seconds=seconds),
            user_id=user,
            school_type=school,
            eligible=eligible,
        )

    facts = [
        # writes first, answers "other" (対象外) while the case is open: 対象外 in the console
        _fact(ft.CASE_OPENED, at, case_id="late", user_id="U1", **opened),
        answer(30, "U1", "other", False),
        # answers 対象外, then corrects it to a public high school: in scope again
        _fact(ft.CASE_OPENED, at, case_id="corrected", user_id="U2", **opened),
        answer(20, "U2", "sapporo_city", False),
        answer(40, "U2", "public_high", True),
        # answers only after the case was closed: the closed case stays as it was
        _fact(ft.CASE_OPENED, at, case_id="closed", user_id="U3", **opened),
        _fact(ft.CASE_CLOSED, at + timedelta(seconds=50), case_id="closed", category="other"),
        answer(60, "U3", "other", False),
        # answered before writing: 対象外 from the start
        answer(-60, "U4", "private_outside", False),
        _fact(
            ft.CASE_OPENED,
            at,
            case_id="early",
            user_id="U4",
            **{**opened, "out_of_scope": True, "school_type": "private_outside"},
        ),
    ]
    await store_facts(store.db[EVENTS], facts)

    figures = await compute_figures(store.db[EVENTS], OCTOBER)

    assert figures.cases_opened == 4
    assert figures.cases_out_of_scope == 2  # "late" and "early"
    assert figures.opened_by_school == {
        "other": 1,
        "public_high": 1,
        "": 1,
        "private_outside": 1,
    }
    assert figures == reference_figures(facts, OCTOBER)


async def test_a_reply_after_the_month_ends_counts_for_the_case_that_began_in_it(
    store: Store,
) -> None:
    opened = _jst(2026, 10, 31, 21, 50)
    facts = [
        _fact(ft.CASE_OPENED, opened, case_id="late", in_hours=True, urgent=True),
        _fact(ft.CASE_CLAIMED, opened + timedelta(minutes=4), case_id="late", staff_id="s1"),
        _fact(
            ft.REPLY_SENT,
            opened + timedelta(minutes=20),  # 22:10 JST... still October
            case_id="late",
            purpose="counselor_reply",
            method="reply",
        ),
        _fact(ft.CASE_CLOSED, opened + timedelta(hours=3), case_id="late", category="family"),
        _fact(ft.CASE_OPENED, opened, case_id="never", in_hours=True),
    ]
    await store_facts(store.db[EVENTS], facts)

    figures = await compute_figures(store.db[EVENTS], OCTOBER)

    assert figures.cases_in_hours == 2
    assert figures.answered_in_hours == 1
    assert figures.response_rate == 0.5
    assert figures.first_reply == Durations(1, 1200.0, 1200.0)
    assert figures.first_reply_urgent == Durations(1, 1200.0, 1200.0)
    assert figures.waiting == Durations(1, 240.0, 240.0)
    assert figures.length == Durations(1, 10_800.0, 10_800.0)  # closed on 1 November
    assert figures.cases_closed == 0  # the close itself is November's
    assert (await compute_figures(store.db[EVENTS], OCTOBER.next())).closed_by_category == {
        "family": 1
    }


async def test_the_time_from_flag_to_reply_counts_only_replies_after_the_flag(
    store: Store,
) -> None:
    opened = _jst(2026, 10, 5, 18, 0)
    reply = {"case_id": "x", "purpose": "counselor_reply", "method": "reply"}
    facts = [
        _fact(ft.CASE_OPENED, opened, case_id="x", in_hours=True),
        _fact(ft.REPLY_SENT, opened + timedelta(minutes=1), **reply),
        _fact(
            ft.CASE_FLAGGED_URGENT,
            opened + timedelta(minutes=10),
            case_id="x",
            keywords=["死に", "消えたい"],
            in_hours=True,
        ),
        _fact(
            ft.CASE_FLAGGED_URGENT,
            opened + timedelta(minutes=12),
            case_id="x",
            keywords=["死に"],
            in_hours=True,
        ),
        _fact(ft.REPLY_SENT, opened + timedelta(minutes=13), **reply),
        # another case, first flagged before the hours begin and again once they have
        _fact(ft.CASE_FLAGGED_URGENT, opened - timedelta(minutes=70), case_id="y", in_hours=False),
        _fact(ft.CASE_FLAGGED_URGENT, opened + timedelta(minutes=5), case_id="y", in_hours=True),
    ]
    await store_facts(store.db[EVENTS], facts)

    figures = await compute_figures(store.db[EVENTS], OCTOBER)

    assert figures.flag_to_reply == Durations(1, 180.0, 180.0)
    assert figures.urgent_cases == 2
    assert figures.urgent_out_of_hours == 1
    assert figures.urgent_by_keyword == {"死に": 1, "消えたい": 1}
    assert figures.first_reply_urgent == Durations(1, 60.0, 60.0)


async def test_urgent_cases_are_counted_once_per_risk_category_they_were_flagged_for(
    store: Store,
) -> None:
    at = _jst(2026, 10, 7, 18, 0)
    flags = [
        ("a", ["自傷"], 0),
        ("a", ["自傷", "自殺念慮"], 30),  # the same case again: 自傷 still counts once
        ("b", ["暴力・虐待"], 60),
        ("c", [], 90),  # a keyword alone
    ]
    facts = [
        _fact(
            ft.CASE_FLAGGED_URGENT,
            at + timedelta(minutes=minutes),
            case_id=case,
            keywords=[] if risks else ["死に"],
            risks=risks,
            in_hours=True,
        )
        for case, risks, minutes in flags
    ]
    await store_facts(store.db[EVENTS], facts)

    figures = await compute_figures(store.db[EVENTS], OCTOBER)

    assert figures.urgent_cases == 3
    assert figures.urgent_by_risk == {"自傷": 1, "自殺念慮": 1, "暴力・虐待": 1}
    assert figures.urgent_by_keyword == {"死に": 1}
    report = build_report(figures, labels=Labels(), limits=Limits(), built_at=at)
    tables = {t.title: t for s in report.sections for t in s.tables}
    assert tables["危険のサインの種類別（相談の件数）"].rows == (
        ("自殺念慮", 1),
        ("方法・手段", 0),
        ("自傷", 1),
        ("暴力・虐待", 1),
    )


async def test_webhook_summaries_merge_whether_their_buckets_are_cumulative_or_not(
    store: Store,
) -> None:
    at = _jst(2026, 10, 2, 12, 0)
    per_bucket = {"<=10": 6, "<=100": 3, "+Inf": 1}
    cumulative = {"<=10": 6, "<=100": 9, "+Inf": 10}
    facts = [
        _fact(
            ft.WEBHOOK_REQUESTS,
            at + timedelta(minutes=i),
            requests=10,
            by_status={"200": 9, "401": 1},
            latency_ms_buckets=buckets,
        )
        for i, buckets in enumerate([per_bucket, cumulative, per_bucket])
    ]
    await store_facts(store.db[EVENTS], facts)

    figures = await compute_figures(store.db[EVENTS], OCTOBER)

    assert figures.webhook_requests == 30
    assert figures.webhook_by_status == {"200": 27, "401": 3}
    assert figures.webhook_latency_ms == {"<=10": 18, "<=100": 9, "+Inf": 3}


async def test_a_month_of_only_cumulative_webhook_summaries_is_differenced_on_every_engine(
    store: Store,
) -> None:
    # The bucket counts of one summary are added up with $reduce: {"$sum": "$kv.v"} over an
    # array of documents gave nothing on SecantusDB 0.7.0b3, so nothing was differenced there.
    at = _jst(2026, 10, 3, 9, 0)
    cumulative = {"<=10": 2, "<=100": 5, "+Inf": 6}
    facts = [
        _fact(ft.WEBHOOK_REQUESTS, at + timedelta(minutes=i), requests=6, by_status={"200": 6},
              latency_ms_buckets=cumulative)
        for i in range(2)
    ]  # fmt: skip
    await store_facts(store.db[EVENTS], facts)

    figures = await compute_figures(store.db[EVENTS], OCTOBER)

    assert figures.webhook_latency_ms == {"<=10": 4, "<=100": 6, "+Inf": 2}


@pytest.mark.parametrize(
    ("rotation", "expected"),
    [
        (None, TokenState()),
        ("issued", TokenState(source=ft.TOKEN_ISSUED, age_days=6, key_id="kid-b")),
        ("revoked", TokenState(source=ft.LINE_TOKEN_ROTATED, age_days=40, key_id="kid-1")),
    ],
)
async def test_the_line_token_age_comes_from_whichever_token_facts_exist(
    store: Store, rotation: str | None, expected: TokenState
) -> None:
    generator = MonthGenerator(OCTOBER, cases=5, webhook_every_minutes=1440, rotation=rotation)
    facts = list(generator.facts())
    await store_facts(store.db[EVENTS], facts)

    token = (await compute_figures(store.db[EVENTS], OCTOBER)).token

    assert token == reference_figures(facts, OCTOBER).token
    assert (token.source, token.age_days, token.key_id) == (
        expected.source,
        expected.age_days,
        expected.key_id,
    )
    assert token.revoked is (rotation == "revoked")


async def test_a_past_month_gives_the_same_figures_after_later_months_are_recorded(
    store: Store,
) -> None:
    october = list(MonthGenerator(OCTOBER, cases=40, seed=5, webhook_every_minutes=720).facts())
    await store_facts(store.db[EVENTS], october)
    before = await compute_figures(store.db[EVENTS], OCTOBER)

    january = MonthGenerator(Month(2027, 1), cases=40, seed=6, webhook_every_minutes=720)
    later = [f for f in january.facts() if f.at >= Month(2026, 12).start]
    assert await store_facts(store.db[EVENTS], later) > 500
    again = await compute_figures(store.db[EVENTS], OCTOBER)

    assert again == before


async def test_the_security_tables_name_staff_and_settings_as_the_section_knows_them(
    store: Store,
) -> None:
    admin, counselor = "9f" * 16, "3a" * 16  # the console's 32-character account ids
    canned = "c7" * 16
    at = _jst(2026, 10, 9, 19, 0)
    facts = [
        _fact(ft.STAFF_CREATED, at, staff_id=admin, role="admin", by="bootstrap", name="管理 一郎"),
        _fact(  # created after the admin: the table lists changes in the order they were made
            ft.STAFF_CREATED,
            at + timedelta(minutes=1),
            staff_id=counselor,
            role="counselor",
            by=admin,
            name="相談 花子",
        ),
        _fact(ft.PASSWORD_CHANGED, at, staff_id=counselor, by=counselor),
        _fact(ft.CASE_VIEWED, at, staff_id=counselor, case_id="c1"),
        _fact(ft.SETTINGS_CHANGED, at, what=f"canned_responses.{canned}", staff_id=admin),
        _fact(ft.SETTINGS_CHANGED, at, what=f"canned_responses.{'d8' * 16}", staff_id=admin),
        _fact(ft.SETTINGS_CHANGED, at, what="config.hours", staff_id=admin),
        _fact(ft.SETTINGS_CHANGED, at, what=f"staff.{counselor}.locked", staff_id=admin),
    ]
    await store_facts(store.db[EVENTS], facts)
    figures = await compute_figures(store.db[EVENTS], OCTOBER)
    report = build_report(figures, labels=Labels(), limits=Limits(), built_at=at)
    tables = {t.title: t for s in report.sections for t in s.tables}

    staff_column = [row[0] for row in tables["職員のパスワードと二要素認証（月末）"].rows]
    assert staff_column == [f"相談 花子（{counselor}）", f"管理 一郎（{admin}）"]
    changes = tables["職員アカウントの変更"].rows
    assert [(row[1], row[5]) for row in changes] == [
        (f"管理 一郎（{admin}）", "初期設定（最初の管理者）"),
        (f"相談 花子（{counselor}）", f"管理 一郎（{admin}）"),
    ]
    assert [row[0] for row in tables["相談記録の閲覧と操作（監査記録の集計）"].rows] == [
        f"相談 花子（{counselor}）"
    ]
    assert tables["設定の変更"].rows == (
        ("定型の返信（追加・削除）", 2),
        ("相談の期間と受付時間・休みの日", 1),
        ("職員アカウントのロック解除", 1),
    )


async def test_closed_cases_are_counted_by_grade_gender_each_of_their_categories_and_hand_over(
    store: Store,
) -> None:
    at = _jst(2026, 10, 14, 18, 0)

    def close(case: str, minutes: int, **data: object) -> Fact:
        return _fact(ft.CASE_CLOSED, at + timedelta(minutes=minutes), case_id=case, **data)

    facts = [
        close("a", 0, categories=["bullying", "family"], category="bullying", grade="jh2",
              gender="female", handed_over=True),
        close("b", 1, categories=["family"], category="family", grade="jh2", gender="male",
              handed_over=False),
        # a key picked twice is still one case of that category
        close("c", 2, categories=["health", "health"], category="health", grade=None,
              gender=None, handed_over=True),
        # closed before the attributes were recorded: its one category, 不明, not handed over
        close("d", 3, category="family"),
        close("e", 4, category=None),
    ]  # fmt: skip
    await store_facts(store.db[EVENTS], facts)

    figures = await compute_figures(store.db[EVENTS], OCTOBER)

    assert figures.cases_closed == 5
    assert figures.closed_by_category == {"bullying": 1, "family": 3, "health": 1, "": 1}
    assert figures.closed_by_grade == {"jh2": 2, "": 3}
    assert figures.closed_by_gender == {"female": 1, "male": 1, "": 3}
    assert figures.cases_handed_over == 2
    assert figures == reference_figures(facts, OCTOBER)

    labels = Labels(
        categories=(("bullying", "いじめ"), ("family", "家庭"), ("health", "心身の健康"))
    )
    report = build_report(figures, labels=labels, limits=Limits(), built_at=at)
    tables = {t.title: t for s in report.sections for t in s.tables}
    by_category = tables["分類別（今月終わった相談）"]
    # 不明 as in the grade and gender tables (and their note), not （不明）
    assert by_category.rows == (("いじめ", 1), ("家庭", 3), ("心身の健康", 1), ("不明", 1))
    assert "分類を記録しなかった相談は「不明」に数えています" in by_category.note
    assert "複数の分類があるときは、それぞれに数えています" in by_category.note
    assert tables["学年別（今月終わった相談）"].rows == (
        ("中1", 0), ("中2", 2), ("中3", 0), ("高1", 0), ("高2", 0), ("高3", 0), ("その他", 0),
        ("不明", 3),
    )  # fmt: skip
    assert tables["性別別（今月終わった相談）"].rows == (
        ("男性", 1),
        ("女性", 1),
        ("その他・答えない", 0),
        ("不明", 3),
    )
    assert tables["他の窓口につないだ件数（今月終わった相談）"].rows == (
        ("終わった相談", 5),
        ("うち他の窓口につないだ相談", 2),
        ("他の窓口につないだ割合", 0.4),
    )


async def test_a_month_whose_closes_changed_shape_midway_gives_the_figures_of_their_definitions(
    store: Store,
) -> None:
    change = _jst(2026, 10, 16)
    generator = MonthGenerator(
        OCTOBER, cases=120, seed=4, webhook_every_minutes=720, old_closes_before=change
    )
    facts = list(generator.facts())
    closes = [f for f in facts if f.type == ft.CASE_CLOSED and OCTOBER.start <= f.at < OCTOBER.end]
    old = [f for f in closes if "categories" not in f.data]
    assert old
    assert all(f.at < change for f in old)
    assert any(len(f.data.get("categories", ())) > 1 for f in closes)  # several categories
    await store_facts(store.db[EVENTS], facts)

    figures = await compute_figures(store.db[EVENTS], OCTOBER)

    assert figures == reference_figures(facts, OCTOBER)
    assert sum(figures.closed_by_category.values()) > figures.cases_closed == len(closes)
    assert figures.closed_by_grade[""] > len(old)  # the old closes, and new ones left unrecorded
    assert set(figures.closed_by_gender) == {"male", "female", "other", ""}
    assert 0 < figures.cases_handed_over < figures.cases_closed


BEFORE_ATTRIBUTES = Path(__file__).with_name("data") / "october_before_attributes.json"


async def test_a_month_of_old_closes_gives_the_figures_and_tables_it_gave_before_the_attributes(
    store: Store, config_dir: Path
) -> None:
    # The fixture is what reporting gave for this generated month before grades, genders and
    # hand-overs were counted (written by that code, commit 6439c72): its closes name one
    # category each, as every close did then.
    before = json.loads(BEFORE_ATTRIBUTES.read_text())
    generator = MonthGenerator(
        OCTOBER, **before["generator"], old_closes_before=Month(2027, 1).start
    )
    facts = list(generator.facts())
    assert not [f for f in facts if f.type == ft.CASE_CLOSED and "categories" in f.data]
    await store_facts(store.db[EVENTS], facts)

    figures = await compute_figures(store.db[EVENTS], OCTOBER)

    now = _plain(dataclasses.asdict(figures))
    assert {name: now[name] for name in before["figures"]} == before["figures"]
    closed = figures.cases_closed
    assert (figures.closed_by_grade, figures.closed_by_gender) == ({"": closed}, {"": closed})
    assert figures.cases_handed_over == 0

    labels = Labels.from_config(load_config(config_dir))
    report = build_report(figures, labels=labels, limits=Limits(), built_at=OCTOBER.end)
    tables = {t.title: t for s in report.sections for t in s.tables}
    for section in before["sections"]:
        for old_table in section["tables"]:
            table = tables[old_table["title"]]
            if old_table["title"] == "主な数値":  # now beside the previous month: same rows
                rows = {row[0]: row[1] for row in _plain(table.rows)}
                assert [[label, rows.get(label)] for label, _ in old_table["rows"]] == old_table[
                    "rows"
                ]
                continue
            assert _plain(table.columns) == old_table["columns"], old_table["title"]
            assert _plain(table.rows) == old_table["rows"], old_table["title"]


def _plain(value: object) -> object:
    """As the JSON fixture holds it: lists, string keys, instants in ISO 8601."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


async def test_the_summary_compares_each_figure_with_the_previous_month_when_it_was_recorded(
    store: Store, make_settings: Callable[..., ReportingSettings]
) -> None:
    def opened(at: datetime, case: str, in_hours: bool) -> Fact:
        return _fact(ft.CASE_OPENED, at, case_id=case, in_hours=in_hours)

    def reply(at: datetime, case: str) -> Fact:
        return _fact(
            ft.REPLY_SENT, at, case_id=case, purpose="counselor_reply", method="reply", messages=1
        )

    september, october = _jst(2026, 9, 10, 18, 0), _jst(2026, 10, 10, 18, 0)
    facts = [
        # September: 2 cases in hours, 1 answered after 10 minutes
        opened(september, "s1", True),
        opened(september, "s2", True),
        reply(september + timedelta(minutes=10), "s1"),
        # October: 5 cases, 4 in hours, 3 answered after 4 minutes
        *(opened(october + timedelta(seconds=i), f"o{i}", i < 4) for i in range(5)),
        *(reply(october + timedelta(minutes=4, seconds=i), f"o{i}") for i in range(3)),
    ]
    await store_facts(store.db[EVENTS], facts)
    settings = make_settings()

    built = await build_month(store.db, OCTOBER, settings)
    first = await build_month(store.db, Month(2026, 9), settings)  # nothing recorded in August

    key_figures = built.report.sections[0].tables[0]
    assert key_figures.columns == (
        "項目",
        "今月（2026年10月）",
        "前月（2026年9月）",
        "前月比（増減）",
    )
    rows = {row[0]: row[1:] for row in key_figures.rows}
    assert rows["相談件数"] == (5, 2, 3)
    assert rows["うち受付時間内"] == (4, 2, 2)
    assert rows["応答率（受付時間内）"] == (0.75, 0.5, 25.0)
    assert [as_text(cell) for cell in rows["応答率（受付時間内）"]] == [
        "75.0%",
        "50.0%",
        "+25.0ポイント",
    ]
    assert rows["最初の返信までの時間 中央値（分）"] == (4.0, 10.0, -6.0)
    assert as_text(rows["最初の返信までの時間 中央値（分）"][2]) == "-6.0"
    assert as_text(rows["受け取ったメッセージ"][2]) == "±0"
    assert built.previous == await compute_figures(store.db[EVENTS], Month(2026, 9))

    first_rows = {row[0]: row[1:] for row in first.report.sections[0].tables[0].rows}
    assert first_rows["相談件数"] == (2, None, None)  # shown as —, not as a change from 0
    assert all(row[2:] == (None, None) for row in first.report.sections[0].tables[0].rows)
    assert "前月の記録がないため" in first.report.sections[0].tables[0].note
    assert first.previous is None
