"""Producing a month's report, on demand or on schedule: build, e-mail, record what happened.

:func:`produce_report` is what the CLI (``soudan-reporting build``) and the schedule both run.
:class:`ReportSchedule` runs it at 06:00 JST on the 1st for the previous month, once across
replicas: a replica takes the month's lease (:func:`soudan_shared.records.acquire_lease`),
checks the done marker in ``report_runs`` again under the lease, builds, and writes the marker.
A replica that was down at 06:00 catches up when it starts, so a month is never skipped; a
month with no facts at all (the service did not run then) is not reported automatically.

Reporting's own facts (``report.built``, ``report.emailed``, ``report.email_failed``) go
straight into ``events``: reporting is the recorder, and the CLI runs without a broker.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from soudan_shared import fact_types as ft
from soudan_shared.contracts import Fact, utcnow
from soudan_shared.mail import MailResult
from soudan_shared.records import acquire_lease, release_lease

from soudan_reporting.build import BuiltReport, build_month
from soudan_reporting.mail import report_message, send_with_retry
from soudan_reporting.month import Month
from soudan_reporting.recorder import EVENTS, TOKYO, record_fact
from soudan_reporting.report import CHECK, OK
from soudan_reporting.settings import ReportingSettings

log = structlog.get_logger(__name__)

SERVICE = "reporting"
RUNS = "report_runs"
SCHEDULE_HOUR = 6  # JST, on the 1st
LEASE_TTL = timedelta(minutes=30)
CHECK_INTERVAL_SECONDS = 300.0


@dataclass(frozen=True)
class Produced:
    built: BuiltReport
    mail: MailResult | None


async def record(db: Any, fact_type: str, data: dict[str, Any]) -> None:
    await record_fact(db[EVENTS], Fact(type=fact_type, service=SERVICE, data=data))


def checklist_summary(built: BuiltReport) -> str:
    statuses = [line.status for line in built.report.checklist]
    return (
        f"情報セキュリティのチェックリスト: 適合 {statuses.count(OK)} 件、"
        f"要確認 {statuses.count(CHECK)} 件"
    )


async def produce_report(
    db: Any,
    month: Month,
    settings: ReportingSettings,
    *,
    trigger: str,
    email: bool,
    out_dir: Path | None = None,
    now: datetime | None = None,
) -> Produced:
    built = await build_month(db, month, settings, out_dir=out_dir, now=now)
    await record(
        db,
        ft.REPORT_BUILT,
        {"month": str(month), "files": [p.name for p in built.files], "trigger": trigger},
    )
    mail = None
    if email:
        message = report_message(month, built.files, settings, summary=checklist_summary(built))
        mail = await send_with_retry(message, settings)
        if mail.sent:
            await record(
                db, ft.REPORT_EMAILED, {"month": str(month), "recipients": len(settings.recipients)}
            )
        else:
            await record(
                db,
                ft.REPORT_EMAIL_FAILED,
                {"month": str(month), "reason": mail.reason, "attempts": mail.attempts},
            )
    return Produced(built, mail)


# -- the schedule -----------------------------------------------------------------------------


def due_month(now: datetime) -> Month:
    """The month whose report is due at ``now``: the previous one, from 06:00 JST on the 1st."""
    shifted = now.astimezone(TOKYO) - timedelta(hours=SCHEDULE_HOUR)
    return Month(shifted.year, shifted.month).previous()


def next_run(now: datetime) -> datetime:
    """The next 06:00 JST on a 1st after ``now``."""
    month = Month.containing(now)
    for candidate in (month, month.next()):
        at = candidate.start + timedelta(hours=SCHEDULE_HOUR)
        if at > now:
            return at
    raise AssertionError("unreachable")


class ReportSchedule:
    def __init__(
        self,
        db: Any,
        settings: ReportingSettings,
        *,
        clock: Callable[[], datetime] = utcnow,
        holder: str | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.clock = clock
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    async def is_done(self, month: Month) -> bool:
        return await self.db[RUNS].find_one({"_id": str(month)}) is not None

    async def run_due(self) -> Month | None:
        """Build the due month's report if nobody has; return the month when this call did."""
        month = due_month(self.clock())
        if await self.is_done(month):
            return None
        if await self.db[EVENTS].find_one({"jst.month": str(month)}) is None:
            return None
        lease = f"report:{month}"
        if not await acquire_lease(self.db, lease, self.holder, LEASE_TTL, now=self.clock()):
            return None
        try:
            if await self.is_done(month):  # finished by another replica before our lease
                return None
            log.info("scheduled_report_starting", month=str(month))
            produced = await produce_report(
                self.db,
                month,
                self.settings,
                trigger="schedule",
                email=self.settings.email_configured,
                now=self.clock(),
            )
            await self.db[RUNS].replace_one(
                {"_id": str(month)},
                {
                    "built_at": self.clock(),
                    "by": self.holder,
                    "files": [p.name for p in produced.built.files],
                    "emailed": None if produced.mail is None else produced.mail.sent,
                },
                upsert=True,
            )
        finally:
            await release_lease(self.db, lease, self.holder)
        return month

    async def run_forever(self) -> None:
        while True:
            try:
                await self.run_due()
            except Exception:
                # e.g. the font is missing: said loudly, tried again at the next check
                log.exception("scheduled_report_failed", month=str(due_month(self.clock())))
            now = self.clock()
            wait = min(CHECK_INTERVAL_SECONDS, (next_run(now) - now).total_seconds())
            await asyncio.sleep(max(1.0, wait))
