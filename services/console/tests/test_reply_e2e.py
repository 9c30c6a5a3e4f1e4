"""A counselor's reply, end to end: console → bus → dispatch → the fake LINE platform."""

from __future__ import annotations

from typing import Any

import pytest
from soudan_console.testing import RunningConsole, login, seed_case
from soudan_dispatch.app import create_app as create_dispatch
from soudan_dispatch.settings import DispatchSettings
from soudan_fakeline import new_user_id, running_fakeline
from soudan_shared import fact_types as F
from soudan_shared.runtime import start_site
from soudan_shared.testing.proxy import free_port
from soudan_shared.testing.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


async def test_a_reply_typed_in_the_console_arrives_at_the_fake_line_platform(
    running: RunningConsole, new_page: Any
) -> None:
    async with running_fakeline("test-channel-secret", ["test-access-token"]) as line:
        settings = DispatchSettings(
            line_api_base_url=line.url,
            broadcast_schedule=False,
            dispatch_port=free_port(),
            send_backoff_seconds=0.02,
        )
        runner = await start_site(create_dispatch(settings), settings.dispatch_port, "127.0.0.1")
        try:
            counselor = await running.add_staff("counselor")
            case = await seed_case(running.store, user_id=new_user_id())
            page = await new_page()
            await login(page, running.url, counselor.email)
            await page.click(f"tr[data-case-id='{case.id}'] button.claim")
            await page.wait_for_url("**?msg=claimed")
            await page.fill("#text-0", "メッセージをありがとう。相談員の佐藤です。")
            await page.click("#send")
            await page.wait_for_url("**?msg=sent")
            await wait_until(
                lambda: line.fake.texts(case.user_id), timeout=20, message="text at fake LINE"
            )
            assert line.fake.texts(case.user_id) == ["メッセージをありがとう。相談員の佐藤です。"]
            await running.wait_fact(F.REPLY_SENT, case_id=case.id, staff_id=counselor.id)
        finally:
            await runner.cleanup()
