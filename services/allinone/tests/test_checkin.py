"""The check-in after a talk (issue 4), end to end: a counselor closes a case in the console,
the student gets one short question with quick replies at the fake LINE platform (never in the
quiet hours, never after writing again or blocking), and the answer is kept with the case, shown
in the console and counted in the month's report."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, time, timedelta
from typing import Any

import pytest
from soudan_allinone.testing import Stack
from soudan_console.testing import Browserless, reply_form_id
from soudan_fakeline import new_user_id
from soudan_reporting.build import build_month
from soudan_reporting.month import Month
from soudan_shared import fact_types as F
from soudan_shared.records import CASES
from soudan_shared.testing.waiting import wait_until
from soudan_triage.app import TIMERS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

QUESTION = "話してみて、どうだったかな？"


@pytest.fixture(scope="module", autouse=True)
def quick_sweeps() -> Iterator[None]:
    """Triage sweeps for due check-ins every 0.3 s instead of every 30 s (set before the
    stack starts)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRIAGE_TIMERS_INTERVAL", "0.3")
        yield


def _jst(stack: Stack, moment: datetime, clock: time, *, days: int = 0) -> datetime:
    day = moment.astimezone(stack.hours.tz).date() + timedelta(days=days)
    return datetime.combine(day, clock, stack.hours.tz)


async def _talk_and_close(stack: Stack, user: str, *, close_at: datetime | None = None) -> str:
    """The student writes in hours; a counselor takes the case, answers and closes it (at
    ``close_at`` on the stack's clock, if given). The case id."""
    await stack.line.webhook.text(user, "友だちとけんかしちゃった", url=stack.webhook_url)
    case = await wait_until(
        lambda: stack.store.db[CASES].find_one({"user_id": user}), message="the case"
    )
    staff = await stack.console.add_staff("counselor")
    session = Browserless(stack.console.url)
    try:
        await session.login(staff.email)
        _, _, page = await session.post(f"/cases/{case['_id']}/claim")
        await session.post(
            f"/cases/{case['_id']}/reply",
            {"text": "話してくれてありがとう。", "command_id": reply_form_id(page)},
        )
        if close_at is not None:
            stack.at(close_at)
        _, where, _ = await session.post(
            f"/cases/{case['_id']}/close", {"categories": ["friendships"], "outcome": "resolved"}
        )
        assert where.startswith("/queue")
    finally:
        await session.close()
    return str(case["_id"])


def _checkins(stack: Stack, user: str) -> list[dict[str, Any]]:
    """The check-in questions ``user`` received at the fake LINE platform (message objects)."""
    return [d.message for d in stack.line.fake.received(user) if QUESTION in (d.text or "")]


async def _swept(stack: Stack) -> None:
    """One whole sweep of triage's timers at the stack's current time."""
    timers = stack.apps["triage"][TIMERS]

    async def swept() -> bool:
        return await timers.run_once() is not None

    await wait_until(swept, message="a sweep of the timers")


async def _checkin_state(stack: Stack, case_id: str) -> dict[str, Any]:
    doc = await stack.store.db[CASES].find_one({"_id": case_id})
    assert doc is not None
    checkin: dict[str, Any] = doc["checkin"]
    return checkin


async def test_a_closed_case_gets_one_checkin_and_the_answer_is_kept_shown_and_counted_once(
    stack: Stack,
) -> None:
    stack.at(_jst(stack, stack.open_moment(), time(18, 0)))
    user = new_user_id()
    case_id = await _talk_and_close(stack, user)

    (question,) = await wait_until(lambda: _checkins(stack, user), message="the check-in")
    items = question["quickReply"]["items"]
    assert [i["action"]["label"] for i in items] == ["話してよかった", "ふつう", "よくなかった"]
    assert all(i["action"]["type"] == "postback" for i in items)
    good = items[0]["action"]["data"]
    assert case_id in good
    await stack.wait_fact(F.CHECKIN_SENT, case_id=case_id)

    await stack.line.webhook.postback(user, good, url=stack.webhook_url)
    taps = [
        await stack.line.webhook.postback(user, good, url=stack.webhook_url),  # tapped twice
        await stack.line.webhook.postback(user, items[2]["action"]["data"], url=stack.webhook_url),
    ]
    later = {e["webhookEventId"] for tap in taps for e in tap.events}

    thanks = await wait_until(
        lambda: [t for t in stack.line.fake.texts(user) if t.startswith("教えてくれてありがとう")],
        message="the thanks",
    )
    checkin = await wait_until(
        lambda: _answered(stack, case_id), message="the answer stored with the case"
    )
    assert (checkin["answer"], checkin["answer_label"]) == ("good", "話してよかった")
    ignored = await wait_until(
        lambda: _ignored(stack, later), message="the second and third taps recorded as ignored"
    )
    assert {f["data"]["reason"] for f in ignored} == {"checkin_already_answered"}
    assert len(await stack.wait_facts(F.CHECKIN_ANSWERED, 1, case_id=case_id)) == 1
    assert len(thanks) == 1
    assert len(_checkins(stack, user)) == 1

    supervisor = await stack.console.add_staff("supervisor")
    session = Browserless(stack.console.url)
    try:
        await session.login(supervisor.email)
        status, _, page = await session.get(f"/cases/{case_id}")
    finally:
        await session.close()
    assert status == 200
    assert re.search(r'id="checkin">終わったあとの問いかけ: <strong>話してよかった</strong>', page)

    month = Month.parse(f"{stack.now().astimezone(stack.hours.tz):%Y-%m}")
    built = await build_month(stack.store.db, month, stack.reporting_settings)
    assert built.figures.checkin_answers.get("good") == len(
        await stack.facts(F.CHECKIN_ANSWERED, choice="good")
    )
    tables = {t.title: t for section in built.report.sections for t in section.tables}
    rows = {row[0]: row[1] for row in tables["終わったあとの問いかけへの答え"].rows}
    assert rows["話してよかった"] == built.figures.checkin_answers["good"] >= 1
    assert rows["よくなかった"] == built.figures.checkin_answers.get("bad", 0)
    assert built.xlsx.exists()
    assert built.pdf.exists()


