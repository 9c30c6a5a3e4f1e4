"""The console in headless Chromium, against the running console on the real broker."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import aio_pika
import pytest
from soudan_console.testing import PASSWORD, RunningConsole, login, path_of, seed_case
from soudan_shared import fact_types as F
from soudan_shared.bus import Bus
from soudan_shared.contracts import Fact, utcnow
from soudan_shared.records import CASES, MESSAGES
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


async def test_five_wrong_passwords_lock_the_account_even_against_the_right_one(
    running: RunningConsole, new_page: Any
) -> None:
    counselor = await running.add_staff("counselor")
    page = await new_page()
    for _ in range(5):
        await login(page, running.url, counselor.email, "wrong-password-123")
    assert "しばらく使えません" in await page.inner_text("p.error")
    await running.wait_fact(F.LOCKED_OUT, staff_id=counselor.id)
    assert len(running.facts_of(F.LOGIN_FAILED)) >= 5
    await login(page, running.url, counselor.email, PASSWORD)
    assert path_of(page).startswith("/login")
    assert "しばらく使えません" in await page.inner_text("p.error")
    await running.wait_fact(F.LOGIN_FAILED, staff_id=counselor.id, reason="locked")


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
    await page.wait_for_url("**?msg=sent")
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
