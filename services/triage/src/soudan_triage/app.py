"""Composition root of the triage service: decides what happens to every LINE event."""

from __future__ import annotations

from aiohttp import web
from soudan_shared.http import create_base_app
from soudan_shared.runtime import use_bus, use_store

from soudan_triage.settings import TriageSettings

SERVICE = "triage"


def create_app(settings: TriageSettings) -> web.Application:
    app = create_base_app(SERVICE)
    use_store(app, settings.mongodb_url.get_secret_value())
    use_bus(app, settings, SERVICE)
    return app
