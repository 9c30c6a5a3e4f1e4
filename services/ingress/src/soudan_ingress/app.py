"""Composition root of the ingress service: the LINE webhook."""

from __future__ import annotations

from aiohttp import web
from soudan_shared.http import create_base_app
from soudan_shared.runtime import use_bus

from soudan_ingress.settings import IngressSettings

SERVICE = "ingress"


def create_app(settings: IngressSettings) -> web.Application:
    app = create_base_app(SERVICE)
    use_bus(app, settings, SERVICE)
    return app
