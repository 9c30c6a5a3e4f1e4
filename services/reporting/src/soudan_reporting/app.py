"""Composition root of the reporting service: the recorder, and the monthly report's schedule."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import datetime

import structlog
from aiohttp import web
from soudan_shared.bus import Bus
from soudan_shared.contracts import Fact, utcnow
from soudan_shared.http import create_base_app
from soudan_shared.runtime import STORE, use_bus, use_store
from soudan_shared.topology import FACTS_QUEUE

from soudan_reporting.jobs import ReportSchedule
from soudan_reporting.recorder import EVENTS, INDEXES, FactRecorder
from soudan_reporting.settings import ReportingSettings

SERVICE = "reporting"
log = structlog.get_logger(__name__)

SCHEDULE: web.AppKey[asyncio.Task[None]] = web.AppKey("report_schedule", asyncio.Task)


def create_app(
    settings: ReportingSettings, *, clock: Callable[[], datetime] = utcnow
) -> web.Application:
    app = create_base_app(SERVICE)
    use_store(app, settings, INDEXES)

    def consumers(app: web.Application, bus: Bus) -> None:
        recorder = FactRecorder(app[STORE].db[EVENTS])

        async def on_fact(fact: Fact) -> None:
            if not await recorder.record(fact):
                log.info("fact_already_recorded", fact_type=fact.type)

        bus.consume(FACTS_QUEUE, Fact, on_fact, prefetch=64)

    use_bus(app, settings, SERVICE, consumers=consumers)

    async def schedule_ctx(app: web.Application) -> AsyncIterator[None]:
        if not settings.report_font_path.is_file():
            log.error(
                "report_font_missing",
                path=str(settings.report_font_path),
                detail="monthly reports cannot be built until REPORT_FONT_PATH names a Japanese "
                "TrueType font (Debian: fonts-ipaexfont)",
            )
        schedule = ReportSchedule(app[STORE].db, settings, clock=clock)
        app[SCHEDULE] = asyncio.create_task(schedule.run_forever(), name="report-schedule")
        yield
        app[SCHEDULE].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await app[SCHEDULE]

    app.cleanup_ctx.append(schedule_ctx)
    return app
