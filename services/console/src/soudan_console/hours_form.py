"""The hours (``hours.yaml``, :class:`~soudan_shared.config.HoursConfig`) as a form in Japanese.

:class:`HoursForm` is what the settings page shows and what comes back from it, as text: built
from the hours in force (:meth:`HoursForm.from_config`) or from a posted form
(:meth:`HoursForm.from_post`), and turned into a :class:`HoursConfig` by
:meth:`HoursForm.to_config`. That checks every row first and raises :class:`HoursFormError` with
one Japanese sentence per problem, naming the field (「12月24日の終わりの時刻が始まりより前に
なっています」), so nothing reaches the model that it would refuse in English.

A blank row is left out: rows are added by filling the empty ones at the end of every list
(:meth:`HoursForm.padded`; 「行をふやす」 adds more with :meth:`HoursForm.more`), and removed by
emptying them or ticking 消す. No script is needed.

Field names (one prefix per row, so the page and the parser cannot disagree):

- ``w-<day>-<n>-open|last|close``: the n-th session of ``<day>`` (``monday`` … ``sunday``,
  ``holiday``) of the weekly hours; ``w-holiday`` is ``weekday`` (a national holiday keeps its
  weekday's sessions) or ``own`` (the holiday rows; none means closed on holidays);
- ``closed_on_public_holidays``: ``1`` closes every national holiday;
- ``p<i>-name|start|end|note|remove``: a consultation period; ``p<i>-own`` is ``1`` when the
  period has weekly hours of its own, in ``p<i>-w-…`` as above;
- ``c<i>-start|end|note|remove``: closed dates (an empty end is the start: one day);
- ``s<i>-date|note|remove`` and ``s<i>-<n>-open|last|close``: a special day and its sessions
  (none closes the day).

Dates are ``YYYY-MM-DD`` (``<input type=date>``), times ``HH:MM`` (``<input type=time>``);
full-width digits and ``2026/12/24`` are accepted too.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import ValidationError
from soudan_shared.config import (
    WEEKDAYS,
    ConfigError,
    HoursConfig,
    Session,
    WeeklyHours,
    describe_errors,
    parse_clock,
)
from soudan_shared.hours import WEEKDAY_JA, Hours, is_japanese_holiday

DAYS = (*WEEKDAYS, "holiday")
DAY_JA = {
    "monday": "月曜日",
    "tuesday": "火曜日",
    "wednesday": "水曜日",
    "thursday": "木曜日",
    "friday": "金曜日",
    "saturday": "土曜日",
    "sunday": "日曜日",
    "holiday": "祝日",
}
MAX_ROWS = 100
"""Periods, closed dates and special days: at most this many of each."""
MAX_SESSIONS = 10
"""Sessions of one day: at most this many."""
NAME_MAX = 40
NOTE_MAX = 500
FIELD_MAX = 600
"""A posted value longer than this is cut (every field here is far shorter)."""


# -- the form as text ---------------------------------------------------------------------------


@dataclass
class SessionRow:
    name: str
    open: str = ""
    last: str = ""
    close: str = ""

    @property
    def blank(self) -> bool:
        return not (self.open or self.last or self.close)


@dataclass
class DayRows:
    key: str
    sessions: list[SessionRow]

    @property
    def label(self) -> str:
        return DAY_JA[self.key]


@dataclass
class WeeklyRows:
    name: str
    days: list[DayRows]
    holiday_own: bool = False


@dataclass
class PeriodRow:
    name: str
    weekly: WeeklyRows
    label: str = ""
    start: str = ""
    end: str = ""
    note: str = ""
    own: bool = False
    remove: bool = False

    @property
    def blank(self) -> bool:
        return not (self.label or self.start or self.end or self.note)


@dataclass
class ClosedRow:
    name: str
    start: str = ""
    end: str = ""
    note: str = ""
    remove: bool = False

    @property
    def blank(self) -> bool:
        return not (self.start or self.end or self.note)


@dataclass
class SpecialRow:
    name: str
    sessions: list[SessionRow]
    date: str = ""
    note: str = ""
    remove: bool = False

    @property
    def blank(self) -> bool:
        return not (self.date or self.note) and all(s.blank for s in self.sessions)


@dataclass(frozen=True)
class Problem:
    field: str
    """The name of the form field to fix ("" when no single field is at fault)."""
    message: str


class HoursFormError(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(p.message for p in problems))
        self.problems = problems

    @property
    def fields(self) -> frozenset[str]:
        return frozenset(p.field for p in self.problems if p.field)


def _clock(t: time) -> str:
    return f"{t:%H:%M}"


def _session_rows(owner: str, sessions: tuple[Session, ...] | None) -> list[SessionRow]:
    return [
        SessionRow(
            f"{owner}-{n}",
            _clock(s.open),
            "" if s.last_acceptance == s.close else _clock(s.last_acceptance),
            _clock(s.close),
        )
        for n, s in enumerate(sessions or ())
    ]


def _weekly_rows(name: str, weekly: WeeklyHours) -> WeeklyRows:
    return WeeklyRows(
        name,
        [DayRows(day, _session_rows(f"{name}-{day}", getattr(weekly, day))) for day in DAYS],
        holiday_own=weekly.holiday is not None,
    )


@dataclass
class HoursForm:
    weekly: WeeklyRows
    closed_on_public_holidays: bool = False
    periods: list[PeriodRow] = field(default_factory=list)
    closed: list[ClosedRow] = field(default_factory=list)
    special: list[SpecialRow] = field(default_factory=list)

    # -- in ------------------------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: HoursConfig) -> HoursForm:
        """The form showing ``config``. A period without weekly hours of its own shows the
        file's weekly hours as a starting point (used only once its box is ticked)."""
        return cls(
            weekly=_weekly_rows("w", config.weekly),
            closed_on_public_holidays=config.closed_on_public_holidays,
            periods=[
                PeriodRow(
                    f"p{i}",
                    _weekly_rows(f"p{i}-w", p.weekly or config.weekly),
                    label=p.name,
                    start=p.start.isoformat(),
                    end=p.end.isoformat(),
                    note=p.note,
                    own=p.weekly is not None,
                )
                for i, p in enumerate(config.periods)
            ],
            closed=[
                ClosedRow(
                    f"c{i}",
                    c.start.isoformat(),
                    "" if c.end == c.start else c.end.isoformat(),
                    c.note,
                )
                for i, c in enumerate(config.closed_dates)
            ],
            special=[
                SpecialRow(f"s{i}", _session_rows(f"s{i}", o.sessions), o.date.isoformat(), o.note)
                for i, o in enumerate(config.overrides)
            ],
        )

    @classmethod
    def from_post(cls, posted: Mapping[str, Any]) -> HoursForm:
        """The form as posted: text fields only, each cut at :data:`FIELD_MAX` characters.
        Rows are renumbered in the order of their numbers; blank rows are kept (for display)."""
        form = {str(k): str(v).strip()[:FIELD_MAX] for k, v in posted.items() if isinstance(v, str)}
        return cls(
            weekly=_posted_weekly(form, "w", "w"),
            closed_on_public_holidays=form.get("closed_on_public_holidays") == "1",
            periods=[
                PeriodRow(
                    f"p{i}",
                    _posted_weekly(form, f"p{n}-w", f"p{i}-w"),
                    label=form.get(f"p{n}-name", ""),
                    start=form.get(f"p{n}-start", ""),
                    end=form.get(f"p{n}-end", ""),
                    note=form.get(f"p{n}-note", ""),
                    own=form.get(f"p{n}-own") == "1",
                    remove=form.get(f"p{n}-remove") == "1",
                )
                for i, n in enumerate(_numbers(form, "p"))
            ],
            closed=[
                ClosedRow(
                    f"c{i}",
                    form.get(f"c{n}-start", ""),
                    form.get(f"c{n}-end", ""),
                    form.get(f"c{n}-note", ""),
                    remove=form.get(f"c{n}-remove") == "1",
                )
                for i, n in enumerate(_numbers(form, "c"))
            ],
            special=[
                SpecialRow(
                    f"s{i}",
                    _posted_sessions(form, f"s{n}", f"s{i}"),
                    form.get(f"s{n}-date", ""),
                    form.get(f"s{n}-note", ""),
                    remove=form.get(f"s{n}-remove") == "1",
                )
                for i, n in enumerate(_numbers(form, "s"))
            ],
        )

    # -- rows to fill --------------------------------------------------------------------------

    def padded(self) -> HoursForm:
        """This form with an empty row at the end of every list that does not end with one."""
        return self._grown(lambda rows: not rows or not rows[-1].blank)

    def more(self) -> HoursForm:
        """This form with one more empty row in every list (the 「行をふやす」 button)."""
        return self._grown(lambda rows: True)

    def _grown(self, wanted: Any) -> HoursForm:
        def sessions(owner: str, rows: list[SessionRow]) -> list[SessionRow]:
            return [*rows, SessionRow(f"{owner}-{len(rows)}")] if wanted(rows) else list(rows)

        def weekly(rows: WeeklyRows) -> WeeklyRows:
            days = [DayRows(d.key, sessions(f"{rows.name}-{d.key}", d.sessions)) for d in rows.days]
            return replace(rows, days=days)

        periods = [replace(p, weekly=weekly(p.weekly)) for p in self.periods]
        if wanted(periods):
            n = len(periods)
            empty = WeeklyRows(f"p{n}-w", [DayRows(d, []) for d in DAYS])
            periods.append(PeriodRow(f"p{n}", weekly(empty)))
        closed = list(self.closed)
        if wanted(closed):
            closed.append(ClosedRow(f"c{len(closed)}"))
        special = [replace(s, sessions=sessions(s.name, s.sessions)) for s in self.special]
        if wanted(special):
            n = len(special)
            special.append(SpecialRow(f"s{n}", sessions(f"s{n}", [])))
        return replace(
            self, weekly=weekly(self.weekly), periods=periods, closed=closed, special=special
        )

    # -- out -----------------------------------------------------------------------------------

    def to_config(self, timezone: ZoneInfo) -> HoursConfig:
        """The hours this form says; :class:`HoursFormError` listing every problem otherwise."""
        problems: list[Problem] = []
        data = {
            "timezone": timezone.key,
            "periods": self._periods(problems),
            "weekly": _weekly(self.weekly, "", problems),
            "closed_dates": self._closed(problems),
            "closed_on_public_holidays": self.closed_on_public_holidays,
            "overrides": self._special(problems),
        }
        if problems:
            raise HoursFormError(problems)
        try:
            return HoursConfig.model_validate(data)
        except ValidationError as exc:  # every rule is checked above; kept as a safety net
            detail = hours_problem_ja(str(ConfigError("hours.yaml", describe_errors(exc))))
            raise HoursFormError([Problem("", detail)]) from None

    def _periods(self, problems: list[Problem]) -> list[dict[str, Any]]:
        rows = [(n, r) for n, r in enumerate(self.periods, 1) if not (r.remove or r.blank)]
        _too_many(rows, "相談期間", problems)
        out: list[dict[str, Any]] = []
        names: set[str] = set()
        for number, row in rows:
            place = f"相談期間「{row.label}」" if row.label else f"{number}番目の相談期間"
            if not row.label:
                problems.append(Problem(f"{row.name}-name", f"{place}に名前を入れてください"))
            elif len(row.label) > NAME_MAX:
                problems.append(
                    Problem(f"{row.name}-name", f"{place}の名前は{NAME_MAX}文字までにしてください")
                )
            elif row.label in names:
                problems.append(
                    Problem(
                        f"{row.name}-name", f"{place}が2つあります。どちらかの名前を変えてください"
                    )
                )
            names.add(row.label)
            start = _day(row.start, f"{place}の始まりの日", f"{row.name}-start", problems)
            end = _day(row.end, f"{place}の終わりの日", f"{row.name}-end", problems)
            if start and end and end < start:
                problems.append(
                    Problem(
                        f"{row.name}-end", f"{place}の終わりの日が始まりの日より前になっています"
                    )
                )
            _note(row.note, place, f"{row.name}-note", problems)
            out.append(
                {
                    "name": row.label,
                    "start": start,
                    "end": end,
                    "note": row.note,
                    "weekly": _weekly(row.weekly, f"{place}の", problems) if row.own else None,
                }
            )
        return out

    def _closed(self, problems: list[Problem]) -> list[dict[str, Any]]:
        rows = [(n, r) for n, r in enumerate(self.closed, 1) if not (r.remove or r.blank)]
        _too_many(rows, "休みの日", problems)
        out: list[dict[str, Any]] = []
        for number, row in rows:
            place = f"{number}番目の休みの日"
            start = _day(
                row.start,
                f"{place}の始まりの日（1日だけなら、その日）",
                f"{row.name}-start",
                problems,
            )
            end = _day(row.end, f"{place}の終わりの日", f"{row.name}-end", problems, required=False)
            end = end or start
            if start and end:
                place = f"休みの日（{_md(start)}〜{_md(end)}）" if end != start else _md(start)
                if end < start:
                    problems.append(
                        Problem(
                            f"{row.name}-end",
                            f"{place}の終わりの日が始まりの日より前になっています",
                        )
                    )
            _note(row.note, place, f"{row.name}-note", problems)
            out.append({"start": start, "end": end, "note": row.note})
        return out

    def _special(self, problems: list[Problem]) -> list[dict[str, Any]]:
        rows = [(n, r) for n, r in enumerate(self.special, 1) if not (r.remove or r.blank)]
        _too_many(rows, "特別な日", problems)
        out: list[dict[str, Any]] = []
        seen: set[date] = set()
        for number, row in rows:
            day = _day(row.date, f"{number}番目の特別な日の日付", f"{row.name}-date", problems)
            place = _md(day) if day else f"{number}番目の特別な日"
            if day in seen:
                problems.append(
                    Problem(
                        f"{row.name}-date", f"{place}の特別な日が2つあります。1つにまとめてください"
                    )
                )
            if day:
                seen.add(day)
            _note(row.note, place, f"{row.name}-note", problems)
            out.append(
                {
                    "date": day,
                    "sessions": _sessions(row.sessions, place, problems),
                    "note": row.note,
                }
            )
        return out


