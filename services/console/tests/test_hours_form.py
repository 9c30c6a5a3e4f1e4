"""The hours form: what is posted becomes the HoursConfig the services use, or Japanese problems."""

from __future__ import annotations

from datetime import date, time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from soudan_console.hours_form import (
    FIELD_MAX,
    HoursForm,
    HoursFormError,
    SessionRow,
    WeeklyRows,
    hours_problem_ja,
)
from soudan_shared.config import ConfigError, HoursConfig, load_config
from soudan_shared.config_store import parse_section_yaml

pytestmark = pytest.mark.unit

TOKYO = ZoneInfo("Asia/Tokyo")
SHIPPED = Path(__file__).resolve().parents[3] / "deploy" / "config"


def _posted(form: HoursForm) -> dict[str, str]:
    """What a browser sends from the page showing ``form`` (the names the template uses)."""
    out: dict[str, str] = {}

    def sessions(rows: list[SessionRow]) -> None:
        for s in rows:
            out.update({f"{s.name}-open": s.open, f"{s.name}-last": s.last})
            out[f"{s.name}-close"] = s.close

    def week(w: WeeklyRows) -> None:
        out[f"{w.name}-holiday"] = "own" if w.holiday_own else "weekday"
        for day in w.days:
            sessions(day.sessions)

    week(form.weekly)
    if form.closed_on_public_holidays:
        out["closed_on_public_holidays"] = "1"
    for p in form.periods:
        out |= {f"{p.name}-name": p.label, f"{p.name}-start": p.start, f"{p.name}-end": p.end}
        out[f"{p.name}-note"] = p.note
        if p.own:
            out[f"{p.name}-own"] = "1"
        week(p.weekly)
    for c in form.closed:
        out |= {f"{c.name}-start": c.start, f"{c.name}-end": c.end, f"{c.name}-note": c.note}
    for s in form.special:
        out |= {f"{s.name}-date": s.date, f"{s.name}-note": s.note}
        sessions(s.sessions)
    return out


def _problems(posted: dict[str, str]) -> list[str]:
    with pytest.raises(HoursFormError) as caught:
        HoursForm.from_post(posted).to_config(TOKYO)
    return [p.message for p in caught.value.problems]


EVENING = [{"open": "17:00", "last_acceptance": "20:30", "close": "21:00"}]
EVERY_KIND = HoursConfig.model_validate(
    {
        "timezone": "Asia/Tokyo",
        "periods": [
            {"name": "令和8年度", "start": "2026-04-01", "end": "2027-03-31", "note": "通常"},
            {
                "name": "夏季集中期間",
                "start": "2026-07-20",
                "end": "2026-08-31",
                "weekly": {
                    "monday": [{"open": "13:00", "last_acceptance": "20:00", "close": "20:30"}],
                    "saturday": [
                        {"open": "10:00", "close": "12:00"},
                        {"open": "13:00", "close": "16:00"},
                    ],
                    "holiday": [],
                },
            },
        ],
        "weekly": {
            "monday": EVENING,
            "tuesday": EVENING,
            "wednesday": [],
            "thursday": EVENING,
            "friday": EVENING,
            "holiday": [{"open": "13:00", "last_acceptance": "16:30", "close": "17:00"}],
        },
        "closed_dates": [
            {"start": "2026-12-29", "end": "2027-01-03", "note": "年末年始"},
            "2026-08-14",
        ],
        "closed_on_public_holidays": True,
        "overrides": [
            {
                "date": "2026-12-24",
                "sessions": [
                    {"open": "13:00", "close": "16:00"},
                    {"open": "17:00", "close": "19:00"},
                ],
                "note": "クリスマス・イブ",
            },
            {"date": "2026-10-30", "sessions": [], "note": "研修のため休み"},
        ],
    }
)


@pytest.mark.parametrize(
    "config", [EVERY_KIND, load_config(SHIPPED).hours], ids=["every kind", "shipped"]
)
def test_hours_shown_in_the_form_and_posted_back_unchanged_are_the_same_hours(
    config: HoursConfig,
) -> None:
    shown = HoursForm.from_config(config).padded()
    assert HoursForm.from_post(_posted(shown)).to_config(TOKYO) == config


