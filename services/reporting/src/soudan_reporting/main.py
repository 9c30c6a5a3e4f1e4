"""``soudan-reporting``: the recorder (and, later, the monthly report)."""

from __future__ import annotations

from soudan_shared.runtime import serve, setup_logging
from soudan_shared.settings import load_settings

from soudan_reporting.app import SERVICE, create_app
from soudan_reporting.settings import ReportingSettings


def main() -> None:
    settings = load_settings(ReportingSettings, "soudan-reporting")
    setup_logging(settings, SERVICE)
    serve(create_app(settings), settings.reporting_port)
