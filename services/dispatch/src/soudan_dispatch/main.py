"""``soudan-dispatch``: the only service that talks to the LINE Messaging API."""

from __future__ import annotations

from soudan_shared.runtime import serve, setup_logging
from soudan_shared.settings import load_settings

from soudan_dispatch.app import SERVICE, create_app
from soudan_dispatch.settings import DispatchSettings


def main() -> None:
    settings = load_settings(DispatchSettings, "soudan-dispatch")
    setup_logging(settings, SERVICE)
    serve(create_app(settings), settings.dispatch_port)
