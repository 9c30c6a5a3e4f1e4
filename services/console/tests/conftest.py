"""Fixtures of the console's tests: the console running in the test's loop on the real broker,
a shared headless Chromium, staff and cases written straight into the store, an SMTP server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiosmtpd.controller import Controller
from argon2 import PasswordHasher
from soudan_console.app import create_app
from soudan_console.security import use_hasher
from soudan_console.settings import ConsoleSettings
from soudan_console.testing import RunningConsole
from soudan_shared.bus import Bus
from soudan_shared.contracts import Fact
from soudan_shared.runtime import start_site
from soudan_shared.store import Store
from soudan_shared.testing.proxy import free_port
from soudan_shared.testing.waiting import wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(autouse=True, scope="session")
def cheap_password_hashing() -> None:
    """argon2id still, with small parameters: the production ones cost ~0.3 s a hash here."""
    use_hasher(PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1))


# -- SMTP ---------------------------------------------------------------------------------------


class Inbox:
    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.envelopes: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append(envelope)
        parsed = message_from_bytes(envelope.original_content, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append(parsed)
        return "250 OK"


@pytest.fixture
def smtp_server() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


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
    if not Path(CHROMIUM).exists():  # noqa: ASYNC240 - once per run
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium")
    from playwright.async_api import async_playwright

    playwright = await async_playwright().start()
    chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield chromium
    with contextlib.suppress(Exception):
        await chromium.close()
    await playwright.stop()


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