def test_the_rows_an_admin_fills_become_the_hours_and_blank_or_removed_rows_are_left_out() -> None:
    posted = {
        "p0-name": " 令和9年度 ",
        "p0-start": "2027-04-01",
        "p0-end": "2028-03-31",
        "p1-name": "消す期間",
        "p1-start": "2027-01-01",
        "p1-end": "2027-01-31",
        "p1-remove": "1",
        "p2-name": "",
        "w-monday-0-open": "１３：００",
        "w-monday-0-close": "16:00",
        "w-monday-3-open": "17:00",
        "w-monday-3-last": "20:30",
        "w-monday-3-close": "21:00",
        "w-monday-1-open": "",
        "w-tuesday-0-open": "17:00",
        "w-tuesday-0-close": "21:00",
        "w-holiday": "weekday",
        "w-holiday-0-open": "09:00",
        "w-holiday-0-close": "10:00",
        "c4-start": "2027/08/14",
        "c7-start": "",
        "s0-date": "2027-10-30",
        "s0-note": "研修のため休み",
        "action": "save",
    }
    hours = HoursForm.from_post(posted).to_config(TOKYO)
    assert [(p.name, p.start, p.end, p.weekly) for p in hours.periods] == [
        ("令和9年度", date(2027, 4, 1), date(2028, 3, 31), None)
    ]
    assert [(s.open, s.last_acceptance, s.close) for s in hours.weekly.monday] == [
        (time(13), time(16), time(16)),
        (time(17), time(20, 30), time(21)),
    ]
    assert [(s.open, s.close) for s in hours.weekly.tuesday] == [(time(17), time(21))]
    assert hours.weekly.wednesday == ()
    assert hours.weekly.holiday is None
    assert [(c.start, c.end) for c in hours.closed_dates] == [
        (date(2027, 8, 14), date(2027, 8, 14))
    ]
    assert [(o.date, o.sessions, o.note) for o in hours.overrides] == [
        (date(2027, 10, 30), (), "研修のため休み")
    ]
    assert hours.closed_on_public_holidays is False


def test_a_period_without_its_box_ticked_uses_the_usual_weekly_hours_whatever_its_rows_say() -> (
    None
):
    posted = {
        "p0-name": "夏",
        "p0-start": "2027-07-20",
        "p0-end": "2027-08-31",
        "p0-w-monday-0-open": "25:00",
        "w-monday-0-open": "17:00",
        "w-monday-0-close": "21:00",
    }
    assert HoursForm.from_post(posted).to_config(TOKYO).periods[0].weekly is None
    assert _problems({**posted, "p0-own": "1"}) == [
        "相談期間「夏」の月曜日の始まりの時刻「25:00」は、"
        "00:00〜23:59 の 17:00 のように書いてください",
        "相談期間「夏」の月曜日の終わりの時刻が入っていません",
    ]


def test_every_mistake_is_named_in_japanese_by_its_field() -> None:
    posted = {
        "p0-name": "",
        "p0-start": "2027-04-01",
        "p0-end": "2027-04-31",
        "p1-name": "冬",
        "p1-start": "2027-12-01",
        "p1-end": "2027-12-31",
        "p2-name": "冬",
        "p2-start": "2028-12-01",
        "p2-end": "2028-12-31",
        "p2-note": "あ" * 501,
        "w-monday-0-open": "17:00",
        "w-monday-0-last": "21:30",
        "w-monday-0-close": "21:00",
        "w-tuesday-0-open": "17:00",
        "w-tuesday-0-close": "17:00",
        "w-holiday": "own",
        "w-holiday-0-close": "17:00",
        "c0-end": "2027-01-03",
        "c1-start": "2027-01-10",
        "c1-end": "2027-01-05",
        "s0-date": "2027-12-24",
        "s0-0-open": "17:00",
        "s0-0-close": "16:30",
        "s1-date": "2027-12-24",
        "s2-note": "日付を忘れた",
    }
    assert _problems(posted) == [
        "1番目の相談期間に名前を入れてください",
        "1番目の相談期間の終わりの日「2027-04-31」は、2026-12-24 のように書いてください",
        "相談期間「冬」が2つあります。どちらかの名前を変えてください",
        "相談期間「冬」のメモは500文字までにしてください",
        "月曜日の新しい相談の受付の最後の時刻（21:30）は、始まり（17:00）より後で、"
        "終わり（21:00）までにしてください",
        "火曜日の終わりの時刻が始まりと同じになっています",
        "祝日の始まりの時刻が入っていません",
        "1番目の休みの日の始まりの日（1日だけなら、その日）が入っていません",
        "休みの日（1月10日〜1月5日）の終わりの日が始まりの日より前になっています",
        "12月24日の終わりの時刻が始まりより前になっています",
        "12月24日の特別な日が2つあります。1つにまとめてください",
        "3番目の特別な日の日付が入っていません",
    ]


