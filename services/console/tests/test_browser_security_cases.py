"""Security of the case pages in headless Chromium: a live page ends with its session in every
console process, and student text is shown as it really is."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from soudan_console.app import create_app
from soudan_console.settings import ConsoleSettings
from soudan_console.testing import PASSWORD, Browserless, RunningConsole, login, path_of, seed_case
from soudan_shared.runtime import start_site
from soudan_shared.testing.proxy import free_port
from soudan_shared.testing.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


@pytest.fixture
def console_overrides() -> dict[str, Any]:
    # A re-check far slower than the default, so a page sent to sign-in only by it fails.
    return {"console_live_recheck_seconds": 30}


async def _ready(url: str) -> bool:
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{url}/readyz") as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


@contextlib.asynccontextmanager
async def another_console(tmp_path: Path) -> AsyncIterator[str]:
    """A second console process on the same store and broker (as behind a load balancer)."""
    settings = ConsoleSettings(console_development=True, reports_dir=tmp_path / "reports2")
    runner = await start_site(create_app(settings, tick=0.5), port := free_port(), "127.0.0.1")
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_until(lambda: _ready(url), timeout=20, message="second console ready")
        yield url
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("ending", ["disable", "role"])
async def test_an_open_case_page_goes_to_sign_in_at_once_when_another_console_disables_or_demotes(
    running: RunningConsole, new_page: Any, tmp_path: Path, ending: str
) -> None:
    counselor = await running.add_staff("counselor")
    admin = await running.add_staff("admin")
    case = await seed_case(running.store, state="active", claimed_by=counselor.id)
    page = await new_page()
    await login(page, running.url, counselor.email)
    await page.goto(f"{running.url}/cases/{case.id}")
    await page.wait_for_selector("body[data-live-state=open]")
    async with another_console(tmp_path) as elsewhere:
        a = Browserless(elsewhere)
        try:
            await a.login(admin.email)
            data = {"role": "supervisor"} if ending == "role" else {}
            data["current"] = PASSWORD  # the admin's own password: the re-authentication
            status, _, _ = await a.post(f"/admin/staff/{counselor.id}/{ending}", data)
            assert status == 200
            # Inside the 30-second re-check: the fact ends the stream in this process too (15 s
            # leaves room for a loaded machine: two test workers beside the cluster tests).
            await wait_until(
                lambda: path_of(page).startswith("/login"), timeout=15, message="at sign-in"
            )
        finally:
            await a.close()
    assert "この相談を" not in await page.inner_text("body")


async def test_the_conversation_shows_spoofing_marks_keyword_variants_and_wraps_long_text(
    running: RunningConsole, new_page: Any
) -> None:
    counselor = await running.add_staff("counselor")
    texts = (
        "abc\u202egnp.exe",
        "もう 消 え た い",
        "ｼﾆﾀｲ",
        "き\u200bえ\u2060た\u034fい",
        "b" * 5000,
    )
    risk = {"category": "自殺念慮", "term": "死にたい", "match": "\u202eいたに死"}
    case = await seed_case(
        running.store,
        state="active",
        claimed_by=counselor.id,
        urgent=True,
        keywords=("消えたい", "死に"),
        texts=texts,
        risks=[risk],
    )
    page = await new_page()
    await login(page, running.url, counselor.email)
    await page.goto(f"{running.url}/cases/{case.id}")
    # The live stream's first redraw has replaced the conversation: it stays put from here.
    await page.wait_for_selector("#live-area[data-version]", state="attached")
    bubbles = page.locator("#messages .msg.in .bubble")
    assert await bubbles.count() == 5

    shown = await bubbles.nth(0).inner_text()
    assert "\u202e" not in shown
    assert shown == "abc[U+202E]gnp.exe"
    assert await bubbles.nth(0).locator(".hidden-char").get_attribute("title")

    for i, expected in ((1, "消 え た い"), (2, "ｼﾆﾀｲ"), (3, "き[U+200B]え[U+2060]た[U+034F]い")):
        assert await bubbles.nth(i).locator("mark").inner_text() == expected
    assert "[U+202E]" in await page.inner_text("#risks")
    assert "\u202e" not in await page.inner_text("#risks")

    column = await page.locator(".main-col").bounding_box()
    long = await bubbles.nth(4).bounding_box()
    assert long["x"] + long["width"] <= column["x"] + column["width"] + 1
    assert await page.evaluate("document.documentElement.scrollWidth") <= 1360
