"""``soudan-triage``: decides what happens to every LINE event."""

from __future__ import annotations

from soudan_shared.runtime import serve, setup_logging
from soudan_shared.settings import load_settings

from soudan_triage.app import SERVICE, create_app
from soudan_triage.settings import TriageSettings


def main() -> None:
    settings = load_settings(TriageSettings, "soudan-triage")
    setup_logging(settings, SERVICE)
    serve(create_app(settings), settings.triage_port)