# -- reading the posted fields ------------------------------------------------------------------


def _numbers(form: Mapping[str, str], prefix: str) -> list[int]:
    pattern = re.compile(rf"{re.escape(prefix)}(\d{{1,4}})-.+")
    return sorted({int(m[1]) for key in form if (m := pattern.fullmatch(key))})


def _posted_sessions(form: Mapping[str, str], owner: str, renamed: str) -> list[SessionRow]:
    pattern = re.compile(rf"{re.escape(owner)}-(\d{{1,4}})-(?:open|last|close)")
    numbers = sorted({int(m[1]) for key in form if (m := pattern.fullmatch(key))})
    return [
        SessionRow(
            f"{renamed}-{i}",
            form.get(f"{owner}-{n}-open", ""),
            form.get(f"{owner}-{n}-last", ""),
            form.get(f"{owner}-{n}-close", ""),
        )
        for i, n in enumerate(numbers)
    ]


def _posted_weekly(form: Mapping[str, str], owner: str, renamed: str) -> WeeklyRows:
    return WeeklyRows(
        renamed,
        [DayRows(d, _posted_sessions(form, f"{owner}-{d}", f"{renamed}-{d}")) for d in DAYS],
        holiday_own=form.get(f"{owner}-holiday") == "own",
    )


# -- checks -------------------------------------------------------------------------------------


