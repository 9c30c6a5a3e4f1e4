"""Composition root of the console service: the web console for staff."""

from __future__ import annotations

from aiohttp import web
from soudan_shared.http import create_base_app
from soudan_shared.runtime import use_bus, use_store

from soudan_console.settings import ConsoleSettings

SERVICE = "console"


def create_app(settings: ConsoleSettings) -> web.Application:
    app = create_base_app(SERVICE)
    use_store(app, settings.mongodb_url.get_secret_value())
    use_bus(app, settings, SERVICE)
    return app
