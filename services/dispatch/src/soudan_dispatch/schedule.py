"""Scheduled broadcasts: the period notice before each consultation period, "open now" at its
opening (``messages.yaml`` → ``broadcast.schedule``, times in ``hours.yaml``'s time zone).

The days and sessions are those of the one calendar (:mod:`soudan_shared.hours`) over the hours
in force (the console's edits included, date overrides too), the calendar triage answers
students with: "open now" goes out only while it says new consultations are taken.

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
from datetime import datetime, time, timedelta
from typing import Any, Literal

import structlog
from soudan_shared.bus import Bus, PublishFailed
from soudan_shared.config import SoudanConfig
from soudan_shared.contracts import StartBroadcast, stable_id, utcnow
from soudan_shared.hours import Hours, Opening, describe_period
from soudan_shared.records import acquire_lease

log = structlog.get_logger(__name__)

SCHEDULE = "dispatch_schedule"
LEASE_TTL = timedelta(minutes=5)


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


def due_announcements(config: SoudanConfig, now: datetime) -> list[Announcement]:
    """The scheduled announcements due at ``now`` (aware), oldest first.

    Which days and sessions there are comes from the one calendar (:class:`Hours`), the same
    that triage answers students with: periods with their own weekly hours, closed dates,
    holidays and the console's date overrides. "Open now" is due only while that calendar says
    new consultations are taken, so it can never contradict the reply a student then gets.
    """
    hours = Hours(config.hours)
    templates = config.messages.broadcast
    plan = templates.schedule
    tz = config.hours.timezone
    local = now.astimezone(tz)
    accepting = hours.status(now).accepting
    due: list[Announcement] = []

    def open_now(key: str, opening: Opening) -> None:
        if accepting and opening.open <= local < opening.last_acceptance:
            due.append(
                Announcement(
                    key,
                    "open_now",
                    (templates.open_now,),
                    opening.open,
                    opening.last_acceptance,
                    plan.audience,
                )
            )

    for period in config.hours.periods:
        starts = datetime.combine(period.start, time(0, 0), tz)
        if plan.period_notice_days_before is not None:
            at = datetime.combine(
                period.start - timedelta(days=plan.period_notice_days_before),
                plan.period_notice_at,
                tz,
            )
            if at <= local < starts:
                text = templates.period_notice.format(
                    period=describe_period(config.hours, period, local.date())
                )
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
            first = hours.first_opening_in(period.start, period.end)
            if first is not None:
                open_now(f"open_now:{period.name}:{first.open.date()}", first)
    if plan.open_now == "every_session":
        for opening in hours.openings_on(local.date()):
            clock = f"{opening.open.hour}:{opening.open.minute:02d}"
            open_now(f"open_now:{local.date()}:{clock}", opening)
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
            template=announcement.template,
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