def _md(day: date) -> str:
    return f"{day.month}月{day.day}日"


def _plain(text: str) -> str:
    """Full-width digits and colons as ASCII (NFKC), for dates and times typed by hand."""
    return unicodedata.normalize("NFKC", text).strip()


def _too_many(rows: list[Any], what: str, problems: list[Problem]) -> None:
    if len(rows) > MAX_ROWS:
        problems.append(Problem("", f"{what}が多すぎます。{MAX_ROWS}までにしてください"))


def _note(text: str, place: str, name: str, problems: list[Problem]) -> None:
    if len(text) > NOTE_MAX:
        problems.append(Problem(name, f"{place}のメモは{NOTE_MAX}文字までにしてください"))


def _day(
    text: str, what: str, name: str, problems: list[Problem], *, required: bool = True
) -> date | None:
    text = _plain(text).replace("/", "-")
    if not text:
        if required:
            problems.append(Problem(name, f"{what}が入っていません"))
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        problems.append(Problem(name, f"{what}「{text}」は、2026-12-24 のように書いてください"))
        return None


def _clock_of(
    text: str, what: str, name: str, problems: list[Problem], *, required: bool = True
) -> time | None:
    text = _plain(text)
    if not text:
        if required:
            problems.append(Problem(name, f"{what}が入っていません"))
        return None
    try:
        return parse_clock(text)
    except ValueError:
        problems.append(
            Problem(name, f"{what}「{text}」は、00:00〜23:59 の 17:00 のように書いてください")
        )
        return None


