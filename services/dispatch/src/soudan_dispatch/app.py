"""Composition root of dispatch: the only service that talks to the LINE Messaging API."""

from __future__ import annotations

from aiohttp import web
from soudan_shared.http import create_base_app
from soudan_shared.runtime import use_bus, use_store

from soudan_dispatch.settings import DispatchSettings

SERVICE = "dispatch"


def create_app(settings: DispatchSettings) -> web.Application:
    app = create_base_app(SERVICE)
    use_store(app, settings.mongodb_url.get_secret_value())
    use_bus(app, settings, SERVICE)
    return app
