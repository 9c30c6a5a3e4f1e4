"""Opening hours at every boundary: opening, cut-off, closing, midnight, holidays, closed days."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from soudan_shared.config import HoursConfig, load_config
from soudan_triage.hours import Hours, describe, format_moment, is_japanese_holiday

pytestmark = pytest.mark.unit

SHIPPED = Path(__file__).resolve().parents[3] / "deploy" / "config"
JST = ZoneInfo("Asia/Tokyo")
SECOND = timedelta(seconds=1)


def jst(*args: int) -> datetime:
    return datetime(*args, tzinfo=JST)  # type: ignore[misc]


@pytest.fixture(scope="module")
def shipped() -> Hours:
    return Hours(load_config(SHIPPED).hours)


def hours(**changes: object) -> Hours:
    """The shipped hours with some fields replaced (validated like the file)."""
    base = load_config(SHIPPED).hours.model_dump()
    base.update(changes)
    return Hours(HoursConfig.model_validate(base))


SESSION = {"open": "17:00", "last_acceptance": "20:30", "close": "21:00"}


@pytest.mark.parametrize(
    ("at", "is_open", "accepting", "next_open"),
    [
        # Thursday 24 December 2026, an ordinary day
        (jst(2026, 12, 24, 16, 59, 59), False, False, jst(2026, 12, 24, 17)),
        (jst(2026, 12, 24, 17, 0, 0), True, True, jst(2026, 12, 25, 17)),
        (jst(2026, 12, 24, 20, 29, 59), True, True, jst(2026, 12, 25, 17)),
        (jst(2026, 12, 24, 20, 30, 0), True, False, jst(2026, 12, 25, 17)),  # cut-off
        (jst(2026, 12, 24, 20, 59, 59), True, False, jst(2026, 12, 25, 17)),
        (jst(2026, 12, 24, 21, 0, 0), False, False, jst(2026, 12, 25, 17)),  # closing
        (jst(2026, 12, 24, 23, 59, 59), False, False, jst(2026, 12, 25, 17)),
        (jst(2026, 12, 25, 0, 0, 0), False, False, jst(2026, 12, 25, 17)),  # midnight
        # the year-end break, 29 December to 3 January
        (jst(2026, 12, 28, 20, 29, 59), True, True, jst(2027, 1, 4, 17)),
        (jst(2026, 12, 29, 18, 0, 0), False, False, jst(2027, 1, 4, 17)),
        (jst(2027, 1, 3, 17, 0, 0), False, False, jst(2027, 1, 4, 17)),
        (jst(2027, 1, 4, 16, 59, 59), False, False, jst(2027, 1, 4, 17)),
        (jst(2027, 1, 4, 17, 0, 0), True, True, jst(2027, 1, 5, 17)),
        # a public holiday, open by default (closed_on_public_holidays: false)
        (jst(2027, 1, 11, 18, 0, 0), True, True, jst(2027, 1, 12, 17)),
        # after the last period: no next opening
        (jst(2027, 3, 31, 20, 0, 0), True, True, None),
        (jst(2027, 3, 31, 21, 0, 0), False, False, None),
        # before the first period
        (jst(2026, 3, 31, 18, 0, 0), False, False, jst(2026, 4, 1, 17)),
    ],
)
def test_the_shipped_hours_at_their_boundaries(
    shipped: Hours, at: datetime, is_open: bool, accepting: bool, next_open: datetime | None
) -> None:
    status = shipped.status(at)

    assert (status.open, status.accepting, status.next_open) == (is_open, accepting, next_open)


def test_a_time_in_another_zone_is_judged_in_tokyo(shipped: Hours) -> None:
    status = shipped.status(datetime(2026, 12, 24, 8, 0, tzinfo=UTC))  # 17:00 JST

    assert status.open
    assert status.accepting
    assert status.next_open is not None
    assert status.next_open.utcoffset() == timedelta(hours=9)


def test_a_time_without_a_zone_is_refused(shipped: Hours) -> None:
    with pytest.raises(ValueError, match="no UTC offset"):
        shipped.status(datetime(2026, 12, 24, 18, 0))


def test_public_holidays_close_when_configured() -> None:
    closing = hours(closed_on_public_holidays=True)

    # Monday 11 January 2027 is 成人の日; Sunday 2 May is not a holiday, 3-5 May are.
    assert is_japanese_holiday(date(2027, 1, 11))
    assert not closing.status(jst(2027, 1, 11, 18)).open
    assert closing.status(jst(2027, 1, 10, 20, 59, 59)).next_open == jst(2027, 1, 12, 17)
    # a substitute holiday (振替休日) counts too: Wednesday 6 May 2026
    assert is_japanese_holiday(date(2026, 5, 6))
    assert not closing.status(jst(2026, 5, 6, 18)).open


def test_holidays_may_have_hours_of_their_own() -> None:
    special = dict(load_config(SHIPPED).hours.weekly.model_dump())
    special["holiday"] = [{"open": "13:00", "last_acceptance": "15:30", "close": "16:00"}]
    holiday_hours = hours(weekly=special)

    assert holiday_hours.status(jst(2027, 1, 11, 12, 59, 59)).next_open == jst(2027, 1, 11, 13)
    assert holiday_hours.status(jst(2027, 1, 11, 13)).accepting
    assert not holiday_hours.status(jst(2027, 1, 11, 15, 30)).accepting
    assert not holiday_hours.status(jst(2027, 1, 11, 16)).open
    assert not holiday_hours.status(jst(2027, 1, 11, 18)).open  # not the weekday's hours
    assert holiday_hours.status(jst(2027, 1, 12, 18)).accepting  # the next day is ordinary


def test_a_period_may_have_its_own_weekly_hours() -> None:
    summer = {"monday": [{"open": "13:00", "close": "16:00"}]}
    with_summer = hours(
        periods=[
            {"name": "夏", "start": "2026-07-20", "end": "2026-08-31", "weekly": summer},
            {"name": "令和8年度", "start": "2026-04-01", "end": "2027-03-31"},
        ]
    )

    assert with_summer.status(jst(2026, 7, 27, 13)).accepting  # a Monday in summer
    assert with_summer.status(jst(2026, 7, 27, 15, 59, 59)).accepting  # no cut-off given
    assert not with_summer.status(jst(2026, 7, 28, 18)).open  # Tuesday: closed in summer
    assert with_summer.status(jst(2026, 9, 1, 18)).accepting  # back to the year's hours


def test_closed_ranges_and_single_closed_days() -> None:
    closed = hours(closed_dates=[{"start": "2026-08-13", "end": "2026-08-16"}, "2026-10-30"])

    assert closed.status(jst(2026, 8, 12, 20)).accepting
    assert not closed.status(jst(2026, 8, 13, 17)).open
    assert not closed.status(jst(2026, 8, 16, 20)).open
    assert closed.status(jst(2026, 8, 12, 21)).next_open == jst(2026, 8, 17, 17)
    assert not closed.status(jst(2026, 10, 30, 18)).open
    assert closed.status(jst(2026, 10, 31, 18)).open


def test_a_date_override_decides_the_day() -> None:
    overridden = hours(
        overrides=[
            {"date": "2026-12-31", "sessions": [{"open": "10:00", "close": "12:00"}]},
            {"date": "2026-12-24", "sessions": []},
        ]
    )

    # inside the year-end break, open by override
    assert overridden.status(jst(2026, 12, 31, 10)).accepting
    assert overridden.status(jst(2026, 12, 29, 18)).next_open == jst(2026, 12, 31, 10)
    # an ordinary day closed by override
    assert not overridden.status(jst(2026, 12, 24, 18)).open
    assert overridden.status(jst(2026, 12, 24, 16)).next_open == jst(2026, 12, 25, 17)


def test_two_sessions_in_a_day() -> None:
    split = {
        day: [{"open": "12:00", "close": "13:00"}, {"open": "17:00", "close": "21:00"}]
        for day in ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
    }
    two = hours(weekly=split)

    assert two.status(jst(2026, 12, 24, 12, 30)).accepting
    assert two.status(jst(2026, 12, 24, 13)).next_open == jst(2026, 12, 24, 17)
    assert two.status(jst(2026, 12, 24, 12)).next_open == jst(2026, 12, 24, 17)


def test_the_next_opening_reads_in_japanese() -> None:
    assert format_moment(jst(2026, 12, 25, 17)) == "12月25日（金）17:00"
    assert format_moment(jst(2027, 1, 4, 9, 5)) == "1月4日（月）09:05"


def test_the_hours_are_described_for_students() -> None:
    text = describe(load_config(SHIPPED).hours, date(2026, 12, 1))

    assert "令和8年度（4月1日〜2027年3月31日）" in text
    assert "毎日 17:00〜21:00（新しい相談の受付は20:30まで）" in text
    assert "12月29日〜2027年1月3日 お休み（年末年始）" in text


def test_weekdays_with_different_hours_are_grouped() -> None:
    weekly = {
        "monday": [SESSION],
        "tuesday": [SESSION],
        "wednesday": [SESSION],
        "thursday": [SESSION],
        "friday": [SESSION],
        "saturday": [{"open": "13:00", "close": "17:00"}],
        "sunday": [],
    }
    config = load_config(SHIPPED).hours.model_dump()
    config.update(weekly=weekly, closed_on_public_holidays=True)
    text = describe(HoursConfig.model_validate(config), date(2027, 1, 10))

    assert "・月〜金曜日 17:00〜21:00（新しい相談の受付は20:30まで）" in text
    assert "・土曜日 13:00〜17:00" in text
    assert "・日曜日 お休み" in text
    assert "・祝日 お休み" in text
    assert "年末年始" not in text  # already past


def test_the_session_times_are_clock_times() -> None:
    session = load_config(SHIPPED).hours.weekly.sessions_on(3)[0]
    assert (session.open, session.last_acceptance, session.close) == (
        time(17),
        time(20, 30),
        time(21),
    )
