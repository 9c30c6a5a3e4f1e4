"""An alert when a student in danger leaves (issue 5), end to end: a student whose case is
urgent, or has an emergency open, blocks the account; the supervisors are alerted live in the
console and the section by mail, the case shows it. A calm student who leaves alerts no one."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from soudan_allinone.testing import Stack
from soudan_console.testing import Browserless
from soudan_fakeline import new_user_id
from soudan_shared import fact_types as F
from soudan_shared.records import CASES
from soudan_shared.testing.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

SUBJECT = "相談者がブロックしました"


async def _case(stack: Stack, user: str) -> dict[str, Any]:
    case: dict[str, Any] = await wait_until(
        lambda: stack.store.db[CASES].find_one({"user_id": user}), message="the user's case"
    )
    return case


async def _signed_in(stack: Stack, role: str) -> tuple[Any, Browserless]:
    staff = await stack.console.add_staff(role)
    session = Browserless(stack.console.url)
    status, _, _ = await session.login(staff.email)
    assert status == 200
    return staff, session


async def _notice(stream: Any, case_id: str) -> dict[str, Any] | None:
    """The next ``notice`` event about ``case_id`` on an SSE stream (None at anything else)."""
    try:
        line = (await asyncio.wait_for(stream.content.readline(), 1)).decode()
    except TimeoutError:
        return None
    if line.strip() != "event: notice":
        return None
    data = (await stream.content.readline()).decode().removeprefix("data: ")
    notice: dict[str, Any] = json.loads(data)
    return notice if notice.get("case_id") == case_id else None


def _departure_mails(stack: Stack) -> list[Any]:
    return [m for m in stack.inbox.messages if SUBJECT in str(m["Subject"])]


async def test_an_urgent_student_who_blocks_the_account_alerts_supervisors_live_and_by_mail(
    stack: Stack,
) -> None:
    stack.at(stack.open_moment())
    calm, urgent = new_user_id(), new_user_id()
    await stack.line.webhook.text(calm, "進路のことで相談です", url=stack.webhook_url)
    await stack.line.webhook.text(urgent, "もう死にたい", url=stack.webhook_url)
    calm_case = await _case(stack, calm)
    case = await _case(stack, urgent)
    assert case["urgent"] is True
    mails_before = len(_departure_mails(stack))

    _, watching = await _signed_in(stack, "supervisor")
    try:
        async with watching.http.get(f"{stack.console.url}/events") as live:
            assert live.status == 200
            await live.content.readline()  # the stream is open
            await stack.line.webhook.unfollow(calm, url=stack.webhook_url)
            await stack.line.webhook.unfollow(urgent, url=stack.webhook_url)
            notice = await wait_until(
                lambda: _notice(live, case["_id"]), timeout=10, message="the live alert"
            )
        assert "ブロック" in notice["text"]
        assert notice["type"] == F.CASE_STUDENT_LEFT

        left = await stack.wait_fact(F.CASE_STUDENT_LEFT, case_id=case["_id"])
        assert left["data"]["urgent"] is True
        assert left["data"]["user_id"] == urgent
        await stack.wait_fact(F.CASE_STUDENT_LEFT_NOTIFIED, case_id=case["_id"], channel="email")
        mails = await wait_until(
            lambda: _departure_mails(stack)[mails_before:], message="the departure mail"
        )
        assert len(mails) == 1
        assert mails[0]["To"] == "section@example.jp"
        body = mails[0].get_content()
        assert case["_id"][:8] in body
        assert urgent not in body  # never the LINE user id
        assert "死にたい" not in body  # never the message text
        assert not body.startswith("※")  # sent at once: not marked as late

        stored = await stack.store.db[CASES].find_one({"_id": case["_id"]})
        assert stored["departure"]["mail"] == "sent"
        status, _, page = await watching.get(f"/cases/{case['_id']}")
        assert status == 200
        assert 'id="student-departure"' in page
        assert "危険がありそうなままブロックされました" in page
    finally:
        await watching.close()

    await stack.wait_fact(F.LINE_UNFOLLOWED, user_id=calm)
    assert await stack.facts(F.CASE_STUDENT_LEFT, case_id=calm_case["_id"]) == []
    assert (await stack.store.db[CASES].find_one({"_id": calm_case["_id"]}))["departure"] is None


async def test_a_student_with_an_open_emergency_who_blocks_the_account_alerts_too(
    stack: Stack,
) -> None:
    stack.at(stack.open_moment())
    user = new_user_id()
    await stack.line.webhook.text(user, "家に帰りたくない", url=stack.webhook_url)
    case = await _case(stack, user)
    assert case["urgent"] is False
    _, session = await _signed_in(stack, "counselor")
    try:
        await session.post(f"/cases/{case['_id']}/claim")
        _, where, _ = await session.post(f"/cases/{case['_id']}/emergency", {"type": "other"})
        assert where.startswith("/emergencies/")
        emergency_id = where.split("/")[2].split("?")[0]
    finally:
        await session.close()
    mails_before = len(_departure_mails(stack))

    await stack.line.webhook.unfollow(user, url=stack.webhook_url)

    left = await stack.wait_fact(F.CASE_STUDENT_LEFT, case_id=case["_id"])
    assert left["data"]["emergency_ids"] == [emergency_id]
    assert left["data"]["case_state"] == "active"
    await wait_until(lambda: _departure_mails(stack)[mails_before:], message="the mail")
    stored = await stack.store.db[CASES].find_one({"_id": case["_id"]})
    assert stored["departure"]["emergency_ids"] == [emergency_id]
