"""既読 and "入力中…" end to end: signed webhooks in, a counselor at the console in a real
browser, the student's chat at the fake LINE platform; checked there, in the store and in the
facts reporting recorded.

- The student's messages show 既読 when, and only when, a counselor has read them: on opening
  the case, and when a new one appears on the open case page; an automatic reply never marks
  anything read.
- The student sees LINE's loading animation while the counselor types a reply, not while the
  counselor only reads; the reply that follows ends it.
- Neither counts against the month's messages.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from soudan_allinone.testing import Stack
from soudan_console.testing import login
from soudan_fakeline import new_user_id
from soudan_shared import fact_types as F
from soudan_shared.records import CASES, MESSAGES, READ_TOKEN
from soudan_shared.testing.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


async def _case(stack: Stack, user: str) -> dict[str, Any]:
    case: dict[str, Any] = await wait_until(
        lambda: stack.store.db[CASES].find_one({"user_id": user}), message="the user's case"
    )
    return case


async def _stored(stack: Stack, user: str, n: int) -> list[dict[str, Any]]:
    async def enough() -> list[dict[str, Any]] | None:
        docs = (
            await stack.store.db[MESSAGES]
            .find({"user_id": user, "direction": "in"})
            .sort("at", 1)
            .to_list()
        )
        return docs if len(docs) >= n else None

    docs: list[dict[str, Any]] = await wait_until(enough, message=f"{n} stored message(s)")
    return docs


def _read(stack: Stack, user: str) -> list[bool]:
    return [m.read_at is not None for m in stack.line.fake.sent_by(user)]


async def test_an_automatic_reply_marks_nothing_read(stack: Stack) -> None:
    stack.at(stack.closed_moment())
    user = new_user_id()
    await stack.line.webhook.text(user, "ねむれない", url=stack.webhook_url)
    await stack.wait_fact(F.REPLY_SENT, user_id=user, purpose="out_of_hours")
    assert stack.line.fake.texts(user)  # answered, automatically
    (stored,) = await _stored(stack, user, 1)
    assert stored[READ_TOKEN]  # kept for a counselor's reading, later
    assert stored.get("read_at") is None
    await asyncio.sleep(1)
    assert _read(stack, user) == [False]
    assert await stack.facts(F.LINE_READ_MARKED, user_id=user) == []


async def test_the_students_messages_show_read_once_a_counselor_opens_the_case_and_sees_more(
    stack: Stack, new_page: Any
) -> None:
    stack.at(stack.open_moment())
    user = new_user_id()
    for text in ("相談したいことがあります", "学校のことです"):
        await stack.line.webhook.text(user, text, url=stack.webhook_url)
    case = await _case(stack, user)
    await _stored(stack, user, 2)
    await asyncio.sleep(1)
    assert _read(stack, user) == [False, False]  # nobody has read them yet

    counselor = await stack.console.add_staff("counselor")
    page = await new_page()
    await login(page, stack.console.url, counselor.email)
    await page.goto(f"{stack.console.url}/queue")
    await page.click(f"tr[data-case-id='{case['_id']}'] button.claim")
    await page.wait_for_url("**?msg=claimed")
    await page.wait_for_selector("body[data-live-state=open]")

    await wait_until(lambda: _read(stack, user) == [True, True], message="既読 at LINE")
    opened = await stack.wait_fact(F.LINE_READ_MARKED, user_id=user, case_id=case["_id"])
    assert opened["data"]["staff_id"] == counselor.id
    assert opened["data"]["marked"] == 2
    for doc in await _stored(stack, user, 2):
        assert doc["read_at"] is not None
        assert READ_TOKEN not in doc

    # The student writes again while the counselor has the conversation open.
    await stack.line.webhook.text(user, "いじめられています", url=stack.webhook_url)
    await page.locator(".msg.in .bubble", has_text="いじめられています").wait_for()
    await wait_until(lambda: _read(stack, user) == [True, True, True], message="the new one 既読")
    third = (await _stored(stack, user, 3))[-1]
    # LINE shows it read first; dispatch records it, then says so in the fact.
    await stack.wait_fact(F.LINE_READ_MARKED, message_id=third["_id"], staff_id=counselor.id)
    third = (await _stored(stack, user, 3))[-1]
    assert third["read_at"] is not None
    assert [r.status for r in stack.line.fake.requests_to("mark_as_read")][-2:] == [200, 200]


async def test_the_student_sees_the_typing_animation_while_the_counselor_types_a_reply(
    stack: Stack, new_page: Any
) -> None:
    stack.at(stack.open_moment())
    user = new_user_id()
    await stack.line.webhook.text(user, "だれか話を聞いてくれますか", url=stack.webhook_url)
    case = await _case(stack, user)
    used_before = stack.line.fake.consumption
    counselor = await stack.console.add_staff("counselor")
    page = await new_page()
    await login(page, stack.console.url, counselor.email)
    await page.goto(f"{stack.console.url}/queue")
    await page.click(f"tr[data-case-id='{case['_id']}'] button.claim")
    await page.wait_for_url("**?msg=claimed")
    await wait_until(lambda: _read(stack, user) == [True], message="既読 at LINE")

    await page.click("#text-0")  # only reading, and the cursor in the box: nothing yet
    await asyncio.sleep(1.5)
    assert stack.line.fake.loadings_of(user) == []

    await page.keyboard.type("聞かせてください。", delay=80)
    await wait_until(lambda: stack.line.fake.loading_shown(user), message="入力中… at LINE")
    (shown,) = stack.line.fake.loadings_of(user)
    assert shown.seconds == 10
    started = await stack.wait_fact(F.LINE_LOADING_STARTED, user_id=user)
    assert (started["data"]["case_id"], started["data"]["staff_id"]) == (case["_id"], counselor.id)

    await page.click("#send")
    await page.wait_for_url("**?msg=sending")
    await wait_until(lambda: "聞かせてください。" in stack.line.fake.texts(user), message="reply")
    assert not stack.line.fake.loading_shown(user)  # the reply ended it
    assert len(stack.line.fake.loadings_of(user)) == 1
    # Read marks and the animation are free: only messages count against the month.
    assert stack.line.fake.consumption - used_before == sum(
        1 for d in stack.line.fake.received(user) if d.method == "push"
    )
