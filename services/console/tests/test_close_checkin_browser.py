"""The close form in headless Chromium: what the counselor records (issue 16: several categories,
学年, 性別, handed over), and its effect on the check-in (issue 4): closing a case asks for the
check-in (triage sends it); after an emergency it is not asked for."""

from __future__ import annotations

from typing import Any

import pytest
from soudan_console.testing import RunningConsole, login, seed_case
from soudan_shared import fact_types as F
from soudan_shared.records import CASES

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


async def _close_in_the_browser(running: RunningConsole, page: Any, case_id: str) -> None:
    await page.goto(f"{running.url}/cases/{case_id}")
    await page.check("input[name=categories][value=friendships]")
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


async def test_a_case_closed_with_two_categories_ticked_keeps_both_and_its_page_shows_the_record(
    running: RunningConsole, new_page: Any
) -> None:
    counselor = await running.add_staff("counselor")
    case = await seed_case(running.store, state="active", claimed_by=counselor.id)
    page = await new_page()
    await login(page, running.url, counselor.email)
    await page.goto(f"{running.url}/cases/{case.id}")
    assert await page.input_value("select[name=grade]") == ""  # 不明 unless chosen
    assert await page.inner_text("select[name=gender] option:checked") == "不明"
    await page.check("input[name=categories][value=family]")
    await page.check("input[name=categories][value=bullying]")
    await page.select_option("select[name=outcome]", "continuing")
    await page.select_option("select[name=grade]", label="中2")
    await page.check("text=電話相談など他の窓口につないだ")
    await page.click("form[action$='/close'] button")
    await page.wait_for_url("**/queue**")

    doc = await running.store.db[CASES].find_one({"_id": case.id})
    assert doc["categories"] == ["bullying", "family"]  # in the configuration's order
    assert (doc["grade"], doc["gender"], doc["handed_over"]) == ("jh2", None, True)
    closed = await running.wait_fact(F.CASE_CLOSED, case_id=case.id)
    assert closed.data["categories"] == ["bullying", "family"]
    await page.goto(f"{running.url}/cases/{case.id}")
    record = await page.inner_text("#close-record")
    assert "いじめ、家庭" in record
    assert "学年 中2" in record
    assert "性別 不明" in record
    assert "電話相談など他の窓口につないだ" in record


async def test_closing_with_no_category_ticked_is_refused_and_the_choices_stay_on_the_form(
    running: RunningConsole, new_page: Any
) -> None:
    counselor = await running.add_staff("counselor")
    case = await seed_case(running.store, state="active", claimed_by=counselor.id)
    page = await new_page()
    await login(page, running.url, counselor.email)
    await page.goto(f"{running.url}/cases/{case.id}")
    await page.select_option("select[name=outcome]", "resolved")
    await page.select_option("select[name=gender]", label="女性")
    await page.click("form[action$='/close'] button")
    await page.wait_for_load_state()

    assert "分類を1つ以上選んでから終了してください。" in await page.content()
    assert await page.input_value("select[name=gender]") == "female"
    assert await page.input_value("select[name=outcome]") == "resolved"
    doc = await running.store.db[CASES].find_one({"_id": case.id})
    assert doc["state"] == "active"
