"""The console over plain HTTP on the real broker: accounts, settings, broadcasts, reports."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import aio_pika
import pyotp
import pytest
from soudan_console import broadcasts
from soudan_console import cases as case_ops
from soudan_console.domain import BROADCASTS, SESSIONS, STAFF
from soudan_console.main import create_admin
from soudan_console.settings import ConsoleSettings
from soudan_console.testing import PASSWORD, Browserless, RunningConsole, seed_case
from soudan_console.web import CONSOLE
from soudan_shared import fact_types as F
from soudan_shared.bus import Bus
from soudan_shared.config_store import CONFIG_OVERRIDES, ConfigSource
from soudan_shared.contracts import Fact, new_id, utcnow
from soudan_shared.records import CASES, USERS, User
from soudan_shared.store import Store
from soudan_shared.testing.waiting import wait_until
from soudan_shared.topology import BROADCAST_QUEUE, Topology

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
async def client(running: RunningConsole) -> AsyncIterator[Callable[[], Browserless]]:
    made: list[Browserless] = []

    def make() -> Browserless:
        made.append(Browserless(running.url))
        return made[-1]

    yield make
    for c in made:
        await c.close()


async def test_every_page_carries_the_security_headers(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    c = client()
    async with c.http.get(running.url + "/login") as response:
        headers = response.headers
        cookie = response.headers.get("Set-Cookie", "")
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert "unsafe-inline" not in headers["Content-Security-Policy"]
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    async with c.http.get(running.url + "/static/console.js") as response:
        assert response.headers["X-Content-Type-Options"] == "nosniff"


async def test_login_rotates_the_session_and_logout_ends_it(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    counselor = await running.add_staff("counselor")
    c = client()
    await c.get("/login")
    before = {m.key: m.value for m in c.http.cookie_jar}["soudan_session"]
    status, path, _ = await c.post("/login", {"email": counselor.email, "password": PASSWORD})
    after = {m.key: m.value for m in c.http.cookie_jar}["soudan_session"]
    assert (status, path) == (200, "/queue")
    assert before != after
    assert await running.store.db[SESSIONS].count_documents({"staff_id": None}) == 0
    await c.post("/logout")
    status, path, _ = await c.get("/queue")
    assert path.startswith("/login")


async def test_an_idle_session_ends(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    counselor = await running.add_staff("counselor")
    c = client()
    await c.login(counselor.email)
    idle = timedelta(minutes=running.settings.console_idle_timeout_minutes + 1)
    await running.store.db[SESSIONS].update_many(
        {"staff_id": counselor.id}, {"$set": {"last_seen_at": utcnow() - idle}}
    )
    _, path, _ = await c.get("/queue")
    assert path.startswith("/login")


async def test_a_second_factor_required_by_role_is_set_up_then_asked_at_login(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    admin = await running.add_staff("admin")
    counselor = await running.add_staff("counselor")
    a = client()
    await a.login(admin.email)
    await a.post("/admin/security", {"totp_role": "counselor"})
    await running.wait_fact(F.SETTINGS_CHANGED, what="security.totp_required_roles")

    c = client()
    _, path, page = await c.login(counselor.email)
    assert path == "/account/second-factor"
    assert (await c.get("/queue"))[1] == "/account/second-factor"
    secret = page.split('name="secret" value="')[1].split('"')[0]
    totp = pyotp.TOTP(secret)
    status, _, _ = await c.post("/account/second-factor", {"secret": secret, "code": "000000"})
    assert status == 400
    _, path, _ = await c.post("/account/second-factor", {"secret": secret, "code": totp.now()})
    assert path.startswith("/queue")
    await running.wait_fact(F.SECOND_FACTOR_ENABLED, staff_id=counselor.id)

    again = client()
    _, path, _ = await again.login(counselor.email)
    assert path.startswith("/login/second-factor")
    assert (await again.get("/queue"))[1].startswith("/login")
    await running.store.db[STAFF].update_one(
        {"_id": counselor.id}, {"$set": {"totp_last_counter": 0}}
    )
    await again.get("/login/second-factor")
    _, path, _ = await again.post("/login/second-factor", {"code": totp.now()})
    assert path == "/queue"
    await running.wait_fact(F.LOGIN_SUCCEEDED, staff_id=counselor.id, second_factor=True)


async def test_create_admin_adds_an_admin_who_must_change_the_password(
    running: RunningConsole, service_env: dict[str, str]
) -> None:
    settings = ConsoleSettings()
    assert await create_admin(settings, "Chief@Example.jp", "主任", "a-long-enough-password") == 0
    doc = await running.store.db[STAFF].find_one({"email": "chief@example.jp"})
    assert doc["role"] == "admin"
    assert doc["must_change_password"] is True
    assert doc["password_hash"].startswith("$argon2id$")
    assert await create_admin(settings, "chief@example.jp", "主任", "a-long-enough-password") == 1
    assert await create_admin(settings, "other@example.jp", "主任", "short") == 1
    await running.wait_fact(F.STAFF_CREATED, staff_id=doc["_id"], role="admin", by="cli")


@pytest.fixture
def console_overrides(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.node.name.startswith("test_the_first_admin"):
        return {
            "console_admin_email": "first@example.jp",
            "console_admin_password": "first-admin-password",
        }
    if request.node.name.startswith("test_many_failed_sign_ins_from_one_address"):
        return {"console_source_failure_limit": 3, "trusted_proxies": "127.0.0.1"}
    return {}


async def test_the_first_admin_comes_from_the_environment(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    await running.wait_fact(F.STAFF_CREATED, by="bootstrap", role="admin")
    c = client()
    _, path, _ = await c.login("first@example.jp", "first-admin-password")
    assert path == "/password"


async def test_many_failed_sign_ins_from_one_address_stop_it_without_locking_any_account(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    a, b = await running.add_staff("counselor"), await running.add_staff("counselor")
    spray = client()  # behind the proxy (127.0.0.1, trusted here), from one address
    spray.http.headers["X-Forwarded-For"] = "203.0.113.9"
    for email in (a.email, b.email, "nobody@example.jp"):  # one guess against each account
        status, _, _ = await spray.login(email, "Summer2026!")
        assert status == 401

    await spray.get("/login")
    form = {"csrf_token": spray.csrf, "email": a.email, "password": PASSWORD}
    async with spray.http.post(running.url + "/login", data=form) as refused:
        retry_after = int(refused.headers["Retry-After"])
    window = running.settings.console_source_failure_window_minutes * 60
    assert 0 < retry_after <= window + 1
    status, path, text = await spray.login(a.email)  # even the right password, now
    assert (status, path) == (429, "/login")
    assert "この接続元からのログインの失敗が続いたため" in text
    await running.wait_fact(F.LOGIN_FAILED, reason="throttled", source="203.0.113.9")
    for staff in (a, b):  # one failure each: no account locked by someone else's guesses
        doc = await running.store.db[STAFF].find_one({"_id": staff.id})
        assert doc["failed_logins"] == 1
        assert doc.get("locked_until") is None

    elsewhere = client()  # a counselor at another address signs in as usual
    elsewhere.http.headers["X-Forwarded-For"] = "198.51.100.20"
    _, path, _ = await elsewhere.login(a.email)
    assert path == "/queue"


async def test_admin_actions_on_staff_are_facts_naming_the_admin(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    admin = await running.add_staff("admin")
    a = client()
    await a.login(admin.email)
    await a.post(
        "/admin/staff",
        {"email": "new@example.jp", "name": "新人", "role": "counselor", "password": PASSWORD},
    )
    created = await running.wait_fact(F.STAFF_CREATED, role="counselor", by=admin.id)
    staff_id = created.data["staff_id"]
    await a.post(f"/admin/staff/{staff_id}/role", {"role": "supervisor"})
    await running.wait_fact(
        F.STAFF_ROLE_CHANGED, staff_id=staff_id, before="counselor", after="supervisor"
    )
    await a.post(f"/admin/staff/{staff_id}/reset-password", {"password": "temporary-password-1"})
    await running.wait_fact(F.PASSWORD_CHANGED, staff_id=staff_id, by=admin.id)
    await a.post(f"/admin/staff/{staff_id}/disable")
    await running.wait_fact(F.STAFF_DISABLED, staff_id=staff_id, by=admin.id)
    n = client()
    _, path, _ = await n.login("new@example.jp", "temporary-password-1")
    assert path.startswith("/login")
    await a.post(f"/admin/staff/{staff_id}/enable")
    await running.wait_fact(F.STAFF_ENABLED, staff_id=staff_id, by=admin.id)
    await running.store.db[STAFF].update_one(
        {"_id": staff_id}, {"$set": {"totp_enabled": True, "totp_secret": "JBSWY3DPEHPK3PXP"}}
    )
    await a.post(f"/admin/staff/{staff_id}/reset-second-factor")
    await running.wait_fact(F.SECOND_FACTOR_DISABLED, staff_id=staff_id, by=admin.id)
    status, _, text = await a.post(f"/admin/staff/{admin.id}/disable")
    assert status == 400
    assert "自分のアカウント" in text


async def test_a_settings_change_is_stored_seen_by_other_services_and_audited(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    admin = await running.add_staff("admin")
    a = client()
    await a.login(admin.email)
    _, _, page = await a.get("/admin/settings/keywords")
    assert "自殺" in page
    await a.post("/admin/settings/keywords", {"extra": "オーバードーズ\n飛び降り\n"})
    fact = await running.wait_fact(F.SETTINGS_CHANGED, what="config.keywords")
    assert fact.data["staff_id"] == admin.id
    assert fact.data["before"] == {"extra": []}
    assert fact.data["after"] == {"extra": ["オーバードーズ", "飛び降り"]}
    # Another service reading the configuration in force sees it without a restart.
    other = ConfigSource(running.settings.soudan_config_dir, running.store.db, ttl=0)
    assert (await other.get()).keywords.extra == ("オーバードーズ", "飛び降り")

    status, _, text = await a.post("/admin/settings/categories", {"text": "categories: []"})
    assert status == 400
    assert "保存できませんでした" in text
    assert await running.store.db[CONFIG_OVERRIDES].find_one({"_id": "categories"}) is None

    await a.post("/admin/settings/keywords/reset")
    assert (await other.get()).keywords.extra == ()


async def test_message_texts_are_edited_field_by_field(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    admin = await running.add_staff("admin")
    a = client()
    await a.login(admin.email)
    config = await running.console.config.get()
    form = {
        "follow.greeting": "はじめまして。",
        "follow.policy": config.messages.follow.policy,
        "school_type.question": config.messages.school_type.question,
        "school_type.answered_eligible": config.messages.school_type.answered_eligible,
        "school_type.answered_not_eligible": config.messages.school_type.answered_not_eligible,
        "auto_reply.out_of_hours": "時間外です。{next_open} にまた送ってね。",
        "auto_reply.out_of_hours_urgent": config.messages.auto_reply.out_of_hours_urgent,
        "auto_reply.congested": config.messages.auto_reply.congested,
        "auto_reply.media_refused": config.messages.auto_reply.media_refused,
        "inquiry": config.messages.inquiry,
        "broadcast.period_notice": config.messages.broadcast.period_notice,
        "broadcast.open_now": config.messages.broadcast.open_now,
    }
    status, _, _ = await a.post("/admin/settings/messages", form)
    assert status == 200
    fact = await running.wait_fact(F.SETTINGS_CHANGED, what="config.messages")
    assert set(fact.data["after"]) == {"follow.greeting", "auto_reply.out_of_hours"}
    broken = {**form, "auto_reply.out_of_hours": "時間外です。"}
    status, _, text = await a.post("/admin/settings/messages", broken)
    assert status == 400
    assert "next_open" in text


async def test_a_broadcast_is_counted_sent_to_dispatch_once_and_tracked(
    running: RunningConsole,
    client: Callable[[], Browserless],
    fact_bus: Bus,
    rabbitmq_url: str,
    topology: Topology,
) -> None:
    admin = await running.add_staff("admin")
    for eligible in (True, True, False):
        user = User.model_validate(
            {"_id": "U" + new_id(), "followed_at": utcnow(), "eligible": eligible}
        )
        await running.store.db[USERS].insert_one(user.to_document())
    a = client()
    await a.login(admin.email)
    _, _, page = await a.get("/admin/broadcasts?template=open_now&audience=target_group")
    assert "<strong>2人</strong>に送られます" in page
    await a.post(
        "/admin/broadcasts", {"template": "open_now", "audience": "target_group", "when": "now"}
    )
    fact = await running.wait_fact(F.BROADCAST_REQUESTED, staff_id=admin.id)
    broadcast_id = fact.data["broadcast_id"]
    connection = await aio_pika.connect(rabbitmq_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(topology.queue(BROADCAST_QUEUE))
        message = await wait_until(lambda: queue.get(no_ack=True, fail=False))
        command = json.loads(message.body)
        assert command["broadcast_id"] == broadcast_id
        assert command["audience"] == "target_group"
        for _ in range(3):  # what three more scheduler ticks do: nothing is sent twice
            await broadcasts.send_due(running.app[CONSOLE])
        assert await queue.get(no_ack=True, fail=False) is None
    for fact_type, data in (
        (F.BROADCAST_STARTED, {"planned": 2}),
        (F.BROADCAST_CHUNK_SENT, {"chunk": 0, "recipients": 2}),
        (F.BROADCAST_FINISHED, {"recipients": 2, "failures": 0}),
    ):
        await fact_bus.publish(
            Fact(type=fact_type, service="dispatch", data={"broadcast_id": broadcast_id, **data})
        )

    async def finished() -> bool:
        doc = await running.store.db[BROADCASTS].find_one({"_id": broadcast_id})
        return bool(doc and doc["state"] == "finished" and doc["recipients"] == 2)

    await wait_until(finished, message="broadcast finished")


async def test_a_scheduled_broadcast_waits_for_its_time(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    admin = await running.add_staff("admin")
    a = client()
    await a.login(admin.email)
    status, _, _ = await a.post(
        "/admin/broadcasts",
        {
            "template": "period_notice",
            "period": "4月1日〜3月31日 毎日17:00〜21:00",
            "audience": "registered",
            "when": "later",
            "due_at": "2099-04-01T09:00",
        },
    )
    assert status == 200
    doc = await running.store.db[BROADCASTS].find_one({})
    assert doc["state"] == "scheduled"
    assert "毎日17:00〜21:00" in doc["texts"][0]
    await a.post(f"/admin/broadcasts/{doc['_id']}/cancel")
    doc = await running.store.db[BROADCASTS].find_one({})
    assert doc["state"] == "cancelled"


async def test_the_section_reads_reports_and_nothing_else(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    section = await running.add_staff("section")
    reports: Path = running.settings.reports_dir
    reports.mkdir(parents=True)  # noqa: ASYNC240
    (reports / "soudan-report-2026-10.xlsx").write_bytes(b"PK\x03\x04 fake xlsx")
    (reports / "soudan-report-2026-10.pdf").write_bytes(b"%PDF-1.7 fake")
    (reports / "notes.txt").write_text("not a report")
    s = client()
    _, path, page = await s.login(section.email)
    assert path == "/reports"
    assert "2026年10月" in page
    assert "notes.txt" not in page
    async with s.http.get(running.url + "/reports/soudan-report-2026-10.pdf") as response:
        assert response.status == 200
        assert await response.read() == b"%PDF-1.7 fake"
        assert "attachment" in response.headers["Content-Disposition"]
    await running.wait_fact(
        F.REPORT_DOWNLOADED, month="2026-10", file="soudan-report-2026-10.pdf", staff_id=section.id
    )
    assert (await s.get("/reports/notes.txt"))[0] == 404
    assert (await s.get("/reports/..%2Fnotes.txt"))[0] == 404
    assert (await s.get("/queue"))[0] == 403
    case = await seed_case(running.store)
    assert (await s.get(f"/cases/{case.id}"))[0] == 403


async def test_release_transfer_note_and_close_are_facts(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    first = await running.add_staff("counselor")
    second = await running.add_staff("counselor")
    case = await seed_case(running.store)
    c = client()
    await c.login(first.email)
    await c.post(f"/cases/{case.id}/claim")
    await c.post(f"/cases/{case.id}/notes", {"note": "学校名は言いたくないとのこと"})
    await running.wait_fact(F.CASE_NOTE_ADDED, case_id=case.id, staff_id=first.id)
    await c.post(f"/cases/{case.id}/release")
    await running.wait_fact(F.CASE_RELEASED, case_id=case.id, staff_id=first.id)
    await c.post(f"/cases/{case.id}/claim")
    await c.post(f"/cases/{case.id}/transfer", {"to": second.id})
    await running.wait_fact(
        F.CASE_TRANSFERRED, case_id=case.id, from_staff_id=first.id, to_staff_id=second.id
    )
    status, _, _ = await c.post(
        f"/cases/{case.id}/close", {"category": "bullying", "outcome": "resolved"}
    )
    assert status == 403  # no longer the first counselor's case
    d = client()
    await d.login(second.email)
    _, _, page = await d.get(f"/cases/{case.id}")
    assert "学校名は言いたくないとのこと" in page
    await running.wait_fact(F.CASE_VIEWED, case_id=case.id, staff_id=second.id)
    await d.post(f"/cases/{case.id}/close", {"category": "bullying", "outcome": "resolved"})
    closed = await running.wait_fact(F.CASE_CLOSED, case_id=case.id)
    assert closed.data["category"] == "bullying"
    assert closed.data["outcome"] == "resolved"
    assert closed.data["staff_id"] == second.id
    assert closed.data["duration_seconds"] >= 60
    doc = await running.store.db[CASES].find_one({"_id": case.id})
    assert doc["state"] == "closed"


async def test_a_counselor_cannot_open_another_counselors_case(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    owner = await running.add_staff("counselor")
    other = await running.add_staff("counselor")
    supervisor = await running.add_staff("supervisor")
    case = await seed_case(running.store, state="active", claimed_by=owner.id)
    c = client()
    await c.login(other.email)
    assert (await c.get(f"/cases/{case.id}"))[0] == 403
    assert (await c.post(f"/cases/{case.id}/reply", {"text": "こんにちは"}))[0] == 403
    s = client()
    await s.login(supervisor.email)
    assert (await s.get(f"/cases/{case.id}"))[0] == 200


async def test_the_users_earlier_cases_and_erased_messages_are_shown(
    running: RunningConsole, client: Callable[[], Browserless], store: Store
) -> None:
    counselor = await running.add_staff("counselor")
    old = await seed_case(
        store,
        state="closed",
        waited=timedelta(days=7),
        texts=("前のときの話",),
        category="family",
        outcome="continuing",
    )
    case = await seed_case(store, user_id=old.user_id, texts=("また来ました", "取り消した文"))
    await store.db["messages"].update_one(
        {"case_id": case.id, "text": "取り消した文"},
        {"$set": {"text": None, "unsent_at": utcnow()}},
    )
    c = client()
    await c.login(counselor.email)
    await c.post(f"/cases/{case.id}/claim")
    _, _, page = await c.get(f"/cases/{case.id}")
    assert "前のときの話" in page
    assert "家庭" in page
    assert "相談者がこのメッセージを取り消しました" in page
    assert "取り消した文" not in page


async def test_an_urgent_case_waiting_too_long_alerts_supervisors(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    supervisor = await running.add_staff("supervisor")
    minutes = running.settings.console_urgent_alert_minutes
    overdue = await seed_case(
        running.store, urgent=True, keywords=("助け",), waited=timedelta(minutes=minutes + 1)
    )
    fresh = await seed_case(running.store, urgent=True, keywords=("助け",))
    client_ = running.console.hub.connect(supervisor.id, "supervisor")
    _, payload = await asyncio.wait_for(_next_event(client_, "overdue"), 10)
    assert json.loads(payload)["case_ids"] == [overdue.id]
    s = client()
    await s.login(supervisor.email)
    _, _, page = await s.get("/supervise")
    assert f"/cases/{overdue.id}" in page
    assert (
        f"/cases/{fresh.id}"
        not in page.split("だれにも受けられていません")[1].split("</section>")[0]
    )


async def _next_event(client: Any, name: str) -> tuple[str, str]:
    while True:
        event, payload = await client.queue.get()
        if event == name:
            return event, payload


async def test_a_fact_the_broker_refuses_is_kept_and_published_later(
    running: RunningConsole,
) -> None:
    console = running.console
    counselor = await running.add_staff("counselor")
    case = await seed_case(running.store)
    original = console.bus.publish

    async def refuse(message: Any, *, timeout: float | None = None) -> None:
        from soudan_shared.bus import PublishFailed

        raise PublishFailed("broker down (test)")

    console.bus.publish = refuse  # type: ignore[method-assign]
    try:
        assert await case_ops.claim(console, case.id, counselor) is not None
    finally:
        console.bus.publish = original  # type: ignore[method-assign]
    assert await running.store.db["console_outbox"].count_documents({}) == 1
    await running.wait_fact(F.CASE_CLAIMED, case_id=case.id, staff_id=counselor.id)
    await wait_until(lambda: _empty(running.store), message="outbox emptied by the periodic task")


async def _empty(store: Store) -> bool:
    return await store.db["console_outbox"].count_documents({}) == 0
