"""A report month: a calendar month in Tokyo, and the UTC instants that bound it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from soudan_reporting.recorder import TOKYO

_MONTH = re.compile(r"^(?P<year>[0-9]{4})-(?P<month>0[1-9]|1[0-2])$")
WEEKDAYS_JA = ("月", "火", "水", "木", "金", "土", "日")  # ISO weekday 1..7


@dataclass(frozen=True, order=True)
class Month:
    year: int
    month: int

    @classmethod
    def parse(cls, text: str) -> Month:
        """``"2026-10"`` → ``Month(2026, 10)``; ValueError with a plain message otherwise."""
        match = _MONTH.match(text.strip())
        if match is None:
            raise ValueError(f"month must look like 2026-10, not {text!r}")
        return cls(int(match["year"]), int(match["month"]))

    @classmethod
    def containing(cls, instant: datetime) -> Month:
        local = instant.astimezone(TOKYO)
        return cls(local.year, local.month)

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    @property
    def label(self) -> str:
        return f"{self.year}年{self.month}月"

    def next(self) -> Month:
        return Month(self.year + self.month // 12, self.month % 12 + 1)

    def previous(self) -> Month:
        return Month(self.year - (self.month == 1), (self.month - 2) % 12 + 1)

    @property
    def first_day(self) -> date:
        return date(self.year, self.month, 1)

    @property
    def start(self) -> datetime:
        """00:00 JST on the 1st, in UTC."""
        return datetime(self.year, self.month, 1, tzinfo=TOKYO).astimezone(UTC)

    @property
    def end(self) -> datetime:
        """00:00 JST on the 1st of the next month, in UTC (exclusive)."""
        return self.next().start

    def days(self) -> list[date]:
        n = (self.next().first_day - self.first_day).days
        return [self.first_day + timedelta(days=i) for i in range(n)]
