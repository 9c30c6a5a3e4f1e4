"""Sign-in hardening in headless Chromium, against the running console on the real broker."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
from soudan_console.testing import PASSWORD, RunningConsole, path_of

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

# What a link's ``next`` parameter holds once decoded: control characters, backslashes, extra
# slashes, escaped dots and slashes, another scheme, user info.
DISGUISED = [
    "/\t/evil.example/",
    "/\r\n/evil.example/",
    "/\\evil.example/",
    "///evil.example/",
    "%2F%2Fevil.example/",
    "/%2e%2e//evil.example/",
    "/x/..//evil.example/",
    "/\uff0f/evil.example/",
    "https://evil.example/",
    "javascript:alert(1)",
    "//user@evil.example/",
    "/@evil.example/",
]


async def test_a_sign_in_link_with_a_disguised_next_page_lands_the_counselor_on_the_queue(
    running: RunningConsole, new_page: Any
) -> None:
    counselor = await running.add_staff("counselor")
    for target in DISGUISED:
        page = await new_page()
        seen: list[str] = []
        page.on("request", lambda r, seen=seen: seen.append(r.url))
        await page.goto(f"{running.url}/login?next={quote(target, safe='')}")
        await page.fill("input[name=email]", counselor.email)
        await page.fill("input[name=password]", PASSWORD)
        await page.click("button.primary")
        await page.wait_for_load_state()
        assert path_of(page) == "/queue", target
        assert await page.inner_text("h1") == "相談の待ち行列", target
        assert not any("evil.example" in url.split("?")[0] for url in seen), (target, seen)
        await page.context.close()
