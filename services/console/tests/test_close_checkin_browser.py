"""The close form's effect on the check-in (issue 4), in headless Chromium: closing a case asks
for the check-in (triage sends it); after an emergency it is not asked for."""

from __future__ import annotations

from typing import Any

import pytest
from soudan_console.testing import RunningConsole, login, seed_case
from soudan_shared import fact_types as F
from soudan_shared.records import CASES

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


async def _close_in_the_browser(running: RunningConsole, page: Any, case_id: str) -> None:
    await page.goto(f"{running.url}/cases/{case_id}")
    await page.select_option("select[name=category]", "friendships")
    await page.select_option("select[name=outcome]", "resolved")
    await page.click("form[action$='/close'] button")
    await page.wait_for_url("**/queue**")


async def test_closing_a_case_in_the_browser_asks_for_the_checkin_and_the_case_page_says_so(
    running: RunningConsole, new_page: Any
) -> None:
    counselor = await running.add_staff("counselor")
    case = await seed_case(running.store, state="active", claimed_by=counselor.id)
    page = await new_page()
    await login(page, running.url, counselor.email)

    await _close_in_the_browser(running, page, case.id)

    doc = await running.store.db[CASES].find_one({"_id": case.id})
    assert doc["state"] == "closed"
    assert doc["checkin"]["state"] == "pending"
    await page.goto(f"{running.url}/cases/{case.id}")
    shown = await page.inner_text("#checkin")
    assert "これから送ります（寝ている時間には送りません）" in shown


async def test_a_case_closed_after_an_emergency_gets_no_checkin(
    running: RunningConsole, new_page: Any
) -> None:
    counselor = await running.add_staff("counselor")
    case = await seed_case(running.store, state="active", claimed_by=counselor.id, urgent=True)
    page = await new_page()
    await login(page, running.url, counselor.email)
    await page.goto(f"{running.url}/cases/{case.id}")
    await page.select_option("select[name=type]", "suicide_notice")
    await page.click("button.danger")
    await page.wait_for_url("**/emergencies/*")
    doc = await running.store.db[CASES].find_one({"_id": case.id})
    assert len(doc["open_emergencies"]) == 1  # where triage looks when the student leaves

    await _close_in_the_browser(running, page, case.id)

    doc = await running.store.db[CASES].find_one({"_id": case.id})
    assert doc["checkin"] == {
        "state": "skipped",
        "skipped": "emergency",
        "sent_at": None,
        "answer": None,
        "answer_label": None,
        "answered_at": None,
    }
    await running.wait_fact(F.CHECKIN_SKIPPED, case_id=case.id, reason="emergency")
    await page.goto(f"{running.url}/cases/{case.id}")
    assert "送っていません（緊急対応をした相談です）" in await page.inner_text("#checkin")
