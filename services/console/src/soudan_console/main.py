"""``soudan-console``: the web console for staff."""

from __future__ import annotations

from soudan_shared.runtime import serve, setup_logging
from soudan_shared.settings import load_settings

from soudan_console.app import SERVICE, create_app
from soudan_console.settings import ConsoleSettings


def main() -> None:
    settings = load_settings(ConsoleSettings, "soudan-console")
    setup_logging(settings, SERVICE)
    serve(create_app(settings), settings.console_port)
