"""Composition root of the reporting service."""

from __future__ import annotations

import structlog
from aiohttp import web
from soudan_shared.bus import Bus
from soudan_shared.contracts import Fact
from soudan_shared.http import create_base_app
from soudan_shared.runtime import STORE, use_bus, use_store
from soudan_shared.topology import FACTS_QUEUE

from soudan_reporting.recorder import EVENTS, INDEXES, record_fact
from soudan_reporting.settings import ReportingSettings

SERVICE = "reporting"
log = structlog.get_logger(__name__)


def create_app(settings: ReportingSettings) -> web.Application:
    app = create_base_app(SERVICE)
    use_store(app, settings.mongodb_url.get_secret_value(), INDEXES)

    def consumers(app: web.Application, bus: Bus) -> None:
        async def on_fact(fact: Fact) -> None:
            if not await record_fact(app[STORE].db[EVENTS], fact):
                log.info("fact_already_recorded", fact_type=fact.type)

        bus.consume(FACTS_QUEUE, Fact, on_fact, prefetch=64)

    use_bus(app, settings, SERVICE, consumers=consumers)
    return app
