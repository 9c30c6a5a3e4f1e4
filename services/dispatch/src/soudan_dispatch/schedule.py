"""Scheduled broadcasts: the period notice before each consultation period, "open now" at its
opening (``messages.yaml`` → ``broadcast.schedule``, times in ``hours.yaml``'s time zone).

Every ``broadcast_schedule_interval`` seconds each replica works out which announcements are due
now (:func:`due_announcements`) and, for each, takes the lease ``schedule:<key>``
(:func:`soudan_shared.records.acquire_lease`), checks the stored "done" marker in
:data:`SCHEDULE`, publishes a ``StartBroadcast`` and writes the marker. The broadcast id is
derived from the key, so even two replicas publishing the same announcement (a lease expired
mid-way) make one broadcast: the broadcaster sends each broadcast id once.

An announcement is due from its time until it no longer makes sense: the period notice until the
period starts, "open now" until that session's last acceptance. A dispatch that was down at the
time still sends it if it comes back within that window, and never after.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any, Literal

import holidays
import structlog
from soudan_shared.bus import Bus, PublishFailed
from soudan_shared.config import HoursConfig, SoudanConfig
from soudan_shared.contracts import StartBroadcast, stable_id, utcnow
from soudan_shared.records import acquire_lease

log = structlog.get_logger(__name__)

SCHEDULE = "dispatch_schedule"
LEASE_TTL = timedelta(minutes=5)
WEEKDAY_JA = ("月", "火", "水", "木", "金", "土", "日")


@dataclass(frozen=True)
class Announcement:
    key: str
    template: str
    texts: tuple[str, ...]
    due_at: datetime
    until: datetime
    audience: Literal["registered", "target_group"]

    @property
    def broadcast_id(self) -> str:
        return "scheduled-" + stable_id("scheduled-broadcast", self.key)


def is_open_day(hours: HoursConfig, day: date) -> bool:
    """Whether ``day`` has sessions: in a period, not closed, not a closed public holiday."""
    if not any(p.start <= day <= p.end for p in hours.periods):
        return False
    if any(c.start <= day <= c.end for c in hours.closed_dates):
        return False
    if hours.closed_on_public_holidays and day in holidays.country_holidays("JP", years=day.year):
        return False
    return bool(hours.weekly.sessions_on(day.weekday()))


def _clock(t: time) -> str:
    return f"{t.hour}:{t.minute:02d}"


def describe_hours(hours: HoursConfig) -> str:
    """The weekly hours in Japanese, e.g. 「毎日 17:00〜21:00（受付は20:30まで）」."""
    groups: dict[str, list[int]] = {}
    for weekday in range(7):
        sessions = hours.weekly.sessions_on(weekday)
        if not sessions:
            continue
        text = "、".join(
            f"{_clock(s.open)}〜{_clock(s.close)}"
            + (f"（受付は{_clock(s.last_acceptance)}まで）" if s.last_acceptance != s.close else "")
            for s in sessions
        )
        groups.setdefault(text, []).append(weekday)
    lines = []
    for text, days in groups.items():
        label = "毎日" if len(days) == 7 else "・".join(WEEKDAY_JA[d] for d in days)
        lines.append(f"{label} {text}")
    return "\n".join(lines)


def describe_period(hours: HoursConfig, period_index: int) -> str:
    period = hours.periods[period_index]
    span = (
        f"{period.start.year}年{period.start.month}月{period.start.day}日〜"
        f"{period.end.year}年{period.end.month}月{period.end.day}日"
    )
    closed = [c for c in hours.closed_dates if c.end >= period.start and c.start <= period.end]
    lines = [f"{period.name}：{span}", describe_hours(hours)]
    for c in closed:
        when = (
            f"{c.start.month}月{c.start.day}日"
            if c.start == c.end
            else f"{c.start.month}月{c.start.day}日〜{c.end.month}月{c.end.day}日"
        )
        lines.append(f"※{when}はお休みです" + (f"（{c.note}）" if c.note else ""))
    return "\n".join(lines)


def due_announcements(config: SoudanConfig, now: datetime) -> list[Announcement]:
    """The scheduled announcements due at ``now`` (aware), oldest first."""
    hours = config.hours
    templates = config.messages.broadcast
    plan = templates.schedule
    tz = hours.timezone
    local = now.astimezone(tz)
    due: list[Announcement] = []
    for index, period in enumerate(hours.periods):
        starts = datetime.combine(period.start, time(0, 0), tz)
        if plan.period_notice_days_before is not None:
            at = datetime.combine(
                period.start - timedelta(days=plan.period_notice_days_before),
                plan.period_notice_at,
                tz,
            )
            if at <= local < starts:
                text = templates.period_notice.format(period=describe_period(hours, index))
                due.append(
                    Announcement(
                        f"period_notice:{period.name}:{period.start}",
                        "period_notice",
                        (text,),
                        at,
                        starts,
                        plan.audience,
                    )
                )
        if plan.open_now == "period_start":
            day = period.start
            while day <= period.end and not is_open_day(hours, day):
                day += timedelta(days=1)
            if day <= period.end:
                session = hours.weekly.sessions_on(day.weekday())[0]
                at = datetime.combine(day, session.open, tz)
                until = datetime.combine(day, session.last_acceptance, tz)
                if at <= local < until:
                    due.append(
                        Announcement(
                            f"open_now:{period.name}:{day}",
                            "open_now",
                            (templates.open_now,),
                            at,
                            until,
                            plan.audience,
                        )
                    )
    if plan.open_now == "every_session" and is_open_day(hours, local.date()):
        for session in hours.weekly.sessions_on(local.date().weekday()):
            at = datetime.combine(local.date(), session.open, tz)
            until = datetime.combine(local.date(), session.last_acceptance, tz)
            if at <= local < until:
                due.append(
                    Announcement(
                        f"open_now:{local.date()}:{_clock(session.open)}",
                        "open_now",
                        (templates.open_now,),
                        at,
                        until,
                        plan.audience,
                    )
                )
    return sorted(due, key=lambda a: a.due_at)


class Scheduler:
    """Publishes each due announcement once across replicas."""

    def __init__(
        self,
        bus: Bus,
        store_db: Any,
        get_config: Callable[[], Awaitable[SoudanConfig]],
        *,
        interval: float = 60.0,
        clock: Callable[[], datetime] = utcnow,
        holder: str | None = None,
    ) -> None:
        self.bus = bus
        self.db = store_db
        self.get_config = get_config
        self.interval = interval
        self.clock = clock
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}"

    async def run_forever(self) -> None:
        await self.bus.wait_started()
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("broadcast_schedule_failed")
            await asyncio.sleep(self.interval)

    async def run_once(self) -> list[str]:
        """Publish what is due now; the broadcast ids published by this replica."""
        config = await self.get_config()
        published = []
        for announcement in due_announcements(config, self.clock()):
            if await self._publish_once(announcement):
                published.append(announcement.broadcast_id)
        return published

    async def _publish_once(self, announcement: Announcement) -> bool:
        done = self.db[SCHEDULE]
        if await done.find_one({"_id": announcement.key}) is not None:
            return False
        lease = f"schedule:{announcement.key}"
        if not await acquire_lease(self.db, lease, self.holder, LEASE_TTL):
            return False
        if await done.find_one({"_id": announcement.key}) is not None:
            return False
        command = StartBroadcast(
            broadcast_id=announcement.broadcast_id,
            texts=list(announcement.texts),
            audience=announcement.audience,
            requested_by="schedule",
        )
        try:
            await self.bus.publish(command)
        except PublishFailed as exc:
            log.warning("scheduled_broadcast_not_published", key=announcement.key, error=str(exc))
            return False
        with contextlib.suppress(Exception):
            await done.insert_one(
                {
                    "_id": announcement.key,
                    "broadcast_id": announcement.broadcast_id,
                    "template": announcement.template,
                    "due_at": announcement.due_at,
                    "published_at": self.clock(),
                    "holder": self.holder,
                }
            )
        log.info(
            "scheduled_broadcast_published",
            key=announcement.key,
            broadcast_id=announcement.broadcast_id,
        )
        return True