def test_a_mistake_marks_the_field_to_fix() -> None:
    with pytest.raises(HoursFormError) as caught:
        HoursForm.from_post({"s0-date": "2027-12-24", "s0-0-open": "17:00"}).to_config(TOKYO)
    assert caught.value.fields == {"s0-0-close"}


def test_two_sessions_of_a_day_that_overlap_are_refused_naming_both() -> None:
    posted = {
        "w-friday-0-open": "13:00",
        "w-friday-0-close": "16:00",
        "w-friday-1-open": "15:30",
        "w-friday-1-close": "18:00",
        "w-friday-1-last": "18:30",
    }
    assert _problems(posted) == [
        "金曜日の2つ目の時間帯の新しい相談の受付の最後の時刻（18:30）は、始まり（15:30）より後で、"
        "終わり（18:00）までにしてください"
    ]
    posted["w-friday-1-last"] = ""
    assert _problems(posted) == ["金曜日の時間帯 13:00〜16:00 と 15:30〜18:00 が重なっています"]


def test_too_many_rows_are_refused_with_a_bounded_answer() -> None:
    posted: dict[str, Any] = {f"s{n}-date": f"2027-01-{n % 28 + 1:02d}" for n in range(101)}
    posted |= {f"w-monday-{n}-open": "17:00" for n in range(11)}
    problems = _problems(posted)
    assert "特別な日が多すぎます。100までにしてください" in problems
    assert "月曜日の時間帯が多すぎます。10までにしてください" in problems


def test_a_posted_value_is_cut_and_a_file_upload_is_ignored() -> None:
    form = HoursForm.from_post({"p0-note": "あ" * 5000, "p0-name": object()})
    assert len(form.periods[0].note) == FIELD_MAX
    assert form.periods[0].label == ""


def test_the_form_always_ends_each_list_with_an_empty_row_and_more_adds_one() -> None:
    shown = HoursForm.from_config(EVERY_KIND).padded()
    assert [len(d.sessions) for d in shown.weekly.days] == [2, 2, 1, 2, 2, 1, 1, 2]
    assert (len(shown.periods), len(shown.closed), len(shown.special)) == (3, 3, 3)
    assert shown.padded() == shown
    more = HoursForm.from_post(_posted(shown)).more()
    assert [len(d.sessions) for d in more.weekly.days] == [3, 3, 2, 3, 3, 2, 2, 3]
    assert (len(more.periods), len(more.closed), len(more.special)) == (4, 4, 4)
    assert more.special[-1].sessions[0].name == "s3-0"
    assert HoursForm.from_post(_posted(more)).to_config(TOKYO) == EVERY_KIND


def test_a_problem_of_the_hours_model_is_told_in_japanese_with_its_place() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_section_yaml(
            "hours",
            "timezone: Asia/Tokyo\nperiods: []\nclosed_on_public_holidays: false\n"
            'weekly: {monday: [{open: "21:00", close: "17:00"}]}\n',
        )
    assert hours_problem_ja(str(caught.value)) == (
        "曜日ごとの受付時間（weekly）の月曜日の1番目: "
        "受付開始 21:00 を終了 17:00 より前にしてください"
    )
