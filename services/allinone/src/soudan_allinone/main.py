"""``soudan-all``: the five services in one process, each on its own port.

For small installs, local development and end-to-end tests. Every service keeps its own
resources (broker connection, store client, metrics), exactly as when it runs alone; only the
process and the event loop are shared. With ``MONGODB_URL=memory://`` the five share one
in-process store, which is lost at exit (development only).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from soudan_console.app import create_app as create_console
from soudan_console.settings import ConsoleSettings
from soudan_dispatch.app import create_app as create_dispatch
from soudan_dispatch.settings import DispatchSettings
from soudan_ingress.app import create_app as create_ingress
from soudan_ingress.settings import IngressSettings
from soudan_reporting.app import create_app as create_reporting
from soudan_reporting.settings import ReportingSettings
from soudan_shared.runtime import event_loop_name, run_async, setup_logging, start_site
from soudan_shared.settings import BaseServiceSettings, load_settings
from soudan_shared.store import MEMORY_URL
from soudan_shared.testing.secantus import SecantusServer, start_secantus
from soudan_triage.app import create_app as create_triage
from soudan_triage.settings import TriageSettings

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ServiceEntry:
    name: str
    settings_class: type[BaseServiceSettings]
    create_app: Callable[[Any], web.Application]
    port_field: str


SERVICES = (
    ServiceEntry("ingress", IngressSettings, create_ingress, "ingress_port"),
    ServiceEntry("triage", TriageSettings, create_triage, "triage_port"),
    ServiceEntry("dispatch", DispatchSettings, create_dispatch, "dispatch_port"),
    ServiceEntry("console", ConsoleSettings, create_console, "console_port"),
    ServiceEntry("reporting", ReportingSettings, create_reporting, "reporting_port"),
)


async def run(host: str, only: set[str] | None = None) -> None:
    entries = [e for e in SERVICES if only is None or e.name in only]
    loaded = [(e, load_settings(e.settings_class, "soudan-all")) for e in entries]
    setup_logging(loaded[0][1], "all")
    runners: list[web.AppRunner] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    log.info("event_loop", loop=event_loop_name(loop))
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        for entry, settings in loaded:
            port = getattr(settings, entry.port_field)
            runners.append(await start_site(entry.create_app(settings), port, host))
            log.info("service_listening", service=entry.name, port=port)
        await stop.wait()
    finally:
        for runner in reversed(runners):
            with contextlib.suppress(Exception):
                await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="soudan-all", description="Run all five Soudan services in one process."
    )
    parser.add_argument("--host", default="0.0.0.0", help="listen address (default 0.0.0.0)")  # noqa: S104
    parser.add_argument(
        "--only",
        help="comma-separated subset of services to run (default: all five)",
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="without MONGODB_URL: start the SecantusDB data directory empty",
    )
    args = parser.parse_args(argv)
    only = set(args.only.split(",")) if args.only else None
    if only and not only <= {e.name for e in SERVICES}:
        parser.error(f"unknown service in --only: {', '.join(sorted(only))}")
    try:
        server = development_store("soudan-all", fresh=args.fresh)
    except RuntimeError as exc:
        parser.error(str(exc))
    if server is not None:
        os.environ["MONGODB_URL"] = f"{server.url}soudan"
    try:
        run_async(run(args.host, only))
    finally:
        if server is not None:
            server.stop()


def development_store(prog: str, *, fresh: bool, name: str = "secantus") -> SecantusServer | None:
    """Without ``MONGODB_URL``, a SecantusDB child process (its data kept across restarts in
    ``SOUDAN_DATA_DIR``, default ~/.local/share/soudan/<name>; ``fresh`` empties it first).
    Says loudly which store is in use either way."""
    url = os.environ.get("MONGODB_URL")
    if url == MEMORY_URL or (url and url.startswith("memory:")):
        print(
            f"{prog}: store: IN-PROCESS FAKE (mongomock, lost at exit); NOT MongoDB. "
            "Real consultations need MongoDB (MONGODB_URL=mongodb://…).",
            file=sys.stderr,
            flush=True,
        )
        return None
    if url:
        return None
    data_dir = Path(
        os.environ.get("SOUDAN_DATA_DIR", Path.home() / ".local" / "share" / "soudan" / name)
    )
    if fresh:
        shutil.rmtree(data_dir, ignore_errors=True)
    server = start_secantus(data_dir, test_commands=False)
    print(
        f"{prog}: store: SecantusDB child process on 127.0.0.1:{server.port}, data in {data_dir} "
        "(kept across restarts; --fresh starts empty). NOT MongoDB: for development and the "
        "demo only. Real consultations need MongoDB (MONGODB_URL=mongodb://…).",
        file=sys.stderr,
        flush=True,
    )
    return server
