"""The one calendar (運営要領 第3(3)): is the service open at a moment, when does it open next?

Every "open now" decision is taken here and nowhere else: triage's replies and hours menu,
dispatch's scheduled 「相談を受け付けています」 broadcasts and ``soudan-triage hours``. Give it
the hours *in force* (``(await ConfigSource.get()).hours``: the YAML file with the console's
edits, date overrides included), never the file alone.

A pure module over :class:`~soudan_shared.config.HoursConfig`. Times in, times out are aware
datetimes; days and clock times are taken in the configured time zone (Asia/Tokyo).

Public API (kept stable): :class:`Hours` (``sessions_on(day)``, ``openings_on(day)``,
``status(at)``, ``next_open(at)``, ``first_opening_in(start, end)``), :class:`HoursStatus`
(``open``, ``accepting``, ``next_open``, ``to_json()``), :func:`is_japanese_holiday`,
:func:`format_moment`, :func:`describe` and :func:`describe_period` (Japanese, for students).

- **open**: a counselor session is under way (``open <= t < close``).
- **accepting**: new consultations are taken (``open <= t < last_acceptance``). Between the
  last acceptance and closing, conversations under way go on but a new one gets the
  out-of-hours reply.
- **next_open**: the start of the first session that begins strictly after ``t`` (so at 17:00
  sharp, while open, it is the next day's 17:00); ``None`` when no session is configured in the
  coming :data:`HORIZON_DAYS` days (past the last period).

Which sessions a day has (:meth:`Hours.sessions_on`): a date in ``overrides`` has exactly the
sessions given there; otherwise the day must lie in a period, not in ``closed_dates``, and not be
a Japanese national holiday (振替休日 and 国民の休日 included, from the ``holidays`` library) while
``closed_on_public_holidays`` is set; it then has its weekday's sessions, or the ``holiday``
sessions on a national holiday when those are configured, from the period's own ``weekly`` if
it has one, else from the file's ``weekly``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

import holidays

from soudan_shared.config import ConsultationPeriod, HoursConfig, Session, WeeklyHours

HORIZON_DAYS = 400
WEEKDAY_JA = "月火水木金土日"


@dataclass(frozen=True)
class HoursStatus:
    open: bool
    accepting: bool
    next_open: datetime | None

    def to_json(self) -> dict[str, object]:
        return {
            "open": self.open,
            "accepting": self.accepting,
            "next_open": self.next_open.isoformat() if self.next_open else None,
        }


@dataclass(frozen=True)
class Opening:
    """One session of one day: new consultations from ``open`` until ``last_acceptance``."""

    open: datetime
    last_acceptance: datetime
    close: datetime


@functools.lru_cache(maxsize=64)
def _japan_holidays(year: int) -> frozenset[date]:
    return frozenset(holidays.country_holidays("JP", years=year).keys())


def is_japanese_holiday(day: date) -> bool:
    return day in _japan_holidays(day.year)


class Hours:
    def __init__(self, config: HoursConfig) -> None:
        self.config = config
        self.tz = config.timezone
        self._overrides = {o.date: o.sessions for o in config.overrides}
        last_days = [p.end for p in config.periods] + list(self._overrides)
        self._last_day = max(last_days) if last_days else None

    # -- days ------------------------------------------------------------------------------

    def sessions_on(self, day: date) -> tuple[Session, ...]:
        """The sessions of ``day`` (a date in the configured time zone)."""
        if day in self._overrides:
            return self._overrides[day]
        period = next((p for p in self.config.periods if p.start <= day <= p.end), None)
        if period is None:
            return ()
        if any(c.start <= day <= c.end for c in self.config.closed_dates):
            return ()
        weekly: WeeklyHours = period.weekly or self.config.weekly
        if is_japanese_holiday(day):
            if self.config.closed_on_public_holidays:
                return ()
            if weekly.holiday is not None:
                return weekly.holiday
        return weekly.sessions_on(day.weekday())

    def _at(self, day: date, clock: time) -> datetime:
        return datetime.combine(day, clock, tzinfo=self.tz)

    def openings_on(self, day: date) -> list[Opening]:
        """The sessions of ``day`` as aware moments (open, last acceptance, close), in order."""
        return [
            Opening(self._at(day, s.open), self._at(day, s.last_acceptance), self._at(day, s.close))
            for s in sorted(self.sessions_on(day), key=lambda s: s.open)
        ]

    def first_opening_in(self, start: date, end: date) -> Opening | None:
        """The first session between ``start`` and ``end`` (inclusive), if any."""
        day = start
        while day <= end:
            openings = self.openings_on(day)
            if openings:
                return openings[0]
            day += timedelta(days=1)
        return None

    # -- moments ---------------------------------------------------------------------------

    def status(self, at: datetime) -> HoursStatus:
        local = _aware(at).astimezone(self.tz)
        is_open = accepting = False
        for session in self.sessions_on(local.date()):
            start = self._at(local.date(), session.open)
            if start <= local < self._at(local.date(), session.close):
                is_open = True
                accepting = local < self._at(local.date(), session.last_acceptance)
        return HoursStatus(is_open, accepting, self.next_open(at))

    def next_open(self, at: datetime) -> datetime | None:
        """The start of the first session strictly after ``at``, in the configured zone."""
        local = _aware(at).astimezone(self.tz)
        day = local.date()
        for _ in range(HORIZON_DAYS):
            if self._last_day is not None and day > self._last_day:
                return None
            for session in self.sessions_on(day):
                start = self._at(day, session.open)
                if start > local:
                    return start
            day += timedelta(days=1)
        return None


def _aware(at: datetime) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"{at.isoformat()} has no UTC offset; give times with their zone")
    return at


# -- Japanese wording ------------------------------------------------------------------------


def format_moment(at: datetime) -> str:
    """``12月25日（金）17:00``: how the out-of-hours reply names the next opening."""
    return f"{at.month}月{at.day}日（{WEEKDAY_JA[at.weekday()]}）{at:%H:%M}"


def _format_day(day: date, today: date) -> str:
    year = f"{day.year}年" if day.year != today.year else ""
    return f"{year}{day.month}月{day.day}日"


def _format_sessions(sessions: tuple[Session, ...]) -> str:
    if not sessions:
        return "お休み"
    parts = []
    for s in sessions:
        text = f"{s.open:%H:%M}〜{s.close:%H:%M}"
        if s.last_acceptance != s.close:
            text += f"（新しい相談の受付は{s.last_acceptance:%H:%M}まで）"
        parts.append(text)
    return "、".join(parts)


def _format_weekly(weekly: WeeklyHours) -> list[str]:
    days = [weekly.sessions_on(n) for n in range(7)]
    if all(d == days[0] for d in days):
        return [f"毎日 {_format_sessions(days[0])}"]
    lines = []
    n = 0
    while n < 7:
        m = n
        while m + 1 < 7 and days[m + 1] == days[n]:
            m += 1
        label = WEEKDAY_JA[n] if m == n else f"{WEEKDAY_JA[n]}〜{WEEKDAY_JA[m]}"
        lines.append(f"{label}曜日 {_format_sessions(days[n])}")
        n = m + 1
    return lines


def describe(config: HoursConfig, today: date) -> str:
    """The periods, weekly hours and closed days from ``today`` on, in Japanese, for students."""
    lines: list[str] = []
    for period in config.periods:
        if period.end < today:
            continue
        lines.extend(_period_lines(config, period, today))
    if not lines:
        lines.append("いまは、決まっている相談期間がありません。")
    lines.extend(_exception_lines(config, today, None))
    return "\n".join(lines)


def describe_period(config: HoursConfig, period: ConsultationPeriod, today: date) -> str:
    """One period in Japanese (its hours, and the closed or changed days within it), for the
    period notice broadcast."""
    lines = _period_lines(config, period, today)
    lines.extend(_exception_lines(config, today, period))
    return "\n".join(lines)


def _period_lines(config: HoursConfig, period: ConsultationPeriod, today: date) -> list[str]:
    span = f"{_format_day(period.start, today)}〜{_format_day(period.end, today)}"
    lines = [f"■ {period.name}（{span}）"]
    weekly = period.weekly or config.weekly
    lines.extend("・" + line for line in _format_weekly(weekly))
    if config.closed_on_public_holidays:
        lines.append("・祝日 お休み")
    elif weekly.holiday is not None:
        lines.append(f"・祝日 {_format_sessions(weekly.holiday)}")
    return lines


def _exception_lines(
    config: HoursConfig, today: date, period: ConsultationPeriod | None
) -> list[str]:
    """Closed dates and overrides from ``today`` on (within ``period`` when given)."""
    lo = max(today, period.start) if period else today
    hi = period.end if period else date.max
    closed = [c for c in config.closed_dates if c.end >= lo and c.start <= hi]
    special = [o for o in config.overrides if lo <= o.date <= hi]
    lines: list[str] = []
    if closed or special:
        lines.append("■ お休みや時間が変わる日")
        for c in closed:
            span = (
                _format_day(c.start, today)
                if c.start == c.end
                else f"{_format_day(c.start, today)}〜{_format_day(c.end, today)}"
            )
            lines.append(f"・{span} お休み" + (f"（{c.note}）" if c.note else ""))
        for o in special:
            lines.append(
                f"・{_format_day(o.date, today)} {_format_sessions(o.sessions)}"
                + (f"（{o.note}）" if o.note else "")
            )
    return lines
