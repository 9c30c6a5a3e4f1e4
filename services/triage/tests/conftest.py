"""Triage under test: the real app on a free port, the test's bus namespace and database.

``line`` builds ``LineEventReceived`` messages the way ingress publishes them (unique
``webhookEventId``s, the times the test gives); ``start_triage`` runs the service with a fixed
clock and a private copy of the configuration; ``downstream`` is what dispatch and reporting
would receive: the ``SendText`` commands and the facts, read off the real queues. The helpers
themselves are in :mod:`soudan_triage.testing`.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from soudan_shared.bus import Bus
from soudan_shared.contracts import Fact, SendText
from soudan_shared.runtime import BUS, start_site
from soudan_shared.store import Store
from soudan_shared.testing.plugin import delete_topology
from soudan_shared.testing.proxy import free_port
from soudan_shared.topology import FACTS_QUEUE, SEND_TEXT_QUEUE, Topology
from soudan_triage.app import create_app
from soudan_triage.settings import TriageSettings
from soudan_triage.testing import (
    IN_HOURS,
    SHIPPED_CONFIG,
    Downstream,
    Line,
    RunningTriage,
    StartTriage,
)


@pytest.fixture
def line() -> Line:
    return Line()


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the shipped configuration, used by the service under test."""
    target = tmp_path / "config"
    shutil.copytree(SHIPPED_CONFIG, target)
    monkeypatch.setenv("SOUDAN_CONFIG_DIR", str(target))
    return target


@pytest.fixture
async def downstream(make_bus: Callable[..., Bus]) -> Downstream:
    seen = Downstream()
    bus = make_bus("downstream")

    async def on_command(command: SendText) -> None:
        seen.commands.append(command)

    async def on_fact(fact: Fact) -> None:
        seen.facts.append(fact)

    bus.consume(SEND_TEXT_QUEUE, SendText, on_command)
    bus.consume(FACTS_QUEUE, Fact, on_fact)
    bus.start()
    await bus.wait_started(10)
    return seen


@pytest.fixture
async def start_triage(
    service_env: dict[str, str],
    config_dir: Path,
    store: Store,
    make_bus: Callable[..., Bus],
    rabbitmq_url: str,
) -> AsyncIterator[StartTriage]:
    """``shards`` sets LINE_EVENT_SHARDS for triage and the publisher alike; ``stop`` receives
    what would stop the process (a shard mismatch) instead of SIGTERM; other keywords are
    triage settings."""
    runners: list[web.AppRunner] = []
    topologies: list[Topology] = []
    stopped: list[str] = []

    async def start(
        *,
        clock: Callable[[], datetime] = lambda: IN_HOURS,
        shards: int | None = None,
        stop: Callable[[str], None] = stopped.append,
        **overrides: Any,
    ) -> RunningTriage:
        if shards is not None:
            overrides["line_event_shards"] = shards
        settings = TriageSettings(**overrides)
        topologies.append(settings.topology())
        app = create_app(settings, clock=clock, stop=stop)
        runners.append(await start_site(app, free_port(), "127.0.0.1"))
        await app[BUS].wait_started(15)
        publisher = make_bus("ingress", topology=settings.topology())
        publisher.start()
        await publisher.wait_started(10)
        return RunningTriage(app, publisher, store)

    yield start
    for runner in reversed(runners):
        with contextlib.suppress(Exception):
            await runner.cleanup()
    for topology in topologies:  # the queues of other shard counts than the test topology's
        await delete_topology(rabbitmq_url, topology)
    assert not stopped, f"triage would have stopped: {stopped}"