def _sessions(rows: list[SessionRow], place: str, problems: list[Problem]) -> list[dict[str, str]]:
    """The sessions of one day, checked; ``place`` names the day (「月曜日」, 「12月24日」)."""
    filled = [r for r in rows if not r.blank]
    if len(filled) > MAX_SESSIONS:
        problems.append(
            Problem("", f"{place}の時間帯が多すぎます。{MAX_SESSIONS}までにしてください")
        )
    good: list[tuple[time, time, time]] = []
    for n, row in enumerate(filled, 1):
        where = place if len(filled) == 1 else f"{place}の{n}つ目の時間帯"
        start = _clock_of(row.open, f"{where}の始まりの時刻", f"{row.name}-open", problems)
        end = _clock_of(row.close, f"{where}の終わりの時刻", f"{row.name}-close", problems)
        last = _clock_of(
            row.last,
            f"{where}の新しい相談の受付の最後の時刻",
            f"{row.name}-last",
            problems,
            required=False,
        )
        if start is None or end is None:
            continue
        if end < start:
            problems.append(
                Problem(f"{row.name}-close", f"{where}の終わりの時刻が始まりより前になっています")
            )
        elif end == start:
            problems.append(
                Problem(f"{row.name}-close", f"{where}の終わりの時刻が始まりと同じになっています")
            )
        elif last is not None and not start < last <= end:
            problems.append(
                Problem(
                    f"{row.name}-last",
                    f"{where}の新しい相談の受付の最後の時刻（{_clock(last)}）は、"
                    f"始まり（{_clock(start)}）より後で、終わり（{_clock(end)}）までにしてください",
                )
            )
        else:
            good.append((start, last or end, end))
    good.sort()
    for (a_open, _, a_close), (b_open, _, b_close) in itertools.pairwise(good):
        if b_open < a_close:
            problems.append(
                Problem(
                    "",
                    f"{place}の時間帯 {_clock(a_open)}〜{_clock(a_close)} と "
                    f"{_clock(b_open)}〜{_clock(b_close)} が重なっています",
                )
            )
    return [
        {"open": _clock(o), "last_acceptance": _clock(la), "close": _clock(c)} for o, la, c in good
    ]


