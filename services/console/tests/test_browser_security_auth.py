"""Sign-in hardening in headless Chromium, against the running console on the real broker."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pyotp
import pytest
from soudan_console.domain import STAFF
from soudan_console.testing import PASSWORD, RunningConsole, login, path_of
from soudan_shared import fact_types as F

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


async def test_an_admin_changes_a_role_and_disables_an_account_on_the_staff_page_with_their_code(
    running: RunningConsole, new_page: Any
) -> None:
    totp = pyotp.TOTP(pyotp.random_base32())
    admin = await running.add_staff("admin", totp_secret=totp.secret, totp_enabled=True)
    counselor = await running.add_staff("counselor", name="相談 花子")
    page = await new_page()
    await login(page, running.url, admin.email)
    await page.fill("input[name=code]", totp.now())
    await page.click("button.primary")
    await page.wait_for_load_state()

    async def fresh_code() -> str:  # the next code may be the same step again in a fast test
        await running.store.db[STAFF].update_one(
            {"_id": admin.id}, {"$set": {"totp_last_counter": 0}}
        )
        return str(totp.now())

    async def submit(action: str, summary: str, password: str, **fields: str) -> None:
        row = page.locator("tr", has_text=counselor.email)
        await row.locator("summary", has_text=summary).click()
        form = row.locator(f"form[action$='/{action}']")
        hint = await form.locator(".hint").inner_text()
        assert "あなた本人の操作であることを確かめるため" in hint
        assert "パスワードと確認コードを入れてください" in hint
        if "role" in fields:
            await form.locator("select[name=role]").select_option(fields["role"])
        await form.locator("input[name=current]").fill(password)
        await form.locator("input[name=current_code]").fill(await fresh_code())
        await form.locator("button").click()
        await page.wait_for_load_state()

    await page.goto(f"{running.url}/admin/staff")
    await submit("role", "役割を変える", "wrong-password-123", role="admin")
    assert "今のパスワードか確認コードがちがいます" in await page.inner_text("p.error")
    doc = await running.store.db[STAFF].find_one({"_id": counselor.id})
    assert doc["role"] == "counselor"
    assert running.facts_of(F.STAFF_ROLE_CHANGED) == []

    await submit("role", "役割を変える", PASSWORD, role="admin")
    assert "役割を変えました" in await page.inner_text("p.notice")
    await running.wait_fact(
        F.STAFF_ROLE_CHANGED, staff_id=counselor.id, before="counselor", after="admin", by=admin.id
    )
    row = page.locator("tr", has_text=counselor.email)
    assert "管理者" in await row.locator("td").nth(2).inner_text()

    await submit("disable", "使えなくする", PASSWORD)  # the confirmation is accepted
    assert "アカウントを使えなくしました" in await page.inner_text("p.notice")
    await running.wait_fact(F.STAFF_DISABLED, staff_id=counselor.id, by=admin.id)
    assert await row.locator(".badge", has_text="使えない").count() == 1
    doc = await running.store.db[STAFF].find_one({"_id": counselor.id})
    assert (doc["role"], doc["disabled"]) == ("admin", True)
