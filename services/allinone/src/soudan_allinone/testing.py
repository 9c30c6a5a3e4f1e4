"""The whole service under test: the five apps in the running loop, the fake LINE platform.

Used by ``services/allinone/tests`` (the end-to-end scenarios); not by the service. Settings
come from the environment the caller set (bus namespace, database, LINE, SMTP); triage decides
with the fake platform's clock, so moving that clock (:meth:`Stack.at`) moves the service to an
open or a closed moment.
"""

from __future__ import annotations

import contextlib
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from soudan_console.app import create_app as create_console
from soudan_console.settings import ConsoleSettings
from soudan_console.testing import RunningConsole
from soudan_dispatch.app import create_app as create_dispatch
from soudan_dispatch.settings import DispatchSettings
from soudan_fakeline import FakeLineServer
from soudan_fakeline import create_app as create_fakeline
from soudan_fakeline.api import SENDER
from soudan_ingress.app import create_app as create_ingress
from soudan_ingress.settings import IngressSettings
from soudan_reporting.app import create_app as create_reporting
from soudan_reporting.recorder import EVENTS
from soudan_reporting.settings import ReportingSettings
from soudan_shared.config import load_config
from soudan_shared.runtime import start_site
from soudan_shared.store import Store
from soudan_shared.testing.plugin import with_database
from soudan_shared.testing.proxy import free_port
from soudan_shared.testing.waiting import wait_until
from soudan_shared.topology import Topology
from soudan_triage.app import create_app as create_triage
from soudan_triage.hours import Hours
from soudan_triage.settings import TriageSettings
from soudan_triage.testing import SHIPPED_CONFIG

HOST = "127.0.0.1"


@dataclass
class Stack:
    line: FakeLineServer
    seen: SeenPaths
    store: Store
    console: RunningConsole
    webhook_url: str
    urls: dict[str, str]
    config_dir: Path
    inbox: Any
    reports_dir: Path
    hours: Hours
    reporting_settings: ReportingSettings
    apps: dict[str, web.Application] = field(default_factory=dict)
    runners: dict[str, web.AppRunner] = field(default_factory=dict)

    async def stop_service(self, name: str) -> None:
        """Shut service ``name``'s instance down (its app's cleanup), freeing its port."""
        await self.runners.pop(name).cleanup()

    async def start_service(
        self, name: str, app: web.Application, *, wait_ready: bool = True
    ) -> None:
        """Serve ``app`` as a new instance of service ``name`` on its port (ready, by default)."""
        url = self.urls[name]
        self.runners[name] = await start_site(app, urlsplit(url).port or 0, HOST)
        self.apps[name] = app
        if wait_ready:
            await wait_until(lambda: _ready(url), timeout=30, message=f"{name} ready")

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.line.fake.now(), UTC)

    def at(self, moment: datetime) -> None:
        """Put the fake platform's clock (and with it triage's) at ``moment``."""
        self.line.fake.advance(moment.timestamp() - self.line.fake.now())

    def open_moment(self) -> datetime:
        """A moment of the current month, as near to now as possible, when new cases are taken."""
        return self._find(datetime.now(UTC), accepting=True)

    def closed_moment(self) -> datetime:
        """The first closed moment after :meth:`open_moment` (cases left waiting then are newer
        than the in-hours ones, so they never make the in-hours scenarios look congested)."""
        return self._find(self.open_moment(), accepting=False, forward_first=True)

    def _find(self, start: datetime, *, accepting: bool, forward_first: bool = False) -> datetime:
        start = start.replace(minute=0, second=0, microsecond=0)
        back = [-h for h in range(1, 24 * 31)]
        ahead = list(range(1, 24 * 31))
        for hours in (ahead + back) if forward_first else (back + ahead):
            moment = start + timedelta(hours=hours, minutes=15)
            if (moment.year, moment.month) != (start.year, start.month):
                continue
            if self.hours.status(moment).accepting == accepting:
                return moment
        raise AssertionError(f"no {'open' if accepting else 'closed'} hour this month")

    async def facts(self, fact_type: str, **data: Any) -> list[dict[str, Any]]:
        """The recorded facts (``events``) of ``fact_type`` whose data has ``data``."""
        query: dict[str, Any] = {"type": fact_type}
        query.update({f"data.{k}": v for k, v in data.items()})
        return await self.store.db[EVENTS].find(query).to_list()

    async def wait_fact(self, fact_type: str, **data: Any) -> dict[str, Any]:
        async def found() -> dict[str, Any] | None:
            facts = await self.facts(fact_type, **data)
            return facts[0] if facts else None

        fact: dict[str, Any] = await wait_until(
            found, timeout=15, message=f"fact {fact_type} {data}"
        )
        return fact


