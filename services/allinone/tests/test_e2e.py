"""The whole service end to end (issue 8): signed webhooks in, the fake LINE platform out.

Every scenario has its own students and checks three places: what the fake LINE platform
delivered, what the store holds, and the facts the reporting recorder wrote to ``events``.
They share one stack (``stack``, module scope); the last one builds the month's report and
finds in it what the scenarios before it produced.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from typing import Any

import pytest
from soudan_allinone.testing import Stack
from soudan_console.domain import EMERGENCIES, STAFF
from soudan_console.testing import Browserless, login, reply_form_id
from soudan_fakeline import new_user_id
from soudan_reporting.build import build_month
from soudan_reporting.month import Month
from soudan_shared import fact_types as F
from soudan_shared.records import CASES, MESSAGES, USERS, incoming_message_id
from soudan_shared.testing.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

HELP_LINE = "0120-0-78310"


async def _case(stack: Stack, user: str) -> dict[str, Any]:
    case: dict[str, Any] = await wait_until(
        lambda: stack.store.db[CASES].find_one({"user_id": user}), message="the user's case"
    )
    return case


async def _texts(stack: Stack, user: str, n: int) -> list[str]:
    await wait_until(
        lambda: len(stack.line.fake.texts(user)) >= n, message=f"{n} text(s) at fake LINE"
    )
    return stack.line.fake.texts(user)


async def _counselor(stack: Stack, role: str = "counselor") -> tuple[Any, Browserless]:
    staff = await stack.console.add_staff(role)
    session = Browserless(stack.console.url)
    status, _, _ = await session.login(staff.email)
    assert status == 200
    return staff, session


# -- 1 --------------------------------------------------------------------------------------


async def test_a_follower_is_greeted_with_the_policy_and_a_sapporo_city_student_is_answered_too(
    stack: Stack,
) -> None:
    stack.at(stack.open_moment())
    student, sapporo = new_user_id(), new_user_id()
    for user in (student, sapporo):
        assert (await stack.line.webhook.follow(user, url=stack.webhook_url)).status == 200

    greeting = await _texts(stack, student, 4)
    assert "運用ポリシー" in greeting[1]
    assert "学校" in greeting[-1]
    (delivered,) = [d for d in stack.line.fake.received(student) if d.message.get("quickReply")]
    choices = [i["action"]["data"] for i in delivered.message["quickReply"]["items"]]
    assert "school_type=public_high" in choices
    assert "school_type=sapporo_city" in choices

    await stack.line.webhook.postback(student, "school_type=public_high", url=stack.webhook_url)
    await stack.line.webhook.postback(sapporo, "school_type=sapporo_city", url=stack.webhook_url)
    await _texts(stack, sapporo, 5)
    await stack.line.webhook.text(sapporo, "はなしをきいてほしい", url=stack.webhook_url)

    case = await _case(stack, sapporo)
    assert case["out_of_scope"] is True
    assert case["school_type"] == "sapporo_city"
    user = await stack.store.db[USERS].find_one({"_id": sapporo})
    assert (user["registered"], user["eligible"]) == (True, False)
    assert "ひとりでかかえこまないで" in stack.line.fake.texts(sapporo)[4]
    await stack.wait_fact(F.LINE_FOLLOWED, user_id=student)
    await stack.wait_fact(F.SCHOOL_TYPE_SET, user_id=student, eligible=True)
    await stack.wait_fact(F.SCHOOL_TYPE_SET, user_id=sapporo, eligible=False)
    await stack.wait_fact(F.CASE_OPENED, user_id=sapporo, out_of_scope=True)
    await stack.wait_fact(F.REPLY_SENT, user_id=student, purpose="greeting", method="reply")


# -- 2 --------------------------------------------------------------------------------------


async def test_outside_hours_the_reply_token_carries_the_next_opening_and_urgent_gets_help_lines(
    stack: Stack,
) -> None:
    night = stack.closed_moment()
    stack.at(night)
    sleepless, urgent = new_user_id(), new_user_id()
    await stack.line.webhook.text(sleepless, "ねむれない", url=stack.webhook_url)
    await stack.line.webhook.text(urgent, "もう　しにたい", url=stack.webhook_url)

    (reply,) = await _texts(stack, sleepless, 1)
    opening = stack.hours.next_open(night)
    assert opening is not None
    assert f"{opening.month}月{opening.day}日" in reply
    assert f"{opening:%H:%M}" in reply
    assert {d.method for d in stack.line.fake.received(sleepless)} == {"reply"}
    (help_lines,) = await _texts(stack, urgent, 1)
    assert HELP_LINE in help_lines
    assert {d.method for d in stack.line.fake.received(urgent)} == {"reply"}

    case = await _case(stack, urgent)
    assert case["urgent"] is True
    assert case["opened_in_hours"] is False
    await stack.wait_fact(F.CASE_FLAGGED_URGENT, user_id=urgent, in_hours=False)
    await stack.wait_fact(F.REPLY_SENT, user_id=sleepless, purpose="out_of_hours", method="reply")
    await stack.wait_fact(
        F.REPLY_SENT, user_id=urgent, purpose="urgent_out_of_hours", method="reply"
    )


# -- 3 --------------------------------------------------------------------------------------


async def test_in_hours_the_urgent_case_tops_the_queue_and_a_counselor_answers_and_closes_it(
    stack: Stack,
) -> None:
    stack.at(stack.open_moment())
    calm, urgent = new_user_id(), new_user_id()
    await stack.line.webhook.text(calm, "進路のことで相談です", url=stack.webhook_url)
    calm_case = await _case(stack, calm)
    await stack.line.webhook.text(urgent, "いじめられてる", url=stack.webhook_url)
    urgent_case = await _case(stack, urgent)
    assert urgent_case["urgent"] is True
    assert calm_case["urgent"] is False

    staff, session = await _counselor(stack)
    try:
        status, _, queue = await session.get("/queue/fragment")
        assert status == 200
        assert queue.index(f'data-case-id="{urgent_case["_id"]}"') < queue.index(
            f'data-case-id="{calm_case["_id"]}"'
        )
        case_id = urgent_case["_id"]
        status, where, page = await session.post(f"/cases/{case_id}/claim")
        assert (status, where) == (200, f"/cases/{case_id}?msg=claimed")
        text = "話してくれてありがとう。相談員の佐藤です。"
        status, where, _ = await session.post(
            f"/cases/{case_id}/reply", {"text": text, "command_id": reply_form_id(page)}
        )
        assert where == f"/cases/{case_id}?msg=sending"
        texts = await wait_until(
            lambda: [t for t in stack.line.fake.texts(urgent) if "佐藤" in t],
            message="the counselor's reply at fake LINE",
        )
        assert texts == ["話してくれてありがとう。相談員の佐藤です。"]
        status, where, _ = await session.post(
            f"/cases/{case_id}/close", {"categories": ["bullying"], "outcome": "resolved"}
        )
        assert where.startswith("/queue")
    finally:
        await session.close()

    closed = await stack.store.db[CASES].find_one({"_id": case_id})
    assert closed["state"] == "closed"
    await stack.wait_fact(F.CASE_CLAIMED, case_id=case_id, staff_id=staff.id)
    # answered at once: by the student's reply token (free)
    await stack.wait_fact(F.REPLY_SENT, case_id=case_id, staff_id=staff.id, method="reply")
    await stack.wait_fact(F.CASE_CLOSED, case_id=case_id, category="bullying", urgent=True)


# -- 5 --------------------------------------------------------------------------------------


async def test_an_image_and_a_sticker_get_the_text_only_reply_and_nothing_is_downloaded(
    stack: Stack,
) -> None:
    stack.at(stack.open_moment())
    user = new_user_id()
    await stack.line.webhook.media(user, "image", url=stack.webhook_url)
    await stack.line.webhook.media(user, "sticker", url=stack.webhook_url)

    await stack.wait_fact(F.MEDIA_REFUSED, user_id=user, kind="sticker")
    (reply,) = await _texts(stack, user, 1)
    assert "文字" in reply
    assert stack.seen.paths, "the fake records the paths it is asked for"
    assert not [p for p in stack.seen.paths if p.endswith("/content")]
    assert await stack.store.db[MESSAGES].count_documents({"user_id": user, "direction": "in"}) == 0
    await stack.wait_fact(F.MEDIA_REFUSED, user_id=user, kind="image", replied=True)
    assert len(await stack.wait_facts(F.REPLY_SENT, 1, user_id=user)) == 1


# -- 6 --------------------------------------------------------------------------------------


async def test_an_unsent_message_disappears_from_the_console(stack: Stack) -> None:
    stack.at(stack.open_moment())
    user = new_user_id()
    kept, regretted = "きいてください", "やっぱり名前は山田です"
    await stack.line.webhook.text(user, kept, url=stack.webhook_url)
    sent = await stack.line.webhook.text(user, regretted, url=stack.webhook_url)
    case = await _case(stack, user)
    _, session = await _counselor(stack)
    try:
        page = await wait_until(
            lambda: _page_with(session, f"/cases/{case['_id']}", regretted),
            message="both messages in the console",
        )
        assert kept in page
        message_id = sent.events[0]["message"]["id"]
        await stack.line.webhook.send(
            [stack.line.webhook.unsend_event(user, message_id)], url=stack.webhook_url
        )
        await stack.wait_fact(
            F.MESSAGE_UNSENT, user_id=user, message_id=incoming_message_id(message_id)
        )
        _, _, page = await session.get(f"/cases/{case['_id']}")
    finally:
        await session.close()
    assert kept in page
    assert regretted not in page
    stored = await (
        stack.store.db[MESSAGES].find({"case_id": case["_id"], "direction": "in"}).to_list()
    )
    assert [m.get("text") for m in stored if m.get("text")] == [kept]


async def _page_with(session: Browserless, path: str, text: str) -> str | None:
    _, _, page = await session.get(path)
    return page if text in page else None


# -- 4 --------------------------------------------------------------------------------------


async def test_when_congested_a_case_gets_the_congestion_reply_once(stack: Stack) -> None:
    stack.at(stack.open_moment())
    first = new_user_id()
    await stack.line.webhook.text(first, "相談があります", url=stack.webhook_url)
    await _case(stack, first)
    shipped = (stack.config_dir / "congestion.yaml").read_text(encoding="utf-8")
    lowered = shipped.replace("max_waiting_cases: 20", "max_waiting_cases: 1")
    assert lowered != shipped
    _, session = await _counselor(stack, "admin")
    try:
        await session.get("/admin/settings/congestion")
        _, where, _ = await session.post("/admin/settings/congestion", {"text": lowered})
        assert where.endswith("msg=saved")
        await stack.wait_fact(F.SETTINGS_CHANGED, what="config.congestion")
        late = new_user_id()
        for text in ("きいて", "まだかな", "だれかいますか"):
            await stack.line.webhook.text(late, text, url=stack.webhook_url)
        await wait_until(lambda: _stored(stack, late, 3), message="three messages stored")
    finally:
        await session.post("/admin/settings/congestion/reset")
        await session.close()

    (reply,) = await _texts(stack, late, 1)
    assert "混み合って" in reply
    case = await _case(stack, late)
    assert case["congestion_replied"] is True
    decided = await stack.wait_facts(F.AUTO_REPLY_DECIDED, 1, user_id=late)
    assert [f["data"]["purpose"] for f in decided] == ["congestion"]
    await stack.wait_fact(F.REPLY_SENT, user_id=late, purpose="congestion")
    measured = await stack.facts(F.CONGESTION_MEASURED, congested=True)
    assert measured


async def _stored(stack: Stack, user: str, n: int) -> bool:
    return await stack.store.db[MESSAGES].count_documents({"user_id": user, "direction": "in"}) == n


# -- 7 --------------------------------------------------------------------------------------


async def test_an_emergency_alerts_supervisors_mails_the_section_and_logs_the_contacts(
    stack: Stack,
) -> None:
    stack.at(stack.open_moment())
    user = new_user_id()
    await stack.line.webhook.text(user, "親に殴られる", url=stack.webhook_url)
    case = await _case(stack, user)
    _, watching = await _counselor(stack, "supervisor")
    counselor, session = await _counselor(stack)
    async with watching.http.get(f"{stack.console.url}/events") as live:
        assert live.status == 200
        await live.content.readline()  # the stream is open: retry: …
        try:
            _, where, _ = await session.post(
                f"/cases/{case['_id']}/emergency", {"type": "child_abuse"}
            )
            assert where.startswith("/emergencies/")
            emergency_id = where.split("/")[2].split("?")[0]
            alert = await wait_until(
                lambda: _sse_event(live, "emergency"), timeout=10, message="live alert"
            )
            assert emergency_id in alert
            notified = await stack.wait_fact(
                F.EMERGENCY_NOTIFIED, emergency_id=emergency_id, channel="live"
            )
            assert notified["data"]["recipients"] >= 1
            _, where, _ = await session.post(
                f"/emergencies/{emergency_id}/contacts",
                {"agency": "児童相談所虐待対応ダイヤル", "result": "referred", "memo": "通告済み"},
            )
            assert where.endswith("msg=contact_recorded")
        finally:
            await session.close()
    await watching.close()

    await stack.wait_fact(
        F.EMERGENCY_RAISED, emergency_id=emergency_id, type="child_abuse", staff_id=counselor.id
    )
    await stack.wait_fact(
        F.EMERGENCY_CONTACT, emergency_id=emergency_id, agency="児童相談所虐待対応ダイヤル"
    )
    await stack.wait_fact(F.EMERGENCY_NOTIFIED, emergency_id=emergency_id, channel="email")
    mails = [m for m in stack.inbox.messages if "緊急" in str(m["Subject"])]
    assert len(mails) == 1
    assert mails[0]["To"] == "section@example.jp"


async def _sse_event(stream: Any, name: str) -> str | None:
    """The data of the next ``name`` event on an SSE stream (None at another event)."""
    try:
        line = (await asyncio.wait_for(stream.content.readline(), 1)).decode()
    except TimeoutError:
        return None
    if line.strip() != f"event: {name}":
        return None
    return (await stream.content.readline()).decode()


# -- 8 --------------------------------------------------------------------------------------


async def test_a_broadcast_reaches_every_registered_user_once(stack: Stack) -> None:
    stack.at(stack.open_moment())
    newcomers = [new_user_id() for _ in range(3)]
    for user in newcomers:
        await stack.line.webhook.follow(user, url=stack.webhook_url)
    for user in newcomers:
        await _texts(stack, user, 4)  # the greeting
    registered = {
        u["_id"] for u in await stack.store.db[USERS].find({"registered": True}).to_list()
    }
    assert set(newcomers) <= registered

    admin, session = await _counselor(stack, "admin")
    try:
        await session.get("/admin/broadcasts")
        choices = {"template": "open_now", "audience": "registered", "when": "now"}
        _, _, page = await session.post("/admin/broadcasts/preview", choices)
        assert f'<strong class="confirm-count">{len(registered)}人</strong>' in page
        token = re.search(r'name="token" value="([^"]+)"', page)
        assert token is not None
        _, where, _ = await session.post("/admin/broadcasts", {**choices, "token": token[1]})
        assert where.endswith("msg=broadcast_requested")
    finally:
        await session.close()

    finished = await stack.wait_fact(F.BROADCAST_FINISHED)
    assert finished["data"]["recipients"] == len(registered)
    sent = [d.user_id for d in stack.line.fake.deliveries if d.method in ("multicast", "broadcast")]
    assert sorted(sent) == sorted(registered)
    await stack.wait_fact(F.BROADCAST_REQUESTED, staff_id=admin.id, audience="registered")


# -- the counselor's reply in a real browser (moved here from the console's tests) -----------


async def test_a_reply_typed_in_the_console_arrives_at_the_fake_line_platform(
    stack: Stack, new_page: Any
) -> None:
    stack.at(stack.open_moment())
    user = new_user_id()
    await stack.line.webhook.text(
        user, "こんばんは。相談したいことがあります。", url=stack.webhook_url
    )
    case = await _case(stack, user)
    counselor = await stack.console.add_staff("counselor")
    page = await new_page()
    await login(page, stack.console.url, counselor.email)
    await page.goto(f"{stack.console.url}/queue")
    await page.click(f"tr[data-case-id='{case['_id']}'] button.claim")
    await page.wait_for_url("**?msg=claimed")
    await page.fill("#text-0", "メッセージをありがとう。相談員の佐藤です。")
    await page.click("#send")
    await page.wait_for_url("**?msg=sending")
    await wait_until(
        lambda: "メッセージをありがとう。相談員の佐藤です。" in stack.line.fake.texts(user),
        message="text at fake LINE",
    )
    await stack.wait_fact(F.REPLY_SENT, case_id=case["_id"], staff_id=counselor.id)


async def test_a_student_who_answers_the_school_question_after_writing_is_out_of_scope(
    stack: Stack,
) -> None:
    stack.at(stack.open_moment())
    late = new_user_id()
    await stack.line.webhook.text(late, "きいてほしいことがあります", url=stack.webhook_url)
    case = await _case(stack, late)
    assert case["out_of_scope"] is False
    await stack.line.webhook.postback(late, "school_type=sapporo_city", url=stack.webhook_url)
    await stack.wait_fact(F.SCHOOL_TYPE_SET, user_id=late, eligible=False)
    answered = await wait_until(
        lambda: stack.store.db[CASES].find_one({"_id": case["_id"], "out_of_scope": True}),
        message="the open case marked 対象外",
    )
    assert answered["school_type"] == "sapporo_city"


# -- the month's LINE budget (issue 20) --------------------------------------------------------


async def _answer(session: Browserless, case_id: str, text: str) -> None:
    status, _, page = await session.get(f"/cases/{case_id}")
    assert status == 200
    _, where, _ = await session.post(
        f"/cases/{case_id}/reply", {"text": text, "command_id": reply_form_id(page)}
    )
    assert where == f"/cases/{case_id}?msg=sending"


async def _delivery(stack: Stack, case_id: str, text: str) -> str | None:
    doc = await stack.store.db[MESSAGES].find_one({"case_id": case_id, "text": text})
    return None if doc is None else doc.get("delivery")


async def test_a_counselor_answering_within_the_reply_tokens_window_sends_a_free_reply(
    stack: Stack,
) -> None:
    stack.at(stack.open_moment())
    user = new_user_id()
    await stack.line.webhook.text(user, "話をきいてほしいです", url=stack.webhook_url)
    case = await _case(stack, user)
    staff, session = await _counselor(stack)
    try:
        _, where, _ = await session.post(f"/cases/{case['_id']}/claim")
        assert where == f"/cases/{case['_id']}?msg=claimed"
        await stack.line.webhook.text(user, "いま大丈夫ですか", url=stack.webhook_url)
        await wait_until(lambda: _stored(stack, user, 2), message="the second message stored")
        used = stack.line.fake.consumption
        stack.later(20)  # the counselor answers 20 s after the student's message
        await _answer(session, case["_id"], "だいじょうぶだよ。相談員の田中です。")
        await stack.wait_fact(F.REPLY_SENT, staff_id=staff.id, method="reply")
        assert stack.line.fake.consumption == used  # a reply is not counted
        assert await _delivery(stack, case["_id"], "だいじょうぶだよ。相談員の田中です。") == "sent"

        # The student writes again; this time the answer comes after the token's window.
        await stack.line.webhook.text(user, "学校のことです", url=stack.webhook_url)
        await wait_until(lambda: _stored(stack, user, 3), message="the third message stored")
        stack.later(90)
        await _answer(session, case["_id"], "学校のことだね。")
        await stack.wait_fact(F.REPLY_SENT, staff_id=staff.id, method="push")
        assert stack.line.fake.consumption == used + 1
        assert await _delivery(stack, case["_id"], "学校のことだね。") == "sent"
    finally:
        await session.close()
    counselor = [
        (d.method, d.text)
        for d in stack.line.fake.received(user)
        if d.text in ("だいじょうぶだよ。相談員の田中です。", "学校のことだね。")
    ]
    assert counselor == [
        ("reply", "だいじょうぶだよ。相談員の田中です。"),
        ("push", "学校のことだね。"),
    ]


async def test_an_exhausted_month_shows_the_reason_on_the_reply_and_alerts_supervisors_once(
    stack: Stack,
) -> None:
    stack.at(stack.open_moment())
    fake = stack.line.fake
    user = new_user_id()
    await stack.line.webhook.text(user, "ちょっと聞いてほしい", url=stack.webhook_url)
    case = await _case(stack, user)
    supervisor = await stack.console.add_staff("supervisor")
    _, session = await _counselor(stack)
    spent_mail = "【相談窓口】今月のLINEの通数がなくなりました"
    fake.quota_limit = fake.consumption  # nothing left this month
    try:
        await session.post(f"/cases/{case['_id']}/claim")
        stack.later(120)  # past the token's window: these go by push, and LINE refuses them
        for text in ("まだいますか？", "お返事を待っています。"):
            await _answer(session, case["_id"], text)
            doc = await wait_until(
                lambda t=text: stack.store.db[MESSAGES].find_one({"text": t, "delivery": "failed"}),
                message="the reply marked failed",
            )
            assert doc["delivery_problem"] == "monthly_limit"
        _, _, page = await session.get(f"/cases/{case['_id']}")
        assert "今月にLINEで送れるメッセージの数が上限に達したため、送れませんでした。" in page
        assert "今月のLINEの通数がなくなりました" in page
        assert "0120-0-78310" in page

        def spent_mails() -> list[Any]:
            return [m for m in stack.inbox.messages if m["Subject"] == spent_mail]

        await wait_until(spent_mails, message="the supervisors' mail")
        mails = spent_mails()
        assert len(mails) == 1  # two refusals, one alert this month
        assert supervisor.email in str(mails[0]["To"])

        # The student writes again: within the token's window the failed reply goes, free.
        await stack.line.webhook.text(user, "いるよ", url=stack.webhook_url)
        await wait_until(lambda: _stored(stack, user, 2), message="the student's new message")
        stack.later(15)
        doc = await stack.store.db[MESSAGES].find_one({"text": "まだいますか？"})
        retry = f"/cases/{case['_id']}/replies/{doc['command_id']}/retry"
        _, where, _ = await session.post(retry)
        assert where.startswith(f"/cases/{case['_id']}")
        await stack.wait_fact(F.REPLY_SENT, command_id=doc["command_id"], method="reply")
        assert await _delivery(stack, case["_id"], "まだいますか？") == "sent"
        assert "まだいますか？" in fake.texts(user)
    finally:
        fake.quota_limit = None
        await session.close()


# -- 9 --------------------------------------------------------------------------------------


async def test_the_months_report_counts_what_the_scenarios_did(stack: Stack) -> None:
    """Figures from the event log agree with the store the scenarios left behind."""
    month = Month.parse(f"{stack.open_moment():%Y-%m}")
    db = stack.store.db
    cases = await db[CASES].find({}).to_list()
    assert len(cases) >= 6, "run with the scenarios before it"
    emergencies = await db[EMERGENCIES].find({}).to_list()
    await wait_until(lambda: _recorded(stack, F.CASE_OPENED, len(cases)), message="all recorded")

    built = await build_month(db, month, stack.reporting_settings)

    figures = built.figures
    assert figures.cases_opened == len(cases)
    # two 対象外: one answered before writing, one after (scenario 1 and the one above)
    assert figures.cases_out_of_scope == len([c for c in cases if c["out_of_scope"]]) == 2
    assert figures.opened_by_school == dict(Counter(c.get("school_type") or "" for c in cases))
    assert figures.cases_in_hours == len([c for c in cases if c["opened_in_hours"]])
    assert figures.cases_closed == len([c for c in cases if c["state"] == "closed"])
    assert figures.closed_by_category == {"bullying": 1}
    assert figures.urgent_cases == len([c for c in cases if c["urgent"]])
    assert figures.urgent_out_of_hours == 1
    assert figures.followed_new == 5  # two in the first scenario, three before the broadcast
    assert figures.emergencies_by_type == {"child_abuse": len(emergencies)} == {"child_abuse": 1}
    assert sum(figures.emergency_contacts.values()) == 1
    counselor_texts = await db[MESSAGES].count_documents(
        {"purpose": "counselor_reply", "delivery": "sent"}
    )
    assert figures.messages_out_counselor == counselor_texts
    # the month's LINE messages by kind: the scenarios' counselor replies went both ways
    counselor_sent = await stack.facts(F.REPLY_SENT, purpose="counselor_reply")
    by_method = Counter(f["data"]["method"] for f in counselor_sent)
    assert figures.free_replies_by_kind["counselor"] == by_method["reply"] >= 1
    assert figures.pushes_by_kind["counselor"] == by_method["push"] >= 1
    # staff by the name the console knows them by, not by their 32-character id
    tables = {t.title: t for section in built.report.sections for t in section.tables}
    staff = {s["_id"]: s["name"] for s in await db[STAFF].find({}).to_list()}
    audit = [row[0] for row in tables["相談記録の閲覧と操作（監査記録の集計）"].rows]
    assert audit
    assert all(any(who == f"{n}（{i}）" for i, n in staff.items()) for who in audit)
    budget = tables["今月のLINEの通数（プランに対して）"]
    rows = {row[0]: row[1] for row in budget.rows}
    assert rows["相談員の返信（返信トークン・無料）"] == by_method["reply"]
    assert rows["一斉送信（受け取った人数）"] == figures.broadcast_recipients > 0
    assert built.xlsx.exists()
    assert built.pdf.exists()


async def _recorded(stack: Stack, fact_type: str, n: int) -> bool:
    return len(await stack.facts(fact_type)) == n
