"""The whole service for the end-to-end scenarios: five services, the fake LINE platform, SMTP.

One stack per module (``stack``), in the test run's event loop, on its own bus namespace and
database (the memory store, shared by the five services through ``memory:///<name>``). The
fake LINE platform's clock is the scenarios' clock: triage decides with it, so a scenario puts
the platform at an open or a closed moment of the shipped hours (``Stack.at``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from soudan_allinone.testing import Stack, plan_stack, running_fake_platform, start_stack
from soudan_console.testing import launched_chromium, use_cheap_password_hashing
from soudan_shared.store import open_store
from soudan_shared.testing.plugin import delete_topology
from soudan_shared.testing.smtp import Inbox, running_smtp

SECRET = "e2e-channel-secret"
TOKEN = "e2e-access-token"


@pytest.fixture(autouse=True, scope="session")
def cheap_password_hashing() -> None:
    use_cheap_password_hashing()


@pytest.fixture(scope="module")
def smtp_inbox() -> Iterator[tuple[Inbox, int]]:
    with running_smtp() as server:
        yield server


@pytest.fixture(scope="module")
async def stack(
    rabbitmq_url: str,
    mongodb_url: str,
    smtp_inbox: tuple[Inbox, int],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Stack]:
    base = tmp_path_factory.mktemp("e2e")
    inbox, smtp_port = smtp_inbox
    plan = plan_stack(
        base,
        rabbitmq_url=rabbitmq_url,
        mongodb_url=mongodb_url,
        smtp_port=smtp_port,
        secret=SECRET,
        token=TOKEN,
    )
    topology, database, config_dir, env = plan.topology, plan.database, plan.config_dir, plan.env
    store = await open_store(env["MONGODB_URL"], database=database)
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        try:
            async with running_fake_platform(SECRET, TOKEN) as (line, seen):
                patch.setenv("LINE_API_BASE_URL", line.url)
                async with start_stack(line, seen, store, config_dir, inbox, base) as running:
                    yield running
        finally:
            with contextlib.suppress(Exception):
                await store.client.drop_database(database)
            await store.close()
            await delete_topology(rabbitmq_url, topology)


# -- the browser (for the counselor's reply typed in the console) ----------------------------


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Any]:
    """One headless Chromium for the whole run (Debian's, at /usr/bin/chromium)."""
    async with launched_chromium() as chromium:
        yield chromium


@pytest.fixture
async def new_page(browser: Any) -> AsyncIterator[Callable[..., Any]]:
    """Pages in fresh browser contexts (separate cookies), closed after the test."""
    contexts: list[Any] = []

    async def make() -> Any:
        context = await browser.new_context(locale="ja-JP")
        contexts.append(context)
        page = await context.new_page()
        page.set_default_timeout(10_000)
        return page

    yield make
    for context in contexts:
        with contextlib.suppress(Exception):
            await context.close()