async def _ready(url: str) -> bool:
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{url}/readyz") as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


@dataclass(frozen=True)
class SeenPaths:
    """Every path the fake platform was asked for, answered or not (404s included)."""

    paths: list[str] = field(default_factory=list)


@contextlib.asynccontextmanager
async def running_fake_platform(
    secret: str, token: str
) -> AsyncIterator[tuple[FakeLineServer, SeenPaths]]:
    """The fake LINE platform on a free port, recording every request path it sees."""
    app, fake = create_fakeline(secret, [token])
    seen = SeenPaths()

    async def note(request: web.Request, _: web.StreamResponse) -> None:
        seen.paths.append(request.path)

    app.on_response_prepare.append(note)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, HOST, port).start()
    try:
        yield FakeLineServer(f"http://{HOST}:{port}", port, fake, app[SENDER]), seen
    finally:
        await runner.cleanup()


@dataclass(frozen=True)
class StackPlan:
    """What a test stack is started from: its own bus namespace, database and configuration."""

    topology: Topology
    database: str
    config_dir: Path
    reports_dir: Path
    env: dict[str, str]


def plan_stack(
    base: Path, *, rabbitmq_url: str, mongodb_url: str, smtp_port: int, secret: str, token: str
) -> StackPlan:
    """A fresh namespace and database, a copy of the shipped configuration under ``base``, and
    the environment the five services of the stack read their settings from."""
    topology = Topology(namespace=f"t{uuid.uuid4().hex[:10]}")
    database = f"t_{uuid.uuid4().hex[:12]}"
    config_dir = base / "config"
    shutil.copytree(SHIPPED_CONFIG, config_dir)
    reports_dir = base / "reports"
    env = {
        "RABBITMQ_URL": rabbitmq_url,
        "MONGODB_URL": with_database(mongodb_url, database),
        "BUS_NAMESPACE": topology.namespace,
        "LOG_HASH_KEY": "test-hash-key",
        "LINE_CHANNEL_SECRET": secret,
        "LINE_CHANNEL_ACCESS_TOKEN": token,
        "SOUDAN_CONFIG_DIR": str(config_dir),
        "SMTP_HOST": HOST,
        "SMTP_PORT": str(smtp_port),
        "SMTP_STARTTLS": "false",
        "EMERGENCY_RECIPIENTS": "section@example.jp",
        "REPORT_RECIPIENTS": "section@example.jp",
        "REPORTS_DIR": str(reports_dir),
    }
    return StackPlan(topology, database, config_dir, reports_dir, env)


@contextlib.asynccontextmanager
async def start_stack(
    line: FakeLineServer,
    seen: SeenPaths,
    store: Store,
    config_dir: Path,
    inbox: Any,
    base: Path,
) -> AsyncIterator[Stack]:
    """The five services on free ports, ready; stopped in reverse order on exit."""

    def clock() -> datetime:
        return datetime.fromtimestamp(line.fake.now(), UTC)

    reporting_settings = ReportingSettings()
    console_settings = ConsoleSettings(console_development=True)
    apps = {
        "ingress": create_ingress(IngressSettings()),
        "triage": create_triage(TriageSettings(), clock=clock),
        "dispatch": create_dispatch(
            DispatchSettings(
                broadcast_schedule=False,
                send_backoff_seconds=0.02,
                line_api_data_base_url=line.url,
            )
        ),
        "console": create_console(console_settings, tick=0.5),
        "reporting": create_reporting(reporting_settings),
    }
    runners: dict[str, web.AppRunner] = {}
    urls: dict[str, str] = {}
    try:
        for name, app in apps.items():
            port = free_port()
            runners[name] = await start_site(app, port, HOST)
            urls[name] = f"http://{HOST}:{port}"
        for name, url in urls.items():
            await wait_until(lambda u=url: _ready(u), timeout=30, message=f"{name} ready")
        console = RunningConsole(urls["console"], apps["console"], store, console_settings)
        yield Stack(
            line=line,
            seen=seen,
            store=store,
            console=console,
            webhook_url=f"{urls['ingress']}/webhook",
            urls=urls,
            config_dir=config_dir,
            inbox=inbox,
            reports_dir=base / "reports",
            hours=Hours(load_config(config_dir).hours),
            reporting_settings=reporting_settings,
            apps=apps,
            runners=runners,
        )
    finally:
        for runner in reversed(list(runners.values())):
            with contextlib.suppress(Exception):
                await runner.cleanup()
