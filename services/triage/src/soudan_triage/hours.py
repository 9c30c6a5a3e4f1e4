"""Triage's view of the opening hours: the one calendar of :mod:`soudan_shared.hours`.

Every "open now" decision (triage's replies and hours menu, dispatch's scheduled broadcasts,
``soudan-triage hours``) comes from that module, so they cannot disagree. Kept here so that
``from soudan_triage.hours import Hours`` goes on working.
"""

from soudan_shared.hours import (
    HORIZON_DAYS,
    WEEKDAY_JA,
    Hours,
    HoursStatus,
    Opening,
    describe,
    describe_period,
    format_moment,
    is_japanese_holiday,
)

__all__ = [
    "HORIZON_DAYS",
    "WEEKDAY_JA",
    "Hours",
    "HoursStatus",
    "Opening",
    "describe",
    "describe_period",
    "format_moment",
    "is_japanese_holiday",
]
