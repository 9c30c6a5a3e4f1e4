"""``soudan-ingress``: the LINE webhook."""

from __future__ import annotations

from soudan_shared.runtime import serve, setup_logging
from soudan_shared.settings import load_settings

from soudan_ingress.app import SERVICE, create_app
from soudan_ingress.settings import IngressSettings


def main() -> None:
    settings = load_settings(IngressSettings, "soudan-ingress")
    setup_logging(settings, SERVICE)
    serve(create_app(settings), settings.ingress_port)
