"""Composition root of the triage service: decides what happens to every LINE event.

Consumes the shard queues of LINE events (every one, or ``TRIAGE_SHARDS``; the preferred ones at
a higher consumer priority; one user's events stay on one shard, each shard has a single active
consumer, and the bus handles one user's events one after another), keeps users,
cases and messages in the store, and publishes ``SendText`` commands for dispatch and facts for
reporting. The configuration in force (the YAML files with the console's edits) is re-read
every few seconds, at once when a ``settings.changed`` fact goes by. The daily retention job
and the sweep for wait notices and check-ins (:mod:`soudan_triage.timers`) run in the
background (one replica at a time).

Once connected, triage checks that no service routes LINE events to more shard queues than it
consumes (:mod:`soudan_triage.shards`); if one does, it says so and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from datetime import datetime

import structlog
from aiohttp import web
from soudan_shared.bus import Bus
from soudan_shared.config_store import ConfigSource
from soudan_shared.contracts import Fact, LineEventReceived, utcnow
from soudan_shared.fact_types import SETTINGS_CHANGED
from soudan_shared.http import REGISTRY, add_readiness_check, create_base_app
from soudan_shared.records import INDEXES as RECORD_INDEXES
from soudan_shared.runtime import BUS, FACTS, STORE, use_bus, use_store
from soudan_shared.topology import line_event_queue, ordering_key

from soudan_triage import retention
from soudan_triage.service import Triage, TriageMetrics
from soudan_triage.settings import TriageSettings
from soudan_triage.shards import mismatch_message, unconsumed_shard_queue
from soudan_triage.store import INDEXES as TRIAGE_INDEXES
from soudan_triage.store import TriageStore
from soudan_triage.timers import Timers

log = structlog.get_logger(__name__)

SERVICE = "triage"

TRIAGE: web.AppKey[Triage] = web.AppKey("triage", Triage)
TIMERS: web.AppKey[Timers] = web.AppKey("timers", Timers)


def stop_process(message: str) -> None:
    """Say why on stderr and stop the process as SIGTERM does (under ``soudan-all``, the five
    services with it: a shard count that disagrees with the broker's is wrong for all of them)."""
    print(f"soudan-triage: {message}", file=sys.stderr, flush=True)
    signal.raise_signal(signal.SIGTERM)


def create_app(
    settings: TriageSettings,
    *,
    clock: Callable[[], datetime] = utcnow,
    stop: Callable[[str], None] = stop_process,
) -> web.Application:
    """``stop`` is called, with the reason, when the broker holds shard queues this triage
    would not consume (tests pass their own)."""
    app = create_base_app(SERVICE)
    use_store(app, settings, (*RECORD_INDEXES, *TRIAGE_INDEXES))
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
        # The holiday calendar loads on first use (about a second of CPU): now, not while the
        # first student's message waits.
        with contextlib.suppress(Exception):
            triage.hours(config.files.hours).status(clock())

        async def handle(event: LineEventReceived) -> None:
            # The bus starts its consumers a moment before it lets anyone publish: a backlog
            # waiting at start-up would otherwise fail its first attempts.
            await bus.started.wait()
            await triage.handle(event)

        for shard in settings.consumed_shards():
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
                consumer_priority=settings.consumer_priority(shard),
            )

        async def on_settings_changed(_: Fact) -> None:
            triage.config.invalidate()

        # The console publishes each settings change alone: no batch holds one.
        bus.subscribe((f"fact.{SETTINGS_CHANGED}",), Fact, on_settings_changed, batches=False)

    use_bus(app, settings, SERVICE, consumers=consumers)

    shards_agree = True
    add_readiness_check(app, "line_event_shards", lambda: shards_agree)

    async def check_shards(bus: Bus) -> None:
        nonlocal shards_agree
        await bus.started.wait()
        # The bus has no public handle on its connection; a channel of its own is all it takes.
        connection = bus._connection
        if connection is None:
            return
        try:
            queue = await unconsumed_shard_queue(connection, bus.topology)
        except Exception as exc:  # the connection dropped meanwhile: not a verdict
            log.warning("line_event_shards_unchecked", error=repr(exc)[:200])
            return
        if queue is not None:
            shards_agree = False
            message = mismatch_message(bus.topology, queue)
            log.error("line_event_shards_mismatch", queue=queue, message=message)
            stop(message)

    async def jobs_ctx(app: web.Application) -> AsyncIterator[None]:
        bus = app[BUS]
        shards = asyncio.create_task(check_shards(bus), name="triage-shard-check")
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
        triage = app[TRIAGE]
        timers = Timers(
            app[STORE].db,
            triage.config,
            app[FACTS],
            bus,
            hours=triage.hours,
            clock=clock,
            holder=f"{socket.gethostname()}:{os.getpid()}:{id(app)}",
        )
        app[TIMERS] = timers
        sweeps = asyncio.create_task(
            timers.run_forever(settings.triage_timers_interval, lambda: bus.is_ready),
            name="triage-timers",
        )
        yield
        for task in (shards, job, sweeps):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app.cleanup_ctx.append(jobs_ctx)
    return app
