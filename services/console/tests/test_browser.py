"""The console in headless Chromium, against the running console on the real broker."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import aio_pika
import pytest
from soudan_console.domain import BROADCASTS
from soudan_console.testing import (
    PASSWORD,
    RunningConsole,
    login,
    path_of,
    queued_send_texts,
    seed_case,
)
from soudan_shared import fact_types as F
from soudan_shared.bus import Bus
from soudan_shared.config import WEEKDAYS, HoursConfig
from soudan_shared.config_store import ConfigSource, save_override
from soudan_shared.contracts import Fact, SendText, new_id, utcnow
from soudan_shared.hours import Hours
from soudan_shared.records import CASES, MESSAGES, USERS, User, record_outgoing
from soudan_shared.testing.waiting import wait_until
from soudan_shared.topology import SEND_TEXT_QUEUE, Topology

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


async def test_a_counselor_signs_in_and_sees_the_queue_with_keywords_highlighted(
    running: RunningConsole, new_page: Any
) -> None:
    counselor = await running.add_staff("counselor")
    await seed_case(running.store, urgent=True, keywords=("消えたい",), texts=("もう消えたいです",))
    page = await new_page()
    await login(page, running.url, counselor.email)
    assert path_of(page) == "/queue"
    row = page.locator("table.queue tbody tr").first
    assert await row.get_attribute("data-urgent") == "1"
    assert await row.locator("td.preview mark").first.inner_text() == "消えたい"
    await running.wait_fact(F.LOGIN_SUCCEEDED, staff_id=counselor.id, second_factor=False)
    cookie = next(c for c in await page.context.cookies() if c["name"] == "soudan_session")
    assert cookie["httpOnly"]
    assert cookie["sameSite"] == "Strict"


async def test_five_wrong_passwords_stop_sign_in_from_there_even_with_the_right_one(
    running: RunningConsole, new_page: Any
) -> None:
    counselor = await running.add_staff("counselor")
    page = await new_page()
    for _ in range(5):
        await login(page, running.url, counselor.email, "wrong-password-123")
    refused = await page.inner_text("p.error")
    assert "メールアドレスかパスワードがちがいます" in refused
    await running.wait_fact(F.LOCKED_OUT, staff_id=counselor.id)
    assert len(running.facts_of(F.LOGIN_FAILED)) >= 5
    await login(page, running.url, counselor.email, PASSWORD)
    assert path_of(page).startswith("/login")
    assert await page.inner_text("p.error") == refused
    await running.wait_fact(F.LOGIN_FAILED, staff_id=counselor.id, reason="locked")


async def test_a_sign_in_link_pointing_elsewhere_lands_on_the_console_queue(
    running: RunningConsole, new_page: Any
) -> None:
    counselor = await running.add_staff("counselor")
    page = await new_page()
    locations: list[str] = []
    page.on("response", lambda r: locations.append(r.headers.get("location", "")))
    await page.goto(f"{running.url}/login?next=/%09/evil.example/")
    await page.fill("input[name=email]", counselor.email)
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button.primary")
    await page.wait_for_url(f"{running.url}/queue")
    assert not any("evil.example" in location for location in locations)


async def test_signing_out_in_one_tab_ends_the_live_queue_in_the_other_at_once(
    running: RunningConsole, new_page: Any
) -> None:
    counselor = await running.add_staff("counselor")
    page = await new_page()
    await login(page, running.url, counselor.email)
    assert path_of(page) == "/queue"
    await page.wait_for_selector("body[data-live-state=open]")
    other = await page.context.new_page()
    await other.goto(f"{running.url}/queue")
    # Its own stream is ended too and may send it to sign-in (/login) before or after the
    # logout's answer (/login?msg=logged_out) loads: either is the sign-in page.
    await other.click("form[action='/logout'] button", no_wait_after=True)
    await wait_until(
        lambda: path_of(other).partition("?")[0] == "/login",
        timeout=15,
        message="the tab at sign-in",
    )
    # The first tab's stream is told and sends the page to the sign-in form (the stream used to
    # outlive the session by ~35 s; how soon the server ends it is pinned in test_console.py,
    # this bound only leaves room for a loaded machine's browser).
    await page.wait_for_url(f"{running.url}/login**", timeout=15_000)


async def test_the_queue_shows_spoofing_characters_and_keeps_long_previews_inside_the_row(
    running: RunningConsole, new_page: Any
) -> None:
    counselor = await running.add_staff("counselor")
    spoof = await seed_case(running.store, texts=("abc\u202egnp.exe",))
    hidden = await seed_case(
        running.store, urgent=True, keywords=("消えたい",), texts=("もう消\u200bえたい",)
    )
    long = await seed_case(running.store, texts=("a" * 5000,))
    page = await new_page()
    await login(page, running.url, counselor.email)

    def preview(case: Any) -> Any:
        return page.locator(f"tr[data-case-id='{case.id}'] td.preview")

    shown = await preview(spoof).inner_text()
    assert "\u202e" not in shown
    assert shown.startswith("abc[U+202E]gnp.exe")
    assert "消" in await preview(hidden).locator("mark").inner_text()
    table = await page.locator("table.queue").bounding_box()
    cell = await preview(long).bounding_box()
    assert cell["x"] + cell["width"] <= table["x"] + table["width"] + 1
    assert table["x"] + table["width"] <= 1360


async def test_an_expired_password_must_be_changed_before_anything_else(
    running: RunningConsole, new_page: Any
) -> None:
    counselor = await running.add_staff(
        "counselor", password_changed_at=utcnow() - timedelta(days=91)
    )
    page = await new_page()
    await login(page, running.url, counselor.email)
    assert path_of(page) == "/password"
    await page.goto(f"{running.url}/queue")
    assert path_of(page) == "/password"
    await page.fill("input[name=current]", PASSWORD)
    await page.fill("input[name=new]", "short")
    await page.fill("input[name=again]", "short")
    await page.evaluate("document.querySelectorAll('input').forEach(i => i.minLength = 0)")
    await page.click("button.primary")
    assert "12文字以上" in await page.inner_text("p.error")
    await page.fill("input[name=current]", PASSWORD)
    await page.fill("input[name=new]", "a-brand-new-long-passphrase")
    await page.fill("input[name=again]", "a-brand-new-long-passphrase")
    await page.click("button.primary")
    await page.wait_for_url(f"{running.url}/queue?msg=password_changed")
    await running.wait_fact(F.PASSWORD_CHANGED, staff_id=counselor.id, by=counselor.id)


async def test_a_form_without_the_right_csrf_token_is_refused(
    running: RunningConsole, new_page: Any
) -> None:
    counselor = await running.add_staff("counselor")
    case = await seed_case(running.store)
    page = await new_page()
    await login(page, running.url, counselor.email)
    await page.evaluate(
        "document.querySelectorAll('input[name=csrf_token]').forEach(i => i.value = 'forged')"
    )
    async with page.expect_response(lambda r: r.request.method == "POST") as info:
        await page.click("#claim-next")
    assert (await info.value).status == 403
    assert "受け付けられませんでした" in await page.inner_text("h1")
    # A request from elsewhere carries the cookie only if the site allows it; even then, no token.
    response = await page.context.request.post(
        f"{running.url}/cases/{case.id}/claim", form={"x": "1"}
    )
    assert response.status == 403
    doc = await running.store.db[CASES].find_one({"_id": case.id})
    assert doc["state"] == "waiting"


async def test_a_counselor_is_refused_an_admin_page(running: RunningConsole, new_page: Any) -> None:
    counselor = await running.add_staff("counselor")
    page = await new_page()
    await login(page, running.url, counselor.email)
    response = await page.goto(f"{running.url}/admin/staff")
    assert response.status == 403
    assert "このページは使えません" in await page.inner_text("h1")
    response = await page.goto(f"{running.url}/supervise")
    assert response.status == 403
    response = await page.goto(f"{running.url}/reports")
    assert response.status == 403


async def test_two_counselors_claiming_at_once_get_one_case_each(
    running: RunningConsole, new_page: Any
) -> None:
    first = await running.add_staff("counselor")
    second = await running.add_staff("counselor")
    cases = [await seed_case(running.store, waited=timedelta(minutes=m)) for m in (9, 5)]
    pages = [await new_page(), await new_page()]
    for page, staff in zip(pages, (first, second), strict=True):
        await login(page, running.url, staff.email)
    await asyncio.gather(*(page.click("#claim-next") for page in pages))
    for page in pages:
        await page.wait_for_url("**/cases/*?msg=claimed")
    claimed = {path_of(page).split("/")[2].split("?")[0] for page in pages}
    assert claimed == {c.id for c in cases}
    docs = await running.store.db[CASES].find({"state": "active"}).to_list()
    assert {d["claimed_by"] for d in docs} == {first.id, second.id}
    assert len(running.facts_of(F.CASE_CLAIMED)) == 2


async def test_two_counselors_clicking_the_same_case_never_share_it(
    running: RunningConsole, new_page: Any
) -> None:
    staff = [await running.add_staff("counselor") for _ in range(2)]
    case = await seed_case(running.store)
    pages = [await new_page(), await new_page()]
    for page, person in zip(pages, staff, strict=True):
        await login(page, running.url, person.email)
    claim = f"tr[data-case-id='{case.id}'] button.claim"
    await asyncio.gather(*(page.click(claim) for page in pages))
    for page in pages:
        await page.wait_for_load_state()
    outcomes = sorted(path_of(page) for page in pages)
    assert outcomes == [f"/cases/{case.id}?msg=claimed", "/queue?msg=taken"]
    doc = await running.store.db[CASES].find_one({"_id": case.id})
    assert doc["claimed_by"] in {s.id for s in staff}


async def test_an_urgent_case_jumps_the_live_queue_with_a_sound(
    running: RunningConsole, new_page: Any, fact_bus: Bus
) -> None:
    counselor = await running.add_staff("counselor")
    older = await seed_case(running.store, waited=timedelta(minutes=20))
    page = await new_page()
    await login(page, running.url, counselor.email)
    await page.click("h1")  # a user gesture lets the page play sound
    await page.wait_for_selector("body[data-live-state=open]")
    first_row = page.locator("table.queue tbody tr").first
    assert await first_row.get_attribute("data-case-id") == older.id
    await page.evaluate("window.__sameDocument = true")

    urgent = await seed_case(
        running.store,
        urgent=True,
        keywords=("死にたい",),
        texts=("もう死にたい",),
        waited=timedelta(0),
    )
    await fact_bus.publish(
        Fact(
            type=F.CASE_OPENED,
            service="triage",
            data={"case_id": urgent.id, "user_id": urgent.user_id, "urgent": True},
        )
    )
    await page.wait_for_selector(f"table.queue tbody tr:first-child[data-case-id='{urgent.id}']")
    assert await page.evaluate("window.__sameDocument") is True  # updated live, not reloaded
    ids = await page.eval_on_selector_all(
        "table.queue tbody tr", "rows => rows.map(r => r.dataset.caseId)"
    )
    assert ids == [urgent.id, older.id]
    assert await page.is_visible("#alert")
    assert "緊急" in await page.inner_text("#alert-text")
    assert await page.evaluate("window.__beeps") >= 3


@pytest.fixture
def console_overrides(request: pytest.FixtureRequest) -> dict[str, Any]:
    if "smtp_server" not in request.fixturenames:
        return {}
    _, port = request.getfixturevalue("smtp_server")
    return {
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "smtp_starttls": False,
        "smtp_from": "soudan@example.jp",
        "emergency_recipients": "section@example.jp, night@example.jp",
        "console_base_url": "https://console.example.jp",
    }


async def test_emergency_flow_live_alert_mail_contacts_and_close(
    smtp_server: Any, running: RunningConsole, new_page: Any
) -> None:
    inbox, _ = smtp_server
    counselor = await running.add_staff("counselor", name="相談員A")
    supervisor = await running.add_staff("supervisor", name="SV B")
    case = await seed_case(running.store, urgent=True, keywords=("自殺",))
    sv_page = await new_page()
    await login(sv_page, running.url, supervisor.email)
    await sv_page.goto(f"{running.url}/supervise")
    await sv_page.click("h1")
    await sv_page.wait_for_selector("body[data-live-state=open]")

    page = await new_page()
    await login(page, running.url, counselor.email)
    await page.goto(f"{running.url}/cases/{case.id}")
    await page.select_option("select[name=type]", "suicide_notice")
    await page.click("button.danger")
    await page.wait_for_url("**/emergencies/*")
    emergency_id = path_of(page).split("/")[2]

    await sv_page.wait_for_selector("#alert:not([hidden])")
    assert "緊急対応が始まりました" in await sv_page.inner_text("#alert-text")
    assert await sv_page.get_attribute("#alert-link", "href") == f"/emergencies/{emergency_id}"
    assert await sv_page.evaluate("window.__beeps") >= 5

    await wait_until(lambda: inbox.messages, timeout=15, message="emergency mail")
    mail = inbox.messages[0]
    assert "自殺予告" in mail["Subject"]
    assert sorted(inbox.envelopes[0].rcpt_tos) == ["night@example.jp", "section@example.jp"]
    text = mail.get_content()
    assert f"https://console.example.jp/emergencies/{emergency_id}" in text
    assert case.user_id not in text
    await running.wait_fact(F.EMERGENCY_RAISED, emergency_id=emergency_id, type="suicide_notice")
    await running.wait_fact(F.EMERGENCY_NOTIFIED, emergency_id=emergency_id, channel="live")
    await running.wait_fact(
        F.EMERGENCY_NOTIFIED, emergency_id=emergency_id, channel="email", recipients=2
    )

    await page.reload()
    assert "送りました" in await page.inner_text(".facts")
    assert "0120-0-78310" in await page.inner_text("table.directory >> nth=1")
    await page.select_option("select[name=agency]", index=1)
    await page.select_option("select[name=result]", "referred")
    await page.fill("textarea[name=memo]", "担当の方に状況を伝えた")
    await page.click("form[action$='/contacts'] button")
    await page.wait_for_url("**?msg=contact_recorded")
    assert "対応を依頼した" in await page.inner_text("table.contacts")
    await running.wait_fact(F.EMERGENCY_CONTACT, emergency_id=emergency_id, result="referred")

    await page.fill("textarea[name=summary]", "課に連絡し、児童相談所が対応することになった。")
    await page.click("form[action$='/close'] button")
    await page.wait_for_url("**?msg=emergency_closed")
    await running.wait_fact(F.EMERGENCY_CLOSED, emergency_id=emergency_id, staff_id=counselor.id)


async def test_a_reply_from_the_browser_reaches_the_bus_and_the_conversation(
    running: RunningConsole,
    new_page: Any,
    rabbitmq_url: str,
    topology: Topology,
) -> None:
    counselor = await running.add_staff("counselor")
    case = await seed_case(running.store, texts=("学校に行きたくない",))
    page = await new_page()
    await login(page, running.url, counselor.email)
    await page.click(f"tr[data-case-id='{case.id}'] button.claim")
    await page.wait_for_url("**?msg=claimed")
    await page.fill("#text-0", "話してくれてありがとう。")
    assert await page.inner_text(".counter[data-for=text-0]") == "12 / 5000"
    await page.click("#add-bubble")
    await page.fill("#text-1", "どんなことがあったのか、よかったら教えてね。")
    await page.click("#send")
    await page.wait_for_url("**?msg=sending")
    bubbles = await page.locator(".msg.out .bubble").all_inner_texts()
    assert bubbles == ["話してくれてありがとう。", "どんなことがあったのか、よかったら教えてね。"]

    connection = await aio_pika.connect(rabbitmq_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(topology.queue(SEND_TEXT_QUEUE))
        message = await wait_until(
            lambda: queue.get(no_ack=True, fail=False), message="SendText on the send-text queue"
        )
    command = json.loads(message.body)
    assert command["type"] == "command.send_text"
    assert command["to"] == case.user_id
    assert command["purpose"] == "counselor_reply"
    assert command["case_id"] == case.id
    assert command["staff_id"] == counselor.id
    assert command["texts"] == bubbles
    stored = await running.store.db[MESSAGES].find({"direction": "out"}).to_list()
    assert [m["text"] for m in sorted(stored, key=lambda m: m["_id"])] == bubbles
    doc = await running.store.db[CASES].find_one({"_id": case.id})
    assert doc["first_reply_at"] is not None
    await running.wait_fact(F.REPLY_REQUESTED, case_id=case.id, command_id=command["id"])


async def test_the_broadcast_sent_is_the_one_on_screen_not_the_last_previewed(
    running: RunningConsole, new_page: Any
) -> None:
    admin = await running.add_staff("admin")
    for eligible in (True, True, False):
        user = User.model_validate(
            {"_id": "U" + new_id(), "followed_at": utcnow(), "eligible": eligible}
        )
        await running.store.db[USERS].insert_one(user.to_document())
    page = await new_page()
    questions: list[str] = []
    page.on("dialog", lambda dialog: questions.append(dialog.message))
    await login(page, running.url, admin.email)
    await page.goto(f"{running.url}/admin/broadcasts")
    await page.select_option("select[name=template]", "open_now")
    await page.select_option("select[name=audience]", "registered")
    await page.click("#broadcast-preview")
    await page.wait_for_selector("#broadcast-send")
    assert await page.inner_text(".confirm-count") == "3人"

    # Other choices on screen, not previewed: 相談期間のお知らせ for the target group only.
    await page.select_option("select[name=template]", "period_notice")
    await page.fill("input[name=period]", "4月1日〜3月31日　毎日17:00〜21:00")
    await page.select_option("select[name=audience]", "target_group")
    await page.click("#broadcast-send")
    await page.wait_for_selector("p.error")
    assert "送っていません" in await page.inner_text("p.error")
    assert await running.store.db[BROADCASTS].count_documents({}) == 0
    assert await page.inner_text(".confirm-template") == "相談期間・相談時間のお知らせ"
    assert "対象の学校の生徒だけ" in await page.inner_text(".confirm-audience")
    assert await page.inner_text(".confirm-count") == "2人"
    shown = await page.inner_text(".confirm-text")
    assert "毎日17:00〜21:00" in shown

    await page.click("#broadcast-send")
    await page.wait_for_url("**?msg=broadcast_requested")
    [doc] = await running.store.db[BROADCASTS].find({}).to_list()
    assert (doc["template"], doc["audience"]) == ("period_notice", "target_group")
    assert doc["texts"] == [shown]
    assert doc["confirmed_recipients"] == 2
    question = questions[-1]
    assert "相談期間・相談時間のお知らせ" in question
    assert "対象の学校の生徒だけ" in question
    assert "2人" in question
    assert "今すぐ" in question


async def test_a_refused_reply_turns_from_sending_to_failed_live_alerts_its_author_and_retries_once(
    running: RunningConsole,
    new_page: Any,
    fact_bus: Bus,
    rabbitmq_url: str,
    topology: Topology,
) -> None:
    counselor = await running.add_staff("counselor")
    case = await seed_case(running.store, texts=("だれにも言えない",))
    page = await new_page()
    await login(page, running.url, counselor.email)
    await page.click(f"tr[data-case-id='{case.id}'] button.claim")
    await page.wait_for_url("**?msg=claimed")
    await page.fill("#text-0", "話してくれてありがとう。")
    await page.click("#send")
    await page.wait_for_url("**?msg=sending")
    assert "送信中" in await page.inner_text("p.notice")
    assert "送りました" not in await page.inner_text("p.notice")
    assert await page.inner_text(".msg.out .delivery") == "送信中…"
    [command] = await wait_until(
        lambda: queued_send_texts(rabbitmq_url, topology), message="SendText"
    )
    await page.click("h1")  # a user gesture lets the page play sound
    await page.wait_for_selector("body[data-live-state=open]")
    await page.evaluate("window.__sameDocument = true")

    # What dispatch does when LINE refuses the push (see dispatch's tests).
    now = utcnow()
    await record_outgoing(
        running.store.db,
        command,
        at=now,
        delivery={
            "delivery": "failed",
            "delivery_at": now,
            "delivery_problem": "forbidden",
            "delivery_status": 403,
            "maybe_delivered": False,
        },
    )
    await fact_bus.publish(
        Fact(
            type=F.REPLY_FAILED,
            service="dispatch",
            data={
                "purpose": "counselor_reply",
                "case_id": case.id,
                "staff_id": counselor.id,
                "command_id": command.id,
                "problem": "forbidden",
                "status": 403,
            },
        )
    )
    await page.wait_for_selector(".msg.out[data-delivery=failed]")
    assert await page.evaluate("window.__sameDocument") is True  # redrawn live, not reloaded
    state = await page.inner_text(".msg.out .delivery")
    assert "送れませんでした" in state
    assert "断られました" in state
    assert await page.is_visible("#alert")
    assert "届きませんでした" in await page.inner_text("#alert-text")
    assert await page.evaluate("window.__beeps") >= 2

    await page.click("form.retry button")
    await page.wait_for_url("**?msg=retried")
    assert await page.inner_text(".msg.out .delivery") == "送信中…"
    [again] = await wait_until(
        lambda: queued_send_texts(rabbitmq_url, topology), message="retried SendText"
    )
    assert again.id == command.id  # the same command: dispatch and LINE's retry key dedupe it
    assert again.texts == ["話してくれてありがとう。"]
    csrf = await page.get_attribute("body", "data-csrf")
    response = await page.context.request.post(
        f"{running.url}/cases/{case.id}/replies/{command.id}/retry", form={"csrf_token": csrf}
    )
    assert "retry_nothing" in response.url
    assert await queued_send_texts(rabbitmq_url, topology) == []
    await running.wait_fact(F.REPLY_RETRIED, case_id=case.id, command_id=command.id)


async def test_supervisors_are_alerted_when_a_counselors_reply_stays_undelivered(
    running: RunningConsole, new_page: Any
) -> None:
    counselor = await running.add_staff("counselor", name="相談員C")
    supervisor = await running.add_staff("supervisor")
    case = await seed_case(running.store, state="active", claimed_by=counselor.id)
    command = SendText(
        to=case.user_id,
        texts=["だいじょうぶだよ。"],
        purpose="counselor_reply",
        case_id=case.id,
        staff_id=counselor.id,
    )
    minutes = running.settings.console_failed_reply_alert_minutes
    failed_at = utcnow() - timedelta(minutes=minutes, seconds=5)
    await record_outgoing(
        running.store.db,
        command,
        at=failed_at,
        delivery={"delivery": "failed", "delivery_at": failed_at, "delivery_problem": "no_answer"},
    )
    page = await new_page()
    await login(page, running.url, supervisor.email)
    await page.goto(f"{running.url}/supervise")
    await page.wait_for_selector("#alert:not([hidden])")
    assert "届いていません" in await page.inner_text("#alert-text")
    assert "相談員C" in await page.inner_text("#failed-replies")


async def test_a_reply_that_dispatch_never_answers_for_turns_to_not_sent_and_alerts_its_author(
    running: RunningConsole, new_page: Any
) -> None:
    counselor = await running.add_staff("counselor")
    supervisor = await running.add_staff("supervisor")
    case = await seed_case(running.store, state="active", claimed_by=counselor.id)
    command = SendText(
        to=case.user_id,
        texts=["ここにいるよ。"],
        purpose="counselor_reply",
        case_id=case.id,
        staff_id=counselor.id,
    )
    limit = timedelta(minutes=running.settings.console_failed_reply_alert_minutes)
    # Asked for a few seconds before the limit; dispatch (down, or unable to read it) never
    # answers, so the message would say 送信中 for ever.
    asked = utcnow() - limit + timedelta(seconds=4)
    await record_outgoing(running.store.db, command, at=asked, delivery={"delivery": "sending"})
    page = await new_page()
    await login(page, running.url, counselor.email)
    await page.goto(f"{running.url}/cases/{case.id}")
    await page.click("h1")  # a user gesture lets the page play sound
    await page.wait_for_selector("body[data-live-state=open]")
    assert await page.inner_text(".msg.out .delivery") == "送信中…"

    await page.wait_for_selector(".msg.out[data-delivery=failed]", timeout=20_000)
    state = await page.inner_text(".msg.out .delivery")
    assert "送れませんでした" in state
    assert "知らせが来ていません" in state
    assert "二重には届きません" in state
    assert "届きませんでした" in await page.inner_text("#alert-text")
    assert await page.is_visible("form.retry button")

    watcher = await new_page()
    await login(watcher, running.url, supervisor.email)
    await watcher.goto(f"{running.url}/supervise")
    await watcher.wait_for_selector("#alert:not([hidden])")
    assert "届いていません" in await watcher.inner_text("#alert-text")


async def test_the_conversation_shows_automatic_replies_in_order_marked_as_automatic(
    running: RunningConsole, new_page: Any
) -> None:
    counselor = await running.add_staff("counselor")
    case = await seed_case(
        running.store, texts=("夜おそくにごめんなさい",), waited=timedelta(minutes=3)
    )
    greeting = SendText(to=case.user_id, texts=["友だち追加ありがとう。"], purpose="greeting")
    out_of_hours = SendText(
        to=case.user_id, texts=["いまは受付時間外です。"], purpose="out_of_hours", case_id=case.id
    )
    congestion = SendText(
        to=case.user_id, texts=["いま混み合っています。"], purpose="congestion", case_id=case.id
    )
    now = utcnow()
    for command, at, delivery in (
        (greeting, now - timedelta(days=3), "sent"),
        (out_of_hours, now - timedelta(minutes=2), "sent"),
        (congestion, now - timedelta(minutes=1), "failed"),
    ):
        await record_outgoing(
            running.store.db, command, at=at, delivery={"delivery": delivery, "delivery_at": at}
        )
    page = await new_page()
    await login(page, running.url, counselor.email)
    await page.goto(f"{running.url}/cases/{case.id}")
    bubbles = await page.locator("#messages .msg .bubble").all_inner_texts()
    assert bubbles == [
        "友だち追加ありがとう。",
        "夜おそくにごめんなさい",
        "いまは受付時間外です。",
        "いま混み合っています。",
    ]
    autos = page.locator("#messages .msg.auto")
    assert await autos.count() == 3
    metas = await autos.locator(".meta").all_inner_texts()
    assert all("自動返信" in m for m in metas)
    assert "受付時間外のお知らせ" in metas[1]
    states = await autos.locator(".delivery").all_inner_texts()
    assert states[:2] == ["送信済み", "送信済み"]
    assert "送れませんでした" in states[2]
    assert await page.locator("#messages .msg.auto form.retry").count() == 0


async def test_an_admin_closes_a_day_early_in_the_hours_form_and_the_calendar_follows(
    running: RunningConsole, new_page: Any
) -> None:
    tokyo = ZoneInfo("Asia/Tokyo")
    today = utcnow().astimezone(tokyo).date()
    tomorrow = today + timedelta(days=1)
    evening = [{"open": "17:00", "last_acceptance": "20:30", "close": "21:00"}]
    usual = HoursConfig.model_validate(
        {
            "timezone": "Asia/Tokyo",
            "periods": [
                {
                    "name": "試験の期間",
                    "start": today - timedelta(days=1),
                    "end": today + timedelta(days=40),
                }
            ],
            "weekly": {day: evening for day in WEEKDAYS} | {"holiday": evening},
            "closed_on_public_holidays": False,
        }
    )
    await save_override(running.store.db, "hours", usual, staff_id="test")
    running.console.config.invalidate()
    at_half_past_seven = datetime.combine(tomorrow, time(19, 30), tzinfo=tokyo)
    assert Hours(usual).status(at_half_past_seven).accepting

    admin = await running.add_staff("admin")
    page = await new_page()
    await login(page, running.url, admin.email)
    await page.goto(f"{running.url}/admin/settings/hours")
    usual_row = "17:00〜21:00（新しい相談は20:30まで）"
    early_row = "17:00〜19:00（新しい相談は18:30まで）"
    assert (
        await page.inner_text("#hours-preview tbody tr:nth-child(2) td:nth-child(2)") == usual_row
    )

    await page.fill("input[name=s0-date]", tomorrow.isoformat())
    await page.fill("input[name=s0-0-open]", "17:00")
    await page.fill("input[name=s0-0-close]", "19:00")
    await page.fill("input[name=s0-0-last]", "18:30")
    await page.fill("input[name=s0-note]", "研修のため早く終わります")
    await page.click("button[value=preview]:not(.default-submit)")
    await page.wait_for_selector("#hours-draft")
    assert await page.inner_text("#hours-draft tbody tr:nth-child(2) td:nth-child(2)") == early_row
    assert (
        await page.inner_text("#hours-preview tbody tr:nth-child(2) td:nth-child(2)") == usual_row
    )
    assert await page.input_value("input[name=s0-0-close]") == "19:00"

    await page.click("button[value=save]")
    await page.wait_for_url("**/admin/settings/hours?msg=saved")
    assert "保存しました" in await page.inner_text("p.notice")
    assert (
        await page.inner_text("#hours-preview tbody tr:nth-child(2) td:nth-child(2)") == early_row
    )
    assert await page.input_value("input[name=s0-note]") == "研修のため早く終わります"

    saved = (await ConfigSource(running.settings.soudan_config_dir, running.store.db).get()).hours
    calendar = Hours(saved)
    assert calendar.status(at_half_past_seven).open is False
    after_last_acceptance = calendar.status(at_half_past_seven - timedelta(minutes=45))
    assert (after_last_acceptance.open, after_last_acceptance.accepting) == (True, False)
    assert calendar.status(at_half_past_seven - timedelta(minutes=90)).accepting is True
    assert calendar.next_open(at_half_past_seven) == datetime.combine(
        tomorrow + timedelta(days=1), time(17, 0), tzinfo=tokyo
    )
    await running.wait_fact(F.SETTINGS_CHANGED, what="config.hours", staff_id=admin.id)