async def _answered(stack: Stack, case_id: str) -> dict[str, Any] | None:
    checkin = await _checkin_state(stack, case_id)
    return checkin if checkin.get("answer") else None


async def _ignored(stack: Stack, event_ids: set[str]) -> list[dict[str, Any]] | None:
    facts = [
        f
        for f in await stack.facts(F.LINE_EVENT_IGNORED, event_type="postback")
        if f["data"]["webhook_event_id"] in event_ids
    ]
    return facts if len(facts) == len(event_ids) else None


async def test_a_close_in_the_quiet_hours_sends_the_checkin_the_next_morning(stack: Stack) -> None:
    evening = _jst(stack, stack.open_moment(), time(20, 0))
    stack.at(evening)
    user = new_user_id()
    case_id = await _talk_and_close(stack, user, close_at=_jst(stack, evening, time(23, 0)))

    await _swept(stack)
    stack.at(_jst(stack, evening, time(7, 0), days=1))  # still in the quiet hours
    await _swept(stack)
    assert _checkins(stack, user) == []
    assert (await _checkin_state(stack, case_id))["state"] == "pending"

    stack.at(_jst(stack, evening, time(7, 45), days=1))
    await wait_until(lambda: _checkins(stack, user), message="the morning's check-in")

    async def marked_sent() -> bool:  # marked once its command is published: may trail the text
        return (await _checkin_state(stack, case_id))["state"] == "sent"

    await wait_until(marked_sent, message="the check-in marked sent")


async def test_no_checkin_after_a_night_close_when_the_student_wrote_again_or_blocked(
    stack: Stack,
) -> None:
    evening = _jst(stack, stack.open_moment(), time(20, 0))
    stack.at(evening)
    wrote, blocked = new_user_id(), new_user_id()
    wrote_case = await _talk_and_close(stack, wrote, close_at=_jst(stack, evening, time(23, 0)))
    # (this student writes at 23:00, out of hours; the case waits and a counselor takes it)
    blocked_case = await _talk_and_close(stack, blocked, close_at=_jst(stack, evening, time(23, 5)))
    stack.at(_jst(stack, evening, time(23, 30)))
    await stack.line.webhook.text(wrote, "ねむれない", url=stack.webhook_url)
    await stack.line.webhook.unfollow(blocked, url=stack.webhook_url)
    await wait_until(lambda: _user_blocked(stack, blocked), message="the block recorded by triage")
    await wait_until(lambda: _cases_of(stack, wrote, 2), message="the new case")

    stack.at(_jst(stack, evening, time(8, 0), days=1))
    await stack.wait_fact(F.CHECKIN_SKIPPED, case_id=wrote_case, reason="wrote_again")
    await stack.wait_fact(F.CHECKIN_SKIPPED, case_id=blocked_case, reason="blocked")
    assert _checkins(stack, wrote) == []
    assert _checkins(stack, blocked) == []
    assert (await _checkin_state(stack, wrote_case))["skipped"] == "wrote_again"


async def _user_blocked(stack: Stack, user: str) -> bool:
    doc = await stack.store.db["users"].find_one({"_id": user})
    return doc is not None and doc.get("registered") is False


async def _cases_of(stack: Stack, user: str, n: int) -> bool:
    return await stack.store.db[CASES].count_documents({"user_id": user}) >= n
