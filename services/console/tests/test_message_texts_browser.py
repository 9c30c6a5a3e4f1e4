"""The messages form in a real browser: a check-in button's label and the wait notice are saved
as typed; a wrong placeholder comes back with the problem in Japanese and the text kept."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from soudan_console.testing import RunningConsole, login
from soudan_shared.config_store import CONFIG_OVERRIDES, ConfigSource

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

SAVE = 'form[action="/admin/settings/messages"] button.primary'


async def test_an_admin_renames_a_checkin_button_and_is_told_of_a_wrong_placeholder(
    running: RunningConsole, new_page: Callable[..., Any]
) -> None:
    admin = await running.add_staff("admin")
    page = await new_page()
    await login(page, running.url, admin.email)
    before = (await running.console.config.get()).messages
    await page.goto(f"{running.url}/admin/settings/messages")
    assert await page.input_value('input[name="checkin.choices.bad.label"]') == "よくなかった"
    assert await page.locator('[name$=".key"]').count() == 0

    wrong = "いま{ahead}人が待っています。{minutes}分ほど待ってね。"
    await page.fill('textarea[name="auto_reply.wait_notice"]', wrong)
    await page.click(SAVE)
    await page.wait_for_selector("#settings-problems")
    problems = await page.inner_text("#settings-problems")
    assert "待ち時間のお知らせ: {minutes} は使えません。使えるのは {ahead}、{wait} だけです。" in (
        problems
    )
    assert await page.input_value('textarea[name="auto_reply.wait_notice"]') == wrong
    assert await running.store.db[CONFIG_OVERRIDES].find_one({"_id": "messages"}) is None

    await page.fill('textarea[name="auto_reply.wait_notice"]', "いま{ahead}人が待っています。")
    await page.fill('input[name="checkin.choices.bad.label"]', "ちょっとつらかった")
    await page.click(SAVE)
    await page.wait_for_url("**/admin/settings/messages?msg=saved")
    assert await page.input_value('input[name="checkin.choices.bad.label"]') == "ちょっとつらかった"
    messages = (
        await ConfigSource(running.settings.soudan_config_dir, running.store.db).get()
    ).messages
    assert [(c.key, c.label) for c in messages.checkin.choices][-1] == ("bad", "ちょっとつらかった")
    assert messages.auto_reply.wait_notice == "いま{ahead}人が待っています。"
    # Every other input went back as it was shown: times, switches and numbers included.
    expected = before.model_dump(mode="json")
    expected["auto_reply"]["wait_notice"] = "いま{ahead}人が待っています。"
    expected["checkin"]["choices"][-1]["label"] = "ちょっとつらかった"
    assert messages.model_dump(mode="json") == expected
