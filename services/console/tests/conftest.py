"""Fixtures of the console's tests: the console running in the test's loop on the real broker,
a shared headless Chromium, staff and cases written straight into the store, an SMTP server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from soudan_console.app import create_app
from soudan_console.settings import ConsoleSettings
from soudan_console.testing import (
    Browserless,
    RunningConsole,
    launched_chromium,
    use_cheap_password_hashing,
)
from soudan_shared.bus import Bus
from soudan_shared.contracts import Fact
from soudan_shared.runtime import start_site
from soudan_shared.store import Store
from soudan_shared.testing.proxy import free_port
from soudan_shared.testing.smtp import Inbox, running_smtp
from soudan_shared.testing.waiting import wait_until


@pytest.fixture(autouse=True, scope="session")
def cheap_password_hashing() -> None:
    use_cheap_password_hashing()


# -- SMTP ---------------------------------------------------------------------------------------


@pytest.fixture
def smtp_server() -> Iterator[tuple[Inbox, int]]:
    with running_smtp() as server:
        yield server


# -- the console ------------------------------------------------------------------------------


@pytest.fixture
def console_overrides() -> dict[str, Any]:
    return {}


@pytest.fixture
async def running(
    service_env: dict[str, str],
    store: Store,
    make_bus: Callable[..., Bus],
    tmp_path: Path,
    console_overrides: dict[str, Any],
) -> AsyncIterator[RunningConsole]:
    watcher = make_bus("watcher")
    seen: list[Fact] = []

    async def collect(fact: Fact) -> None:
        seen.append(fact)

    watcher.subscribe(("fact.#",), Fact, collect)
    watcher.start()
    await watcher.wait_started(10)

    settings = ConsoleSettings(
        console_development=True,
        reports_dir=tmp_path / "reports",
        **console_overrides,
    )
    app = create_app(settings, tick=0.5)
    port = free_port()
    runner = await start_site(app, port, "127.0.0.1")
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_until(lambda: _ready(url), timeout=20, message="console ready")
        yield RunningConsole(url, app, store, settings, seen)
    finally:
        await runner.cleanup()


async def _ready(url: str) -> bool:
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{url}/readyz") as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


@pytest.fixture
async def client(running: RunningConsole) -> AsyncIterator[Callable[[], Browserless]]:
    """Plain-HTTP sessions on the console (closed after the test)."""
    made: list[Browserless] = []

    def make() -> Browserless:
        made.append(Browserless(running.url))
        return made[-1]

    yield make
    for c in made:
        await c.close()


@pytest.fixture
async def fact_bus(make_bus: Callable[..., Bus]) -> Bus:
    """A publisher standing in for triage."""
    bus = make_bus("triage")
    bus.start()
    await bus.wait_started(10)
    return bus


# -- data ---------------------------------------------------------------------------------------


# -- the browser --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Any]:
    """One headless Chromium for the whole run (Debian's, at /usr/bin/chromium)."""
    async with launched_chromium() as chromium:
        yield chromium


COUNT_BEEPS = """
(() => {
  window.__beeps = 0;
  const Ctx = window.AudioContext;
  if (!Ctx) return;
  const create = Ctx.prototype.createOscillator;
  Ctx.prototype.createOscillator = function () { window.__beeps += 1; return create.call(this); };
})();
"""


@pytest.fixture
async def new_page(browser: Any) -> AsyncIterator[Callable[..., Any]]:
    """Pages in fresh browser contexts (separate cookies), closed after the test."""
    contexts: list[Any] = []

    async def make() -> Any:
        context = await browser.new_context(locale="ja-JP", viewport={"width": 1360, "height": 900})
        await context.add_init_script(COUNT_BEEPS)
        contexts.append(context)
        page = await context.new_page()
        page.set_default_timeout(10_000)
        page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
        return page

    yield make
    for context in contexts:
        with contextlib.suppress(Exception):
            await context.close()
