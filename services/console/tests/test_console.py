"""The console over plain HTTP on the real broker: accounts, settings, broadcasts, reports."""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote
from zoneinfo import ZoneInfo

import aio_pika
import pyotp
import pytest
from soudan_console import broadcasts
from soudan_console import cases as case_ops
from soudan_console import staff as accounts
from soudan_console.domain import BROADCASTS, SESSIONS, STAFF
from soudan_console.main import create_admin
from soudan_console.settings import ConsoleSettings
from soudan_console.testing import (
    PASSWORD,
    Browserless,
    RunningConsole,
    form_fields,
    queued_send_texts,
    reply_form_id,
    seed_case,
)
from soudan_console.web import CONSOLE
from soudan_shared import fact_types as F
from soudan_shared.bus import Bus
from soudan_shared.config_store import CONFIG_OVERRIDES, ConfigSource
from soudan_shared.contracts import Fact, new_id, texts_digest, utcnow
from soudan_shared.records import CASES, LINE_BUDGET, MESSAGES, USERS, User
from soudan_shared.store import Store
from soudan_shared.testing.waiting import wait_until
from soudan_shared.topology import BROADCAST_QUEUE, Topology

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


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


@pytest.mark.parametrize("control", ["%09", "%0a", "%0d", "%5c"])
async def test_sign_in_with_a_next_page_hiding_another_host_stays_on_the_console(
    running: RunningConsole, client: Callable[[], Browserless], control: str
) -> None:
    counselor = await running.add_staff("counselor")
    c = client()
    _, _, page = await c.get(f"/login?next=/{control}/evil.example/")
    assert "evil.example" not in page
    form = {
        "csrf_token": c.csrf,
        "email": counselor.email,
        "password": PASSWORD,
        "next": unquote(f"/{control}/evil.example/"),
    }
    async with c.http.post(running.url + "/login", data=form, allow_redirects=False) as response:
        assert response.status == 303
        assert response.headers["Location"] == "/queue"


async def _read_events(response: Any, seconds: float) -> str:
    """What the live stream writes within ``seconds`` (until it ends, if sooner)."""
    lines: list[str] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            while line := await response.content.readline():
                lines.append(line.decode())
    return "".join(lines)


@pytest.mark.parametrize(
    "ending", ["logout", "disabled", "role_changed", "expired", "ended_in_another_process"]
)
async def test_the_live_stream_stops_as_soon_as_its_session_ends(
    running: RunningConsole, client: Callable[[], Browserless], ending: str
) -> None:
    counselor = await running.add_staff("counselor")
    admin = await running.add_staff("admin")
    c = client()
    await c.login(counselor.email)
    async with c.http.get(running.url + "/events") as stream:
        assert stream.status == 200
        assert "retry:" in await _read_events(stream, 0.3)
        if ending == "logout":
            await c.post("/logout")
        elif ending in ("disabled", "role_changed"):
            a = client()
            await a.login(admin.email)
            if ending == "disabled":
                await a.post(f"/admin/staff/{counselor.id}/disable", {"current": PASSWORD})
            else:
                form = {"role": "supervisor", "current": PASSWORD}
                await a.post(f"/admin/staff/{counselor.id}/role", form)
        elif ending == "expired":
            await running.store.db[SESSIONS].update_many(
                {"staff_id": counselor.id}, {"$set": {"expires_at": utcnow()}}
            )
        else:  # deleted by another console process: this one notices at its next re-check
            await running.store.db[SESSIONS].delete_many({"staff_id": counselor.id})
        # Case events keep flowing meanwhile: they must not keep the stream alive.
        running.console.hub.send("case", {"type": "case.opened"})
        tail = await _read_events(stream, running.settings.console_live_recheck_seconds + 2)
    assert 'event: session\ndata: {"state": "ended"}' in tail
    assert tail.rstrip().endswith('{"state": "ended"}')


