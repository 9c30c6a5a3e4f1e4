"""Composition root of the console service: the web console for staff."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from importlib import resources

import aiohttp_jinja2
import jinja2
import structlog
from aiohttp import web
from soudan_shared import fact_types as F
from soudan_shared.bus import Bus
from soudan_shared.config_store import ConfigSource
from soudan_shared.contracts import Fact, utcnow
from soudan_shared.http import create_base_app
from soudan_shared.records import INDEXES as RECORD_INDEXES
from soudan_shared.runtime import BUS, FACTS, STORE, use_bus, use_store

from soudan_console import broadcasts, budget, cases, emergencies
from soudan_console.core import Console
from soudan_console.domain import INDEXES, SUPERVISING_ROLES
from soudan_console.live import LIVE_BINDINGS, Hub, run_periodically
from soudan_console.mail import Mailer, SmtpMailer
from soudan_console.security import Sessions
from soudan_console.settings import ConsoleSettings
from soudan_console.staff import bootstrap_admin
from soudan_console.views_admin import routes as admin_routes
from soudan_console.views_auth import routes as auth_routes
from soudan_console.views_cases import routes as case_routes
from soudan_console.views_live import routes as live_routes
from soudan_console.views_typing import routes as typing_routes
from soudan_console.web import (
    CONSOLE,
    add_security_headers,
    duration,
    highlight,
    jst,
    session_middleware,
)

log = structlog.get_logger(__name__)

SERVICE = "console"
HUB: web.AppKey[Hub] = web.AppKey("hub", Hub)


def create_app(
    settings: ConsoleSettings, *, mailer: Mailer | None = None, tick: float = 15.0
) -> web.Application:
    app = create_base_app(SERVICE, trusted_proxies=settings.trusted_proxies)
    app.middlewares.append(session_middleware)
    hub = Hub()
    app[HUB] = hub
    use_store(app, settings, (*RECORD_INDEXES, *INDEXES))

    def consumers(app: web.Application, bus: Bus) -> None:
        async def on_fact(fact: Fact) -> None:
            await hub.on_fact(fact)
            if fact.type.startswith("broadcast.") and CONSOLE in app:
                await broadcasts.on_progress(app[CONSOLE], fact.type, fact.data)
            if fact.type == F.REPLY_FAILED and CONSOLE in app:
                await budget.on_reply_failed(app[CONSOLE], fact.data, fact.at)
            if fact.type == F.CASE_STUDENT_LEFT and CONSOLE in app:
                await emergencies.mail_departures(app[CONSOLE])

        bus.subscribe(LIVE_BINDINGS, Fact, on_fact)

    use_bus(app, settings, SERVICE, consumers=consumers)

    async def console_ctx(app: web.Application) -> AsyncIterator[None]:
        store = app[STORE]
        secret = settings.console_session_secret
        console = Console(
            settings=settings,
            db=store.db,
            bus=app[BUS],
            facts=app[FACTS],
            config=ConfigSource(settings.soudan_config_dir, store.db),
            sessions=Sessions(
                store.db,
                secret=secret.get_secret_value().encode() if secret else None,
                idle=timedelta(minutes=settings.console_idle_timeout_minutes),
                lifetime=timedelta(hours=settings.console_session_max_hours),
                on_end=hub.end_sessions,
            ),
            hub=hub,
            mailer=mailer or SmtpMailer(settings),
        )
        app[CONSOLE] = console
        tasks = [
            asyncio.create_task(_start(console), name="console-start"),
            asyncio.create_task(
                run_periodically(tick, lambda: _tick(console), "console-tick"), name="tick"
            ),
        ]
        yield
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app.cleanup_ctx.append(console_ctx)

    async def close_streams(app: web.Application) -> None:
        hub.close_all()

    app.on_shutdown.append(close_streams)
    app.on_response_prepare.append(add_security_headers)

    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("soudan_console", "templates"),
        autoescape=jinja2.select_autoescape(default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["jst"] = jst
    env.filters["duration"] = duration
    env.filters["highlight"] = highlight
    app.router.add_routes(auth_routes)
    app.router.add_routes(case_routes)
    app.router.add_routes(admin_routes)
    app.router.add_routes(live_routes)
    app.router.add_routes(typing_routes)
    static = resources.files("soudan_console") / "static"
    app.router.add_static("/static", str(static), append_version=False)
    return app


async def _start(console: Console) -> None:
    """Once the broker is up: the first admin (its creation is a fact) and the outbox."""
    await console.bus.wait_started()
    await bootstrap_admin(console)
    await console.flush_outbox()


async def _tick(console: Console) -> None:
    """Every few seconds: due broadcasts, the outbox, expired sessions, overdue urgent cases."""
    if not console.bus.is_ready:
        return
    await broadcasts.send_due(console)
    await console.flush_outbox()
    await console.sessions.purge_expired()
    await budget.check_thresholds(console)
    await emergencies.mail_emergencies(console)
    await emergencies.mail_departures(console)
    limit = timedelta(minutes=console.settings.console_urgent_alert_minutes)
    overdue = await cases.urgent_unclaimed(console, utcnow() - limit)
    if overdue:
        console.hub.send(
            "overdue",
            {
                "count": len(overdue),
                "minutes": console.settings.console_urgent_alert_minutes,
                "case_ids": [c.id for c in overdue[:20]],
            },
            roles=SUPERVISING_ROLES,
        )
    minutes = console.settings.console_failed_reply_alert_minutes
    for silent in await cases.give_up_waiting(console, utcnow() - timedelta(minutes=minutes)):
        console.hub.reply_not_delivered(silent.case_id, silent.staff_id)
    failed = await cases.failed_replies(console, utcnow() - timedelta(minutes=minutes))
    if failed:
        console.hub.send(
            "failed_replies",
            {
                "count": len(failed),
                "minutes": minutes,
                "command_ids": [m.command_id for m in failed[:20]],
            },
            roles=SUPERVISING_ROLES,
        )
