"""Dispatch under test: the real broker, the test's own store, and the fake LINE platform."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from soudan_dispatch.app import BROADCASTER, SENDER, create_app
from soudan_dispatch.settings import DispatchSettings
from soudan_fakeline import FakeLineServer, running_fakeline
from soudan_shared.bus import Bus
from soudan_shared.contracts import Fact
from soudan_shared.runtime import start_site
from soudan_shared.store import Store
from soudan_shared.testing.proxy import free_port
from soudan_shared.testing.waiting import wait_until
from soudan_shared.topology import FACTS_QUEUE

TOKEN = "test-access-token"


@pytest.fixture
async def line() -> AsyncIterator[FakeLineServer]:
    async with running_fakeline("test-channel-secret", [TOKEN]) as server:
        yield server


@dataclass
class FactLog:
    facts: list[Fact] = field(default_factory=list)

    def of(self, type_: str) -> list[Fact]:
        return [f for f in self.facts if f.type == type_]


@pytest.fixture
async def facts(make_bus: Callable[..., Bus]) -> FactLog:
    """Every fact published on the test's namespace, as reporting would see it."""
    log = FactLog()
    bus = make_bus("fact-watcher")

    async def keep(fact: Fact) -> None:
        log.facts.append(fact)

    bus.consume(FACTS_QUEUE, Fact, keep)
    bus.start()
    await bus.wait_started(10)
    return log


@dataclass
class Dispatch:
    url: str
    app: web.Application
    settings: DispatchSettings


async def _ready(url: str) -> bool:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/readyz") as response:
        return response.status == 200


@pytest.fixture
def dispatch_settings(
    service_env: dict[str, str], line: FakeLineServer
) -> Callable[..., DispatchSettings]:
    def make(**overrides: Any) -> DispatchSettings:
        values: dict[str, Any] = {
            "line_api_base_url": line.url,
            "send_backoff_seconds": 0.02,
            "send_backoff_max_seconds": 0.2,
            "send_max_attempts": 4,
            "line_request_timeout": 2.0,
            "broadcast_schedule": False,
            "richmenu_auto": False,
            "dispatch_port": free_port(),
        }
        values.update(overrides)
        return DispatchSettings(**values)

    return make


@contextlib.asynccontextmanager
async def running_dispatch(settings: DispatchSettings) -> AsyncIterator[Dispatch]:
    app = create_app(settings)
    runner = await start_site(app, settings.dispatch_port, "127.0.0.1")
    url = f"http://127.0.0.1:{settings.dispatch_port}"
    try:
        await wait_until(lambda: _ready(url), timeout=15, message="dispatch ready")
        yield Dispatch(url, app, settings)
    finally:
        await runner.cleanup()


@pytest.fixture
async def dispatch(
    dispatch_settings: Callable[..., DispatchSettings], facts: FactLog
) -> AsyncIterator[Dispatch]:
    async with running_dispatch(dispatch_settings()) as running:
        assert SENDER in running.app
        assert BROADCASTER in running.app
        yield running


@pytest.fixture
async def publisher(make_bus: Callable[..., Bus]) -> Bus:
    bus = make_bus("triage")
    bus.start()
    await bus.wait_started(10)
    return bus


@pytest.fixture
def db(store: Store) -> Any:
    return store.db