def _weekly(rows: WeeklyRows, place: str, problems: list[Problem]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for day in rows.days:
        if day.key == "holiday" and not rows.holiday_own:
            out["holiday"] = None
            continue
        out[day.key] = _sessions(day.sessions, f"{place}{day.label}", problems)
    return out


# -- the two weeks ahead ------------------------------------------------------------------------

PREVIEW_DAYS = 14


def hours_preview(hours: HoursConfig, today: date) -> list[tuple[str, str]]:
    """The next two weeks as the services will decide them (the one calendar of
    :mod:`soudan_shared.hours`): one ``(day, openings)`` row per day, in Japanese."""
    calendar = Hours(hours)
    rows = []
    for n in range(PREVIEW_DAYS):
        day = today + timedelta(days=n)
        label = f"{day.month}月{day.day}日（{WEEKDAY_JA[day.weekday()]}）"
        if is_japanese_holiday(day):
            label += " 祝日"
        parts = [
            f"{o.open:%H:%M}〜{o.close:%H:%M}"
            + (
                f"（新しい相談は{o.last_acceptance:%H:%M}まで）"
                if o.last_acceptance != o.close
                else ""
            )
            for o in calendar.openings_on(day)
        ]
        rows.append((label, "、".join(parts) if parts else "お休み"))
    return rows


# -- a model error in Japanese (the safety net of to_config) ------------------------------------

HOURS_KEYS_JA = {
    "timezone": "タイムゾーン（timezone）",
    "periods": "相談期間（periods）",
    "weekly": "曜日ごとの受付時間（weekly）",
    "closed_dates": "休みの日（closed_dates）",
    "closed_on_public_holidays": "祝日を休みにするか（closed_on_public_holidays）",
    "overrides": "特別な日（overrides）",
    "open": "受付開始（open）",
    "close": "終了（close）",
    "last_acceptance": "新しい相談の受付の最後（last_acceptance）",
    "start": "始まりの日（start）",
    "end": "終わりの日（end）",
    "name": "名前（name）",
    "date": "日付（date）",
    "sessions": "時間帯（sessions）",
    "note": "メモ（note）",
    **DAY_JA,
}
HOURS_PROBLEMS_JA = (
    (r"start (\S+) is after end (\S+)", r"始まりの日 \1 が終わりの日 \2 より後になっています"),
    (r"open (\S+) must be before close (\S+)", r"受付開始 \1 を終了 \2 より前にしてください"),
    (
        r"last_acceptance (\S+) must be after open (\S+) and not after close (\S+)",
        r"新しい相談の受付の最後 \1 は、受付開始 \2 より後で、終了 \3 までにしてください",
    ),
    (r"sessions (\S+) and (\S+) overlap", r"時間帯 \1 と \2 が重なっています"),
    (
        r"expected a time of day as HH:MM \(00:00-23:59\), got (.*)",
        r"時刻は 00:00〜23:59 の「HH:MM」で書いてください（いまは \1）",
    ),
    (r"required key is missing", "書かれていません（必要な項目です）"),
    (r"unknown key", "知らない項目です（書き間違いかもしれません）"),
    (
        r"invalid YAML at line (\d+), column (\d+).*",
        r"\1行目の\2文字目あたりの書き方に誤りがあります",
    ),
    (r"duplicate (.*?): (.*)", r"同じものが2回書かれています: \2"),
)


def hours_problem_ja(message: str) -> str:
    """A validation message of ``hours.yaml`` in Japanese for the section: where (the setting
    by its Japanese name, the n-th entry) and what is wrong. A problem without a translation is
    shown as it is, after its place."""
    body = message.removeprefix("hours.yaml: ")
    parts = []
    for problem in body.split("; "):
        place, sep, what = problem.partition(": ")
        if not sep or not re.fullmatch(r"[\w.\[\]]+", place):
            place, what = "", problem
        for pattern, japanese in HOURS_PROBLEMS_JA:
            translated, n = re.subn(pattern, japanese, what)
            if n:
                what = translated
                break
        parts.append(f"{_hours_place(place)}: {what}" if place else what)
    return "。".join(parts)


def _hours_place(place: str) -> str:
    words = []
    for key, index in re.findall(r"(\w+)(?:\[(\d+)\])?", place):
        word = HOURS_KEYS_JA.get(key, key)
        words.append(f"{word}の{int(index) + 1}番目" if index else word)
    return "の".join(words)