async def test_a_closed_browser_is_no_longer_shown_online_after_a_minute(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    gone, here = await running.add_staff("counselor"), await running.add_staff("counselor")
    for person in (gone, here):
        await client().login(person.email)
    c = client()
    await c.login(here.email)
    async with c.http.get(running.url + "/events") as stream:
        await _read_events(stream, 0.3)
        ten_minutes_ago = utcnow() - timedelta(minutes=10)  # within the 30-minute idle time
        await running.store.db[SESSIONS].update_many(
            {}, {"$set": {"last_seen_at": ten_minutes_ago, "live_at": ten_minutes_ago}}
        )
        await _read_events(stream, running.settings.console_live_recheck_seconds + 0.5)
        online = await running.console.sessions.online_staff()
    assert here.id in online
    assert gone.id not in online


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
    status, _, _ = await c.post(
        "/account/second-factor", {"secret": secret, "code": "000000", "current": PASSWORD}
    )
    assert status == 400
    _, path, _ = await c.post(
        "/account/second-factor", {"secret": secret, "code": totp.now(), "current": PASSWORD}
    )
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
    if request.node.name.startswith("test_a_strangers_failed_sign_ins"):
        return {"trusted_proxies": "127.0.0.1"}
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
        assert doc.get("locked_until") is None

    elsewhere = client()  # a counselor at another address signs in as usual
    elsewhere.http.headers["X-Forwarded-For"] = "198.51.100.20"
    _, path, _ = await elsewhere.login(a.email)
    assert path == "/queue"


def _error_of(page: str) -> str:
    return page.split('<p class="error"')[1].split(">", 1)[1].split("</p>")[0]


async def test_a_strangers_failed_sign_ins_never_end_a_session_nor_tell_who_has_an_account(
    running: RunningConsole, client: Callable[[], Browserless], monkeypatch: pytest.MonkeyPatch
) -> None:
    counselor = await running.add_staff("counselor")
    disabled = await running.add_staff("counselor", disabled=True)
    owner = client()
    owner.http.headers["X-Forwarded-For"] = "198.51.100.20"
    assert (await owner.login(counselor.email))[1] == "/queue"

    checks: list[str] = []
    real_verify = accounts.verify_password

    async def counted(password_hash: str | None, password: str) -> bool:
        checks.append(password_hash or "dummy")
        return await real_verify(password_hash, password)

    monkeypatch.setattr(accounts, "verify_password", counted)
    stranger = client()
    stranger.http.headers["X-Forwarded-For"] = "203.0.113.9"
    answers: dict[str, set[tuple[int, str]]] = {}
    for case, email, password in [
        ("wrong", counselor.email, "not-the-password"),
        ("wrong", counselor.email, "not-the-password"),
        ("wrong", counselor.email, "not-the-password"),
        ("wrong", counselor.email, "not-the-password"),
        ("wrong", counselor.email, "not-the-password"),
        ("locked", counselor.email, PASSWORD),
        ("unknown", "nobody@example.jp", PASSWORD),
        ("disabled", disabled.email, PASSWORD),
    ]:
        before = len(checks)
        status, _, page = await stranger.login(email, password)
        answers.setdefault(case, set()).add((status, _error_of(page)))
        assert len(checks) == before + 1, f"{case}: the password is checked every time"
    assert len({answer for found in answers.values() for answer in found}) == 1
    await running.wait_fact(F.LOCKED_OUT, staff_id=counselor.id)
    await running.wait_fact(F.LOGIN_FAILED, staff_id=counselor.id, reason="locked")

    status, path, _ = await owner.get("/queue")  # the owner's session lives on
    assert (status, path) == (200, "/queue")
    elsewhere = client()  # and the owner may still sign in from their own address
    elsewhere.http.headers["X-Forwarded-For"] = "198.51.100.20"
    assert (await elsewhere.login(counselor.email))[1] == "/queue"


async def test_a_wrong_second_factor_code_is_called_a_wrong_code(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    secret = pyotp.random_base32()
    counselor = await running.add_staff("counselor", totp_secret=secret, totp_enabled=True)
    c = client()
    _, path, _ = await c.login(counselor.email)
    assert path.startswith("/login/second-factor")
    wrong = f"{(int(pyotp.TOTP(secret).now()) + 1) % 1_000_000:06d}"
    status, _, page = await c.post("/login/second-factor", {"code": wrong})
    assert status == 401
    assert "確認コードがちがいます" in _error_of(page)
    assert "パスワード" not in _error_of(page)


async def _signed_in_with_second_factor(
    running: RunningConsole, c: Browserless
) -> tuple[Any, pyotp.TOTP]:
    totp = pyotp.TOTP(pyotp.random_base32())
    counselor = await running.add_staff("counselor", totp_secret=totp.secret, totp_enabled=True)
    await c.login(counselor.email)
    _, path, _ = await c.post("/login/second-factor", {"code": totp.now()})
    assert path == "/queue"
    await running.store.db[STAFF].update_one(
        {"_id": counselor.id}, {"$set": {"totp_last_counter": 0}}
    )
    return counselor, totp


async def test_a_session_alone_cannot_replace_the_second_factor(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    c = client()
    counselor, old = await _signed_in_with_second_factor(running, c)
    _, _, page = await c.get("/account/second-factor")
    assert "<svg" in page  # the new key as a QR code, drawn by the console itself
    new = pyotp.TOTP(page.split('name="secret" value="')[1].split('"')[0])
    for proof in ({}, {"current": PASSWORD}, {"current": "wrong", "current_code": old.now()}):
        status, _, page = await c.post(
            "/account/second-factor", {"secret": new.secret, "code": new.now(), **proof}
        )
        assert status == 400
        assert "今のパスワードか確認コードがちがいます" in page
        doc = await running.store.db[STAFF].find_one({"_id": counselor.id})
        assert doc["totp_secret"] == old.secret
    _, path, _ = await c.post(
        "/account/second-factor",
        {"secret": new.secret, "code": new.now(), "current": PASSWORD, "current_code": old.now()},
    )
    assert path.startswith("/queue")
    doc = await running.store.db[STAFF].find_one({"_id": counselor.id})
    assert doc["totp_secret"] == new.secret
    await running.wait_fact(F.SECOND_FACTOR_ENABLED, staff_id=counselor.id, replaced=True)


async def test_a_password_change_asks_the_current_second_factor_too(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    c = client()
    counselor, totp = await _signed_in_with_second_factor(running, c)
    change = {"current": PASSWORD, "new": "a-brand-new-long-passphrase", "again": ""}
    change["again"] = change["new"]
    status, _, _ = await c.post("/password", change)
    assert status == 400
    _, path, _ = await c.post("/password", {**change, "current_code": totp.now()})
    assert path.startswith("/queue?msg=password_changed")
    await running.wait_fact(F.PASSWORD_CHANGED, staff_id=counselor.id, by=counselor.id)


async def test_guessing_the_current_password_on_the_password_page_is_stopped_like_sign_in(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    counselor = await running.add_staff("counselor")
    before = (await running.store.db[STAFF].find_one({"_id": counselor.id}))["password_hash"]
    c = client()
    await c.login(counselor.email)
    change = {"new": "a-brand-new-long-passphrase", "again": "a-brand-new-long-passphrase"}
    statuses = [
        (await c.post("/password", {**change, "current": "a-guess-at-it"}))[0]
        for _ in range(running.settings.console_lockout_threshold)
    ]
    assert statuses[:-1] == [400] * (len(statuses) - 1)
    status, _, page = await c.post("/password", {**change, "current": PASSWORD})
    assert status == 429
    assert "失敗が続いたため" in page
    after = (await running.store.db[STAFF].find_one({"_id": counselor.id}))["password_hash"]
    assert after == before
    assert running.facts_of(F.PASSWORD_CHANGED) == []
    await running.wait_fact(F.LOCKED_OUT, staff_id=counselor.id)


async def test_a_password_used_before_cannot_be_chosen_again(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    counselor = await running.add_staff("counselor")
    c = client()
    await c.login(counselor.email)
    current = PASSWORD
    for new in ("a-brand-new-long-passphrase", "another-quiet-river-stone"):
        _, path, _ = await c.post("/password", {"current": current, "new": new, "again": new})
        assert path.startswith("/queue?msg=password_changed")
        current = new
    for earlier in (PASSWORD, "a-brand-new-long-passphrase", current):
        status, _, page = await c.post(
            "/password", {"current": current, "new": earlier, "again": earlier}
        )
        assert status == 400
        assert "使ったパスワードは使えません" in page


async def test_a_new_staff_account_is_recorded_with_its_name_so_the_report_can_name_it(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    admin = await running.add_staff("admin")
    a = client()
    await a.login(admin.email)
    await a.post(
        "/admin/staff",
        {
            "email": "named@example.jp",
            "name": " 相談 花子 ",
            "role": "counselor",
            "password": PASSWORD,
            "current": PASSWORD,
        },
    )
    created = await running.wait_fact(F.STAFF_CREATED, role="counselor", by=admin.id)
    assert created.data["name"] == "相談 花子"


async def test_admin_actions_on_staff_are_facts_naming_the_admin(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    admin = await running.add_staff("admin")
    a = client()
    await a.login(admin.email)
    await a.post(
        "/admin/staff",
        {
            "email": "new@example.jp",
            "name": "新人",
            "role": "counselor",
            "password": PASSWORD,
            "current": PASSWORD,
        },
    )
    created = await running.wait_fact(F.STAFF_CREATED, role="counselor", by=admin.id)
    staff_id = created.data["staff_id"]
    await a.post(f"/admin/staff/{staff_id}/role", {"role": "supervisor", "current": PASSWORD})
    await running.wait_fact(
        F.STAFF_ROLE_CHANGED, staff_id=staff_id, before="counselor", after="supervisor"
    )
    await a.post(
        f"/admin/staff/{staff_id}/reset-password",
        {"password": "temporary-password-1", "current": PASSWORD},
    )
    await running.wait_fact(F.PASSWORD_CHANGED, staff_id=staff_id, by=admin.id)
    await a.post(f"/admin/staff/{staff_id}/disable", {"current": PASSWORD})
    await running.wait_fact(F.STAFF_DISABLED, staff_id=staff_id, by=admin.id)
    n = client()
    _, path, _ = await n.login("new@example.jp", "temporary-password-1")
    assert path.startswith("/login")
    await a.post(f"/admin/staff/{staff_id}/enable", {"current": PASSWORD})
    await running.wait_fact(F.STAFF_ENABLED, staff_id=staff_id, by=admin.id)
    await running.store.db[STAFF].update_one(
        {"_id": staff_id}, {"$set": {"totp_enabled": True, "totp_secret": "JBSWY3DPEHPK3PXP"}}
    )
    await a.post(f"/admin/staff/{staff_id}/reset-second-factor", {"current": PASSWORD})
    await running.wait_fact(F.SECOND_FACTOR_DISABLED, staff_id=staff_id, by=admin.id)
    status, _, text = await a.post(f"/admin/staff/{admin.id}/disable")
    assert status == 400
    assert "自分のアカウント" in text


async def test_each_staff_admin_action_confirms_what_it_did(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    admin = await running.add_staff("admin")
    counselor = await running.add_staff("counselor")
    a = client()
    await a.login(admin.email)
    said = {}
    for action, form in [
        ("role", {"role": "supervisor", "current": PASSWORD}),
        ("disable", {"current": PASSWORD}),
        ("enable", {"current": PASSWORD}),
        ("unlock", {}),
        ("reset-password", {"password": "temporary-quiet-harbor-7", "current": PASSWORD}),
    ]:
        _, path, page = await a.post(f"/admin/staff/{counselor.id}/{action}", form)
        assert path == f"/admin/staff?msg=staff_{action}"
        said[action] = page.split('class="notice"')[1].split("</")[0]
    assert len(set(said.values())) == len(said)
    assert not any("保存しました" in text for text in said.values())


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


def _token(page: str) -> str:
    found = re.search(r'name="token" value="([^"]+)"', page)
    assert found, "the page shows no confirmation"
    return found.group(1)


async def _users_with(running: RunningConsole, *eligible: bool) -> None:
    for value in eligible:
        user = User.model_validate(
            {"_id": "U" + new_id(), "followed_at": utcnow(), "eligible": value}
        )
        await running.store.db[USERS].insert_one(user.to_document())


async def test_crossing_80_percent_of_the_months_messages_shows_the_warning_on_the_broadcast_page(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    admin = await running.add_staff("admin")
    a = client()
    await a.login(admin.email)
    _, _, page = await a.get("/admin/broadcasts")
    assert "今月の残り通数" not in page  # dispatch has not read the budget yet
    budget = running.store.db[LINE_BUDGET]
    reading = {"limit": 1000, "used": 790, "remaining": 210, "reserve": 100, "read_at": utcnow()}
    await budget.insert_one({"_id": "current", **reading})
    _, _, page = await a.get("/admin/broadcasts")
    assert '<strong class="budget-remaining">210通</strong>' in page
    assert "1000通のうち 790通" in page
    assert "100通を残しておきます" in page
    assert "budget-warn" not in page
    await budget.update_one({"_id": "current"}, {"$set": {"used": 810, "remaining": 190}})
    _, _, page = await a.get("/admin/broadcasts")
    assert "budget-warn" in page
    assert "今月の通数の多くを使いました" in page
    await budget.update_one({"_id": "current"}, {"$set": {"used": 960, "remaining": 40}})
    _, _, page = await a.get("/admin/broadcasts")
    assert "budget-alert" in page
    assert "ほとんど残っていません" in page


async def test_a_broadcast_that_would_eat_the_reserve_is_refused_in_the_console_unless_confirmed(
    running: RunningConsole,
    client: Callable[[], Browserless],
    rabbitmq_url: str,
    topology: Topology,
) -> None:
    admin = await running.add_staff("admin")
    await _users_with(running, True, True, True)
    reading = {"limit": 200, "used": 178, "remaining": 22, "reserve": 20, "read_at": utcnow()}
    await running.store.db[LINE_BUDGET].insert_one({"_id": "current", **reading})
    a = client()
    await a.login(admin.email)
    choices = {"template": "open_now", "audience": "registered", "when": "now"}
    _, _, page = await a.post("/admin/broadcasts/preview", choices)
    assert "残している20通に食い込みます" in page
    assert "あと2通です" in page
    status, _, page = await a.post("/admin/broadcasts", {**choices, "token": _token(page)})
    assert status == 409
    assert await running.store.db[BROADCASTS].count_documents({}) == 0
    form = {**choices, "token": _token(page), "budget_confirmed": "1"}
    status, _, _ = await a.post("/admin/broadcasts", form)
    assert status == 200
    fact = await running.wait_fact(F.BROADCAST_REQUESTED, staff_id=admin.id)
    assert fact.data["budget_override"] is True
    connection = await aio_pika.connect(rabbitmq_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(topology.queue(BROADCAST_QUEUE))
        message = await wait_until(lambda: queue.get(no_ack=True, fail=False))
        command = json.loads(message.body)
    assert command["broadcast_id"] == fact.data["broadcast_id"]
    assert command["force"] is True


async def test_a_broadcast_is_counted_sent_to_dispatch_once_and_tracked(
    running: RunningConsole,
    client: Callable[[], Browserless],
    fact_bus: Bus,
    rabbitmq_url: str,
    topology: Topology,
) -> None:
    admin = await running.add_staff("admin")
    await _users_with(running, True, True, False)
    a = client()
    await a.login(admin.email)
    choices = {"template": "open_now", "audience": "target_group", "when": "now"}
    _, _, page = await a.post("/admin/broadcasts/preview", choices)
    assert '<strong class="confirm-count">2人</strong>' in page
    token = _token(page)
    status, _, _ = await a.post("/admin/broadcasts", {**choices, "token": token})
    assert status == 200
    fact = await running.wait_fact(F.BROADCAST_REQUESTED, staff_id=admin.id)
    broadcast_id = fact.data["broadcast_id"]
    await a.post("/admin/broadcasts", {**choices, "token": token})  # a double submit
    assert await running.store.db[BROADCASTS].count_documents({}) == 1
    connection = await aio_pika.connect(rabbitmq_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(topology.queue(BROADCAST_QUEUE))
        message = await wait_until(lambda: queue.get(no_ack=True, fail=False))
        command = json.loads(message.body)
        assert command["broadcast_id"] == broadcast_id
        assert command["audience"] == "target_group"
        assert command["template"] == "open_now"
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

    await wait_until(finished, timeout=30, message="broadcast finished")


async def test_a_broadcast_whose_facts_arrive_out_of_order_is_shown_finished_not_sending(
    running: RunningConsole, client: Callable[[], Browserless], fact_bus: Bus
) -> None:
    # The console handles facts concurrently: dispatch's "started" may be applied last.
    broadcast_id = "bc-" + new_id()
    for fact_type, data in (
        (F.BROADCAST_FINISHED, {"recipients": 2, "failures": 0}),
        (F.BROADCAST_CHUNK_SENT, {"chunk": 0, "recipients": 2}),
        (F.BROADCAST_STARTED, {"planned": 2, "template": "open_now", "audience": "registered"}),
    ):
        await fact_bus.publish(
            Fact(type=fact_type, service="dispatch", data={"broadcast_id": broadcast_id, **data})
        )

    async def planned() -> dict[str, Any] | None:
        doc = await running.store.db[BROADCASTS].find_one({"_id": broadcast_id})
        return doc if doc and doc.get("planned") == 2 else None

    doc = await wait_until(planned, timeout=30, message="the started fact applied")
    assert doc["state"] == "finished"
    assert doc["recipients"] == 2
    assert doc["template"] == "open_now"  # listed by its end, described by its start
    assert doc["requested_by"] == broadcasts.SCHEDULE
    admin = await running.add_staff("admin")
    a = client()
    await a.login(admin.email)
    _, _, page = await a.get("/admin/broadcasts")
    assert "完了" in page
    assert "送信中" not in page


async def test_a_send_whose_choices_differ_from_the_preview_is_refused_and_previewed_again(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    admin = await running.add_staff("admin")
    await _users_with(running, True, False, True, False)
    a = client()
    await a.login(admin.email)
    _, _, page = await a.post(
        "/admin/broadcasts/preview", {"template": "open_now", "audience": "registered"}
    )
    token = _token(page)
    shown = {
        "template": "period_notice",
        "period": "4月1日〜3月31日 毎日17:00〜21:00",
        "audience": "target_group",
        "when": "now",
        "token": token,
    }
    status, _, page = await a.post("/admin/broadcasts", shown)
    assert status == 409
    assert "送っていません" in page
    assert await running.store.db[BROADCASTS].count_documents({}) == 0
    assert '<strong class="confirm-count">2人</strong>' in page
    assert "毎日17:00〜21:00" in page
    status, _, _ = await a.post("/admin/broadcasts", {**shown, "token": _token(page)})
    assert status == 200
    [doc] = await running.store.db[BROADCASTS].find({}).to_list()
    assert (doc["template"], doc["audience"], doc["confirmed_recipients"]) == (
        "period_notice",
        "target_group",
        2,
    )
    assert "毎日17:00〜21:00" in doc["texts"][0]


async def test_a_send_is_refused_when_the_recipients_changed_since_the_preview(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    admin = await running.add_staff("admin")
    await _users_with(running, True)
    a = client()
    await a.login(admin.email)
    choices = {"template": "open_now", "audience": "registered", "when": "now"}
    _, _, page = await a.post("/admin/broadcasts/preview", choices)
    await _users_with(running, True, True)
    status, _, page = await a.post("/admin/broadcasts", {**choices, "token": _token(page)})
    assert status == 409
    assert "1人→3人" in page
    assert await running.store.db[BROADCASTS].count_documents({}) == 0


async def test_an_announcement_sent_within_the_repeat_window_needs_a_second_confirmation(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    assert running.settings.console_broadcast_repeat_window_hours == 24
    admin = await running.add_staff("admin")
    await _users_with(running, True)
    a = client()
    await a.login(admin.email)
    choices = {"template": "open_now", "audience": "registered", "when": "now"}
    _, _, page = await a.post("/admin/broadcasts/preview", choices)
    assert "repeat_confirmed" not in page
    assert (await a.post("/admin/broadcasts", {**choices, "token": _token(page)}))[0] == 200

    _, _, page = await a.post("/admin/broadcasts/preview", choices)
    assert "同じお知らせを最近も送っています" in page
    status, _, page = await a.post("/admin/broadcasts", {**choices, "token": _token(page)})
    assert status == 409
    assert await running.store.db[BROADCASTS].count_documents({}) == 1
    status, _, _ = await a.post(
        "/admin/broadcasts", {**choices, "token": _token(page), "repeat_confirmed": "1"}
    )
    assert status == 200
    docs = await running.store.db[BROADCASTS].find({}).to_list()
    assert sorted(d["repeat_confirmed"] for d in docs) == [False, True]


async def test_an_automatic_broadcast_appears_in_the_list_like_a_manual_one(
    running: RunningConsole, client: Callable[[], Browserless], fact_bus: Bus
) -> None:
    admin = await running.add_staff("admin")
    open_now = (await running.console.config.get()).messages.broadcast.open_now
    data = {
        "broadcast_id": "scheduled-abc",
        "audience": "registered",
        "method": "multicast",
        "planned": 3,
        "requested_by": "schedule",
        "template": "open_now",
        "texts_digest": texts_digest([open_now]),
    }
    await fact_bus.publish(Fact(type=F.BROADCAST_STARTED, service="dispatch", data=data))
    await running.wait_fact(F.BROADCAST_STARTED, broadcast_id="scheduled-abc")

    async def listed() -> bool:
        return await running.store.db[BROADCASTS].find_one({"_id": "scheduled-abc"}) is not None

    await wait_until(listed, message="the automatic broadcast in the list")
    a = client()
    await a.login(admin.email)
    _, _, page = await a.get("/admin/broadcasts")
    row = next(r for r in page.split("<tr>") if "（自動）" in r)
    assert "相談開始のお知らせ" in row
    assert "送信中" in row
    await _users_with(running, True)
    _, _, page = await a.post(
        "/admin/broadcasts/preview", {"template": "open_now", "audience": "registered"}
    )
    assert "同じお知らせを最近も送っています" in page


async def test_a_scheduled_broadcast_waits_for_its_time(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    admin = await running.add_staff("admin")
    a = client()
    await a.login(admin.email)
    choices = {
        "template": "period_notice",
        "period": "4月1日〜3月31日 毎日17:00〜21:00",
        "audience": "registered",
        "when": "later",
        "due_at": "2099-04-01T09:00",
    }
    _, _, page = await a.post("/admin/broadcasts/preview", choices)
    status, _, _ = await a.post("/admin/broadcasts", {**choices, "token": _token(page)})
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
        f"/cases/{case.id}/close", {"categories": ["bullying"], "outcome": "resolved"}
    )
    assert status == 403  # no longer the first counselor's case
    d = client()
    await d.login(second.email)
    _, _, page = await d.get(f"/cases/{case.id}")
    assert "学校名は言いたくないとのこと" in page
    await running.wait_fact(F.CASE_VIEWED, case_id=case.id, staff_id=second.id)
    await d.post(f"/cases/{case.id}/close", {"categories": ["bullying"], "outcome": "resolved"})
    closed = await running.wait_fact(F.CASE_CLOSED, case_id=case.id)
    assert closed.data["categories"] == ["bullying"]
    assert closed.data["category"] == "bullying"
    assert closed.data["outcome"] == "resolved"
    assert closed.data["staff_id"] == second.id
    assert closed.data["duration_seconds"] >= 60
    doc = await running.store.db[CASES].find_one({"_id": case.id})
    assert doc["state"] == "closed"


async def _closed_by_a_counselor(
    running: RunningConsole, client: Callable[[], Browserless], form: dict[str, Any]
) -> tuple[str, tuple[int, str, str]]:
    """A counselor's active case closed with ``form``: its id and the close's answer."""
    counselor = await running.add_staff("counselor")
    case = await seed_case(running.store, state="active", claimed_by=counselor.id)
    c = client()
    await c.login(counselor.email)
    await c.get(f"/cases/{case.id}")
    return case.id, await c.post(f"/cases/{case.id}/close", form)


async def test_a_close_records_several_categories_the_grade_gender_and_hand_over(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    case_id, (_, where, _) = await _closed_by_a_counselor(
        running,
        client,
        {
            "categories": ["family", "bullying"],
            "outcome": "referred",
            "grade": "sh1",
            "gender": "female",
            "handed_over": "1",
        },
    )
    assert where.startswith("/queue")
    doc = await running.store.db[CASES].find_one({"_id": case_id})
    assert doc["categories"] == ["bullying", "family"]  # in the configuration's order
    assert (doc["grade"], doc["gender"], doc["handed_over"]) == ("sh1", "female", True)
    assert "category" not in doc
    closed = await running.wait_fact(F.CASE_CLOSED, case_id=case_id)
    assert closed.data["categories"] == ["bullying", "family"]
    assert closed.data["category"] == "bullying"  # the first, for readers of older facts
    assert closed.data["grade"] == "sh1"
    assert closed.data["gender"] == "female"
    assert closed.data["handed_over"] is True
    assert closed.data["outcome"] == "referred"


async def test_a_close_with_nothing_optional_records_grade_and_gender_as_unknown(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    case_id, (_, where, _) = await _closed_by_a_counselor(
        running,
        client,
        {"categories": ["career"], "outcome": "resolved", "grade": "", "gender": ""},
    )
    assert where.startswith("/queue")
    doc = await running.store.db[CASES].find_one({"_id": case_id})
    assert (doc["categories"], doc["grade"], doc["gender"]) == (["career"], None, None)
    assert doc["handed_over"] is False
    closed = await running.wait_fact(F.CASE_CLOSED, case_id=case_id)
    assert closed.data["grade"] is None
    assert closed.data["gender"] is None
    assert closed.data["handed_over"] is False


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"outcome": "resolved"}, "分類を1つ以上選んでから終了してください。"),
        ({"categories": ["bullying", "gossip"]}, "設定にない分類が送られました。"),
        ({"categories": ["bullying"], "grade": "jh4"}, "設定にない学年が送られました。"),
        ({"categories": ["bullying"], "gender": "unknown"}, "設定にない性別が送られました。"),
        ({"categories": ["bullying"], "outcome": ""}, "結果を選んでから終了してください。"),
    ],
)
async def test_a_close_missing_a_category_or_naming_an_unknown_key_is_refused_and_stores_nothing(
    running: RunningConsole,
    client: Callable[[], Browserless],
    form: dict[str, Any],
    message: str,
) -> None:
    case_id, (status, _, page) = await _closed_by_a_counselor(
        running, client, {"outcome": "resolved", **form}
    )
    assert status == 400
    assert message in page
    doc = await running.store.db[CASES].find_one({"_id": case_id})
    assert doc["state"] == "active"
    assert doc.get("categories", []) == []
    assert all(f.data["case_id"] != case_id for f in running.facts_of(F.CASE_CLOSED))


async def test_a_case_closed_before_several_categories_shows_its_one_category(
    running: RunningConsole, client: Callable[[], Browserless], store: Store
) -> None:
    supervisor = await running.add_staff("supervisor")
    old = await seed_case(store, state="closed", waited=timedelta(days=30), texts=("前の話",))
    # the document as the console wrote it before issue 16: one category, nothing else
    await store.db[CASES].update_one(
        {"_id": old.id},
        {
            "$set": {"category": "non_attendance", "outcome": "continuing", "closed_at": utcnow()},
            "$unset": {"categories": "", "grade": "", "gender": "", "handed_over": ""},
        },
    )
    case = await seed_case(store, user_id=old.user_id, texts=("また来ました",))
    c = client()
    await c.login(supervisor.email)
    _, _, page = await c.get(f"/cases/{case.id}")
    earlier = page.split('class="earlier"')[1].split("</summary>")[0]
    assert "不登校・見守り・また相談してくれるよう伝えた" in earlier
    _, _, old_page = await c.get(f"/cases/{old.id}")
    record = old_page.split('id="close-record">')[1].split("</span>")[0]
    assert "分類 不登校" in record
    assert "学年 不明" in record
    assert "性別 不明" in record
    assert "他の窓口" not in record


async def test_an_earlier_case_shows_every_category_and_the_attributes_recorded(
    running: RunningConsole, client: Callable[[], Browserless], store: Store
) -> None:
    counselor = await running.add_staff("counselor")
    old = await seed_case(
        store,
        state="closed",
        waited=timedelta(days=7),
        categories=["friendships", "health"],
        outcome="referred",
        grade="jh3",
        handed_over=True,
    )
    case = await seed_case(store, user_id=old.user_id, state="active", claimed_by=counselor.id)
    c = client()
    await c.login(counselor.email)
    _, _, page = await c.get(f"/cases/{case.id}")
    earlier = page.split('class="earlier"')[1].split("</summary>")[0]
    assert "友人関係、心身の健康・関係機関につないだ・中3・他の窓口につないだ" in earlier
    assert "不明" not in earlier  # the gender was not recorded: not shown in the summary


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


@pytest.mark.parametrize(
    ("role", "state", "owned"),
    [
        ("counselor", "waiting", False),
        ("counselor", "active", True),
        ("counselor", "closed", True),
        ("supervisor", "waiting", False),
        ("supervisor", "closed", False),
    ],
)
async def test_a_note_is_taken_exactly_when_the_case_page_offers_the_note_form(
    running: RunningConsole, client: Callable[[], Browserless], role: str, state: str, owned: bool
) -> None:
    person = await running.add_staff(role)
    case = await seed_case(running.store, state=state, claimed_by=person.id if owned else None)
    c = client()
    await c.login(person.email)
    _, _, page = await c.get(f"/cases/{case.id}")
    offered = f'action="/cases/{case.id}/notes"' in page
    status, path, _ = await c.post(f"/cases/{case.id}/notes", {"note": "様子を見る"})
    taken = path.endswith("msg=noted")
    assert taken == offered
    assert (status == 403) == (not offered)
    notes = await running.store.db["console_notes"].count_documents({"case_id": case.id})
    assert notes == (1 if offered else 0)
    assert offered == (state == "active" or (state == "closed" and role == "supervisor"))


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


async def test_a_case_flagged_by_a_risk_phrase_shows_its_category_and_the_phrase_marked(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    counselor = await running.add_staff("counselor")
    case = await seed_case(
        running.store,
        urgent=True,
        texts=("きのう腕切っちゃった",),
        risks=[{"category": "自傷", "term": "腕や手首を切る", "match": "腕切っちゃった"}],
    )
    c = client()
    await c.login(counselor.email)
    _, _, queue = await c.get("/queue")
    row = queue.split(f'data-case-id="{case.id}"')[1].split("</tr>")[0]
    assert '<span class="badge risk">自傷</span>' in row
    assert "きのう<mark>腕切っちゃった</mark>" in row
    _, _, page = await c.get(f"/cases/{case.id}")
    signs = page.split('id="risks"')[1].split("</span>\n")[0]
    assert '<span class="badge risk">自傷</span>' in signs
    assert "腕切っちゃった</mark>" in signs
    assert '<div class="bubble">きのう<mark>腕切っちゃった</mark></div>' in page


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


async def test_a_student_who_blocked_the_account_is_shown_as_gone_on_the_queue_and_the_case(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    counselor = await running.add_staff("counselor")
    gone = await seed_case(running.store)
    staying = await seed_case(running.store)
    # triage's line.unfollowed handling
    await running.store.db[USERS].update_one(
        {"_id": gone.user_id}, {"$set": {"registered": False, "unfollowed_at": utcnow()}}
    )
    c = client()
    await c.login(counselor.email)

    _, _, queue = await c.get("/queue")
    rows = queue.split("<tr")
    gone_row = next(r for r in rows if f'data-case-id="{gone.id}"' in r)
    staying_row = next(r for r in rows if f'data-case-id="{staying.id}"' in r)
    assert "ブロックされました（友だち解除）" in gone_row
    assert "ブロックされました" not in staying_row

    _, _, page = await c.get(f"/cases/{gone.id}")
    assert "ブロックされました（友だち解除" in page
    assert "返信は届きません" in page
    _, _, other = await c.get(f"/cases/{staying.id}")
    assert "ブロックされました" not in other


async def test_a_reply_forms_id_used_for_another_case_is_refused_and_a_replayed_form_sends_once(
    running: RunningConsole,
    client: Callable[[], Browserless],
    rabbitmq_url: str,
    topology: Topology,
) -> None:
    counselor = await running.add_staff("counselor")
    p = await seed_case(running.store, state="active", claimed_by=counselor.id)
    q = await seed_case(running.store, state="active", claimed_by=counselor.id)
    c = client()
    await c.login(counselor.email)
    _, _, page = await c.get(f"/cases/{p.id}")
    form_id = reply_form_id(page)
    form = {"text": "Pさんへの返事", "command_id": form_id}
    status, where, _ = await c.post(f"/cases/{p.id}/reply", form)
    assert (status, where) == (200, f"/cases/{p.id}?msg=sending")
    status, where, _ = await c.post(f"/cases/{p.id}/reply", form)  # the same form again
    assert (status, where) == (200, f"/cases/{p.id}?msg=sending")

    status, _, html = await c.post(
        f"/cases/{q.id}/reply", {"text": "Qさんへの返事", "command_id": form_id}
    )
    assert status == 409
    assert "別の相談" in html
    assert "Qさんへの返事" in html  # the draft is kept
    assert reply_form_id(html) != form_id

    status, _, html = await c.post(
        f"/cases/{q.id}/reply", {"text": "Qさんへの返事", "command_id": "made-up"}
    )
    assert status == 400
    assert "送りませんでした" in html

    commands = await wait_until(lambda: queued_send_texts(rabbitmq_url, topology))
    assert [(cmd.id, cmd.case_id, cmd.texts) for cmd in commands] == [
        (form_id, p.id, ["Pさんへの返事"])
    ]
    stored = await running.store.db[MESSAGES].find({"direction": "out"}).to_list()
    assert [(m["case_id"], m["text"], m["delivery"]) for m in stored] == [
        (p.id, "Pさんへの返事", "sending")
    ]


def _week(open_: str, last: str, close: str) -> dict[str, str]:
    """The weekly rows of the hours form with one session every day."""
    fields = {"w-holiday": "weekday"}
    for day in ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"):
        fields |= {f"w-{day}-0-open": open_, f"w-{day}-0-last": last, f"w-{day}-0-close": close}
    return fields


async def _signed_in_admin(
    running: RunningConsole, client: Callable[[], Browserless]
) -> tuple[Any, Browserless]:
    admin = await running.add_staff("admin")
    a = client()
    await a.login(admin.email)
    return admin, a


def _preview(page: str, section: str = "hours-preview") -> list[tuple[str, str]]:
    table = page[page.index(f'id="{section}"') :].split("</section>")[0]
    return re.findall(r"<tr><td>(.*?)</td><td>(.*?)</td></tr>", table)


async def test_the_hours_form_shows_the_hours_in_force_and_saving_it_unchanged_changes_nothing(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    _, a = await _signed_in_admin(running, client)
    _, _, page = await a.get("/admin/settings/hours")
    fields = form_fields(page, "hours-form")
    shipped = running.console.config.files.hours
    assert fields["p0-name"] == shipped.periods[0].name
    assert fields["p0-start"] == shipped.periods[0].start.isoformat()
    monday = shipped.weekly.monday[0]
    assert (fields["w-monday-0-open"], fields["w-monday-0-close"]) == (
        f"{monday.open:%H:%M}",
        f"{monday.close:%H:%M}",
    )
    assert fields["c0-start"] == shipped.closed_dates[0].start.isoformat()
    assert 'action="/admin/settings/hours/reset"' not in page

    status, where, _ = await a.post("/admin/settings/hours", {**fields, "action": "save"})
    assert (status, where) == (200, "/admin/settings/hours?msg=saved")
    assert await running.store.db[CONFIG_OVERRIDES].find_one({"_id": "hours"}) is None
    assert not running.facts_of(F.SETTINGS_CHANGED)


async def test_the_hours_page_previews_the_next_two_weeks_as_the_services_will_decide_them(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    admin, a = await _signed_in_admin(running, client)
    today = utcnow().astimezone(ZoneInfo("Asia/Tokyo")).date()
    tomorrow = today + timedelta(days=1)
    form = {
        "p0-name": "試験の期間",
        "p0-start": str(today - timedelta(days=1)),
        "p0-end": str(today + timedelta(days=40)),
        **_week("17:00", "20:30", "21:00"),
        "s0-date": str(tomorrow),
        "s0-note": "研修のため休み",
    }
    status, _, page = await a.post("/admin/settings/hours", {**form, "action": "preview"})
    assert status == 200
    draft = _preview(page, "hours-draft")
    assert draft[1] == (draft[1][0], "お休み")
    assert await running.store.db[CONFIG_OVERRIDES].find_one({"_id": "hours"}) is None

    status, _, _ = await a.post("/admin/settings/hours", {**form, "action": "save"})
    assert status == 200
    _, _, page = await a.get("/admin/settings/hours")
    rows = _preview(page)
    assert rows == draft
    assert len(rows) == 14
    assert rows[0][0].startswith(f"{today.month}月{today.day}日（")
    assert rows[0][1] == "17:00〜21:00（新しい相談は20:30まで）"
    assert rows[1] == (rows[1][0], "お休み")
    assert rows[1][0].startswith(f"{tomorrow.month}月{tomorrow.day}日（")
    assert all(openings == rows[0][1] for _, openings in rows[2:])
    fact = await running.wait_fact(F.SETTINGS_CHANGED, what="config.hours")
    assert fact.data["staff_id"] == admin.id
    assert fact.data["after"]["overrides"] == [
        {"date": str(tomorrow), "sessions": [], "note": "研修のため休み"}
    ]


async def test_a_mistake_in_the_hours_form_is_explained_in_japanese_naming_the_field(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    _, a = await _signed_in_admin(running, client)
    await a.get("/admin/settings/hours")
    wrong = {
        "p0-name": "令和8年度",
        "p0-start": "2027-04-01",
        "p0-end": "2027-03-31",
        **_week("17:00", "", "21:00"),
        "w-tuesday-0-open": "25:00",
        "w-wednesday-1-open": "20:00",
        "w-wednesday-1-close": "22:00",
        "c0-start": "2026-12-29",
        "c0-end": "2026-12-20",
        "s0-date": "2026-12-24",
        "s0-0-open": "17:00",
        "s0-0-close": "16:30",
        "action": "save",
    }
    status, _, page = await a.post("/admin/settings/hours", wrong)
    assert status == 400
    text = html.unescape(page)
    problems = re.findall(r"<li>(.*?)</li>", text[text.index('id="hours-problems"') :])
    assert problems[:5] == [
        "相談期間「令和8年度」の終わりの日が始まりの日より前になっています",
        "火曜日の始まりの時刻「25:00」は、00:00〜23:59 の 17:00 のように書いてください",
        "水曜日の時間帯 17:00〜21:00 と 20:00〜22:00 が重なっています",
        "休みの日（12月29日〜12月20日）の終わりの日が始まりの日より前になっています",
        "12月24日の終わりの時刻が始まりより前になっています",
    ]
    assert "must be" not in text
    shown = form_fields(page, "hours-form")
    assert (shown["s0-date"], shown["s0-0-close"]) == ("2026-12-24", "16:30")
    assert 'name="s0-0-close" value="16:30" aria-invalid="true"' in page
    assert await running.store.db[CONFIG_OVERRIDES].find_one({"_id": "hours"}) is None


async def test_adding_rows_to_the_hours_form_keeps_what_was_typed_and_saves_nothing(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    _, a = await _signed_in_admin(running, client)
    _, _, page = await a.get("/admin/settings/hours")
    fields = form_fields(page, "hours-form")
    assert "s1-date" not in fields
    typed = fields | {"s0-date": "2026-12-24", "s0-0-open": "13:00", "s0-0-close": "16:00"}
    status, _, page = await a.post("/admin/settings/hours", {**typed, "action": "more"})
    assert status == 200
    shown = form_fields(page, "hours-form")
    assert (shown["s0-date"], shown["s0-0-open"], shown["s0-0-close"]) == (
        "2026-12-24",
        "13:00",
        "16:00",
    )
    assert shown["s1-date"] == shown["s0-1-open"] == shown["s1-0-open"] == ""
    assert "s2-date" not in shown
    assert await running.store.db[CONFIG_OVERRIDES].find_one({"_id": "hours"}) is None


async def test_the_hours_form_without_the_sessions_csrf_token_is_refused_and_saves_nothing(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    _, a = await _signed_in_admin(running, client)
    _, _, page = await a.get("/admin/settings/hours")
    fields = form_fields(page, "hours-form") | {"s0-date": "2026-12-24", "action": "save"}
    assert fields["csrf_token"] == a.csrf
    status, _, _ = await a.post("/admin/settings/hours", {**fields, "csrf_token": "forged"})
    assert status == 403
    assert await running.store.db[CONFIG_OVERRIDES].find_one({"_id": "hours"}) is None


async def test_the_hours_page_never_shows_a_dump_with_null_and_keeps_the_files_comments(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    _, a = await _signed_in_admin(running, client)
    _, _, page = await a.get("/admin/settings/hours")
    fields = form_fields(page, "hours-form")
    fields["w-sunday-0-close"] = "20:45"
    status, _, _ = await a.post("/admin/settings/hours", {**fields, "action": "save"})
    assert status == 200
    assert await running.store.db[CONFIG_OVERRIDES].find_one({"_id": "hours"}) is not None

    _, _, page = await a.get("/admin/settings/hours")
    assert form_fields(page, "hours-form")["w-sunday-0-close"] == "20:45"
    assert "null" not in page
    assert '<textarea name="text"' not in page
    shown = html.unescape(page[page.index('id="hours-file"') :].split("</pre>")[0])
    assert "# 相談の実施期間と受付時間" in shown
    assert shown.split(">", 1)[1] == running.console.config.file_text("hours")

    assert "初期設定に戻す</button>" in page
    status, _, page = await a.post("/admin/settings/hours/reset")
    assert status == 200
    assert await running.store.db[CONFIG_OVERRIDES].find_one({"_id": "hours"}) is None
    assert "初期設定（サーバーの設定ファイルの内容）が使われています" in page
    assert form_fields(page, "hours-form")["w-sunday-0-close"] == "21:00"


async def test_the_yaml_saved_in_the_console_keeps_its_japanese_comments_when_shown_again(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    _, a = await _signed_in_admin(running, client)
    _, _, page = await a.get("/admin/settings/congestion")
    shipped = html.unescape(
        re.search(r'<textarea name="text"[^>]*>(.*?)</textarea>', page, re.S)[1]
    )
    assert "# 混雑の判定" in shipped
    edited = shipped.replace("max_waiting_cases: 20", "max_waiting_cases: 25", 1)
    edited = edited.replace("limits:\n", "# 冬休みの前に見直す\nlimits:\n")
    assert edited.count("# 冬休みの前に見直す") == 1
    assert "max_waiting_cases: 25" in edited

    status, _, _ = await a.post("/admin/settings/congestion", {"text": edited})
    assert status == 200
    _, _, page = await a.get("/admin/settings/congestion")
    shown = html.unescape(re.search(r'<textarea name="text"[^>]*>(.*?)</textarea>', page, re.S)[1])
    assert shown.strip() == edited.strip()
    assert "null" not in shown
