"""Composition root of the triage service: decides what happens to every LINE event.

Consumes every shard queue of LINE events (one user's events stay on one shard, each shard has a
single active consumer, and the bus handles one user's events one after another), keeps users,
cases and messages in the store, and publishes ``SendText`` commands for dispatch and facts for
reporting. The configuration in force (the YAML files with the console's edits) is re-read
every few seconds, at once when a ``settings.changed`` fact goes by. The daily retention job
runs in the background (one replica at a time).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Callable
from datetime import datetime

from aiohttp import web
from soudan_shared.bus import Bus
from soudan_shared.config_store import ConfigSource
from soudan_shared.contracts import Fact, LineEventReceived, utcnow
from soudan_shared.fact_types import SETTINGS_CHANGED
from soudan_shared.http import REGISTRY, create_base_app
from soudan_shared.records import INDEXES as RECORD_INDEXES
from soudan_shared.runtime import BUS, FACTS, STORE, use_bus, use_store
from soudan_shared.topology import line_event_queue, ordering_key

from soudan_triage import retention
from soudan_triage.service import Triage, TriageMetrics
from soudan_triage.settings import TriageSettings
from soudan_triage.store import INDEXES as TRIAGE_INDEXES
from soudan_triage.store import TriageStore

SERVICE = "triage"

TRIAGE: web.AppKey[Triage] = web.AppKey("triage", Triage)


def create_app(
    settings: TriageSettings, *, clock: Callable[[], datetime] = utcnow
) -> web.Application:
    app = create_base_app(SERVICE)
    use_store(app, settings.mongodb_url.get_secret_value(), (*RECORD_INDEXES, *TRIAGE_INDEXES))
    config: ConfigSource | None = None

    async def triage_ctx(app: web.Application) -> AsyncIterator[None]:
        nonlocal config
        config = ConfigSource(settings.soudan_config_dir, app[STORE].db)
        yield

    app.cleanup_ctx.append(triage_ctx)

    def consumers(app: web.Application, bus: Bus) -> None:
        assert config is not None
        triage = Triage(
            TriageStore(app[STORE].db),
            config,
            app[FACTS],
            bus,
            clock=clock,
            metrics=TriageMetrics(app[REGISTRY]),
        )
        app[TRIAGE] = triage

        async def handle(event: LineEventReceived) -> None:
            # The bus starts its consumers a moment before it lets anyone publish: a backlog
            # waiting at start-up would otherwise fail its first attempts.
            await bus.started.wait()
            await triage.handle(event)

        for shard in range(bus.topology.line_event_shards):
            bus.consume(
                line_event_queue(shard),
                LineEventReceived,
                handle,
                # Up to triage_held_events held, triage_concurrency handled at once: an
                # urgent-looking text starts ahead of the other users' events held before it
                # (a backlog after an outage, or during a burst).
                prefetch=settings.triage_held_events,
                concurrency=settings.triage_concurrency,
                ordering_key=ordering_key,
                priority=triage.looks_urgent,
            )

        async def on_settings_changed(_: Fact) -> None:
            triage.config.invalidate()

        bus.subscribe((f"fact.{SETTINGS_CHANGED}",), Fact, on_settings_changed)

    use_bus(app, settings, SERVICE, consumers=consumers)

    async def jobs_ctx(app: web.Application) -> AsyncIterator[None]:
        bus = app[BUS]
        job = asyncio.create_task(
            retention.run_daily(
                app[STORE].db,
                app[FACTS],
                months=settings.message_retention_months,
                holder=f"{socket.gethostname()}:{os.getpid()}:{id(app)}",
                clock=clock,
                ready=lambda: bus.is_ready,
            ),
            name="triage-retention",
        )
        yield
        job.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await job

    app.cleanup_ctx.append(jobs_ctx)
    return app
