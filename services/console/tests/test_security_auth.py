"""Sign-in hardening (OWASP ASVS level 2): where sign-in leads, attempts, re-authentication,
password strength. Over plain HTTP on the real broker."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import pyotp
import pytest
from argon2 import PasswordHasher
from soudan_console.domain import STAFF
from soudan_console.security import use_hasher
from soudan_console.testing import (
    PASSWORD,
    Browserless,
    RunningConsole,
    use_cheap_password_hashing,
)
from soudan_shared import fact_types as F
from soudan_shared.testing.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

# Each is what the ``next`` parameter holds once the query string is decoded.
DISGUISED_NEXT_PAGES = [
    "/\t/evil.example/",
    "/\n/evil.example/",
    "/\r/evil.example/",
    "/\r\n/evil.example/",
    "\t//evil.example/",
    "/\\evil.example/",
    "\\\\evil.example/",
    "///evil.example/",
    "//evil.example/",
    "%2F%2Fevil.example/",
    "/%2F%2Fevil.example/",
    "/%5Cevil.example/",
    "/%2e%2e//evil.example/",
    "/.%2e//evil.example/",
    "/x/..//evil.example/",
    "/./%2Fevil.example/",
    "/\uff0f/evil.example/",
    "https://evil.example/",
    "https:evil.example",
    "http:/evil.example/",
    "javascript:alert(1)",
    "JaVaScRiPt:alert(1)",
    "//user@evil.example/",
    "/@evil.example/",
    "/queue@evil.example",
    " /evil.example/",
    "/evil.example/",
]


@pytest.mark.parametrize("target", DISGUISED_NEXT_PAGES)
async def test_a_sign_in_link_with_any_disguised_next_page_ends_on_the_console_queue(
    running: RunningConsole, client: Callable[[], Browserless], target: str
) -> None:
    counselor = await running.add_staff("counselor")
    c = client()
    _, _, page = await c.get("/login?next=" + quote(target, safe=""))
    carried = page.split('name="next" value="')[1].split('"')[0]
    for next_field in (carried, target):  # what the form carries, and a hand-made post
        await c.get("/login")
        form = {"csrf_token": c.csrf, "email": counselor.email, "password": PASSWORD}
        form["next"] = next_field
        async with c.http.post(
            running.url + "/login", data=form, allow_redirects=False
        ) as response:
            assert response.status == 303
            landed = urljoin(running.url + "/login", response.headers["Location"])
        assert urlsplit(landed).netloc == urlsplit(running.url).netloc
        assert urlsplit(landed).path == "/queue", (target, response.headers["Location"])


async def test_a_sign_in_link_to_a_console_page_still_leads_there(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    supervisor = await running.add_staff("supervisor")
    for target in ("/supervise", "/cases/0123abcd?msg=claimed", "/queue?view=mine"):
        c = client()
        _, _, page = await c.get("/login?next=" + quote(target, safe=""))
        carried = page.split('name="next" value="')[1].split('"')[0]
        form = {"csrf_token": c.csrf, "email": supervisor.email, "password": PASSWORD}
        async with c.http.post(
            running.url + "/login",
            data={**form, "next": carried.replace("&amp;", "&")},
            allow_redirects=False,
        ) as response:
            assert response.headers["Location"] == target


# -- item 8: weak and reused passwords ----------------------------------------------------------


async def _change_password(c: Browserless, current: str, new: str) -> tuple[int, str]:
    status, _, page = await c.post("/password", {"current": current, "new": new, "again": new})
    return status, _error_of(page)


def _error_of(page: str) -> str:
    """The form's error message, or "" when the page shows none."""
    if '<p class="error"' not in page:
        return ""
    return page.split('<p class="error"')[1].split(">", 1)[1].split("</p>")[0]


async def test_a_common_password_typed_in_full_width_letters_is_refused_as_common(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    counselor = await running.add_staff("counselor")
    c = client()
    await c.login(counselor.email)
    for weak in (
        "ｐａｓｓｗｏｒｄ１２３４",
        "ＱＷＥＲＴＹＵＩＯＰＡＳ",
        "１２３４５６７８９ａｂｃ",
    ):
        status, error = await _change_password(c, PASSWORD, weak)
        assert status == 400, weak
        assert "推測" in error or "よく使われて" in error, (weak, error)
    doc = await running.store.db[STAFF].find_one({"_id": counselor.id})
    assert doc["password_hash"] == counselor.password_hash
    assert running.facts_of(F.PASSWORD_CHANGED) == []


async def test_a_password_built_on_the_services_own_name_is_refused_saying_why(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    counselor = await running.add_staff("counselor")
    c = client()
    await c.login(counselor.email)
    for weak in ("Soudan2026!!", "soudan-console", "line-soudan-2026"):
        status, error = await _change_password(c, PASSWORD, weak)
        assert status == 400, weak
        assert "相談窓口の名前" in error, (weak, error)
    assert running.facts_of(F.PASSWORD_CHANGED) == []
    _, path, _ = await c.post(
        "/password",
        {"current": PASSWORD, "new": "blue-line-tiger-moon", "again": "blue-line-tiger-moon"},
    )
    assert path.startswith("/queue?msg=password_changed")


async def test_the_previous_password_typed_in_full_width_letters_counts_as_used_before(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    counselor = await running.add_staff("counselor")
    c = client()
    await c.login(counselor.email)
    wide = "".join(chr(ord(ch) + 0xFEE0) for ch in PASSWORD)  # ｓａｋｕｒａ－…
    status, error = await _change_password(c, PASSWORD, wide)
    assert status == 400
    assert "使ったパスワードは使えません" in error
    assert running.facts_of(F.PASSWORD_CHANGED) == []


# -- item 6: re-authentication before a credential changes ----------------------------------------


async def _signed_in_with_second_factor(
    running: RunningConsole, c: Browserless, role: str
) -> tuple[Any, pyotp.TOTP]:
    totp = pyotp.TOTP(pyotp.random_base32())
    staff = await running.add_staff(role, totp_secret=totp.secret, totp_enabled=True)
    await c.login(staff.email)
    await c.post("/login/second-factor", {"code": totp.now()})
    # The next code may be the same step again in a fast test: let it count once more.
    await running.store.db[STAFF].update_one({"_id": staff.id}, {"$set": {"totp_last_counter": 0}})
    return staff, totp


async def test_an_admin_cannot_take_off_their_own_second_factor_from_the_staff_page(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    a = client()
    admin, _ = await _signed_in_with_second_factor(running, a, "admin")
    status, _, page = await a.post(f"/admin/staff/{admin.id}/reset-second-factor")
    assert status == 400
    assert "今のパスワードと確認コード" in _error_of(page)
    doc = await running.store.db[STAFF].find_one({"_id": admin.id})
    assert doc["totp_enabled"] is True
    assert running.facts_of(F.SECOND_FACTOR_DISABLED) == []


async def test_an_admin_resets_another_persons_password_or_second_factor_only_with_their_own(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    a = client()
    admin, totp = await _signed_in_with_second_factor(running, a, "admin")
    counselor = await running.add_staff(
        "counselor", totp_secret=pyotp.random_base32(), totp_enabled=True
    )
    new = {"password": "temporary-quiet-harbor-7"}

    # The session alone, the admin's password without the code, a wrong one: nothing changes
    # (three failures, under the lock's five).
    wrong = {"current": "wrong-password-123", "current_code": totp.now()}
    for action, form in (
        ("reset-password", new),
        ("reset-second-factor", {"current": PASSWORD}),
        ("reset-password", {**new, **wrong}),
    ):
        status, _, page = await a.post(f"/admin/staff/{counselor.id}/{action}", form)
        assert status == 400, (action, form)
        assert "今のパスワードか確認コードがちがいます" in _error_of(page)
    doc = await running.store.db[STAFF].find_one({"_id": counselor.id})
    assert doc["password_hash"] == counselor.password_hash
    assert doc["totp_enabled"] is True
    assert running.facts_of(F.PASSWORD_CHANGED) == []
    assert running.facts_of(F.SECOND_FACTOR_DISABLED) == []

    # With the admin's own password and code, each is done and audited.
    _, path, _ = await a.post(
        f"/admin/staff/{counselor.id}/reset-password",
        {**new, "current": PASSWORD, "current_code": totp.now()},
    )
    assert path == "/admin/staff?msg=staff_reset-password"
    await running.wait_fact(F.PASSWORD_CHANGED, staff_id=counselor.id, by=admin.id)
    await running.store.db[STAFF].update_one({"_id": admin.id}, {"$set": {"totp_last_counter": 0}})
    _, path, _ = await a.post(
        f"/admin/staff/{counselor.id}/reset-second-factor",
        {"current": PASSWORD, "current_code": totp.now()},
    )
    assert path == "/admin/staff?msg=staff_reset-second-factor"
    await running.wait_fact(F.SECOND_FACTOR_DISABLED, staff_id=counselor.id, by=admin.id)


def _another_code(totp: pyotp.TOTP) -> str:
    """A well-formed code that is not the current one."""
    return f"{(int(totp.now()) + 1) % 1_000_000:06d}"


# action, the target's fields at the start, the form, the fact it leaves, the target afterwards
STAFF_CHANGES = {
    "role": ({}, {"role": "admin"}, F.STAFF_ROLE_CHANGED, {"role": "admin"}),
    "disable": ({}, {}, F.STAFF_DISABLED, {"disabled": True}),
    "enable": ({"disabled": True}, {}, F.STAFF_ENABLED, {"disabled": False}),
}


@pytest.mark.parametrize("action", list(STAFF_CHANGES))
async def test_an_admin_changes_a_role_or_turns_an_account_off_or_on_only_with_their_own_password(
    running: RunningConsole, client: Callable[[], Browserless], action: str
) -> None:
    start, form, fact, after = STAFF_CHANGES[action]
    a = client()
    admin, totp = await _signed_in_with_second_factor(running, a, "admin")
    counselor = await running.add_staff("counselor", **start)
    disabled = bool(start.get("disabled"))
    c = client()
    if not disabled:
        assert (await c.login(counselor.email))[1] == "/queue"

    # The session alone, the password without the code, a wrong password, a wrong code: refused
    # with the same message as the other re-authentications (four failures, under the lock's five).
    for reauth in (
        {},
        {"current": PASSWORD},
        {"current": "wrong-password-123", "current_code": totp.now()},
        {"current": PASSWORD, "current_code": _another_code(totp)},
    ):
        status, _, page = await a.post(f"/admin/staff/{counselor.id}/{action}", {**form, **reauth})
        assert status == 400, reauth
        assert _error_of(page) == f"{counselor.name}: 今のパスワードか確認コードがちがいます。"
    doc = await running.store.db[STAFF].find_one({"_id": counselor.id})
    assert (doc["role"], doc["disabled"]) == ("counselor", disabled)
    assert running.facts_of(fact) == []
    if not disabled:  # the person's session goes on
        assert (await c.get("/queue"))[1] == "/queue"

    _, path, _ = await a.post(
        f"/admin/staff/{counselor.id}/{action}",
        {**form, "current": PASSWORD, "current_code": totp.now()},
    )
    assert path == f"/admin/staff?msg=staff_{action}"
    await running.wait_fact(fact, staff_id=counselor.id, by=admin.id)
    doc = await running.store.db[STAFF].find_one({"_id": counselor.id})
    assert {key: doc[key] for key in after} == after
    if action == "enable":
        assert (await c.login(counselor.email))[1] == "/queue"
    else:  # a new role or a disabled account ends the person's session
        assert (await c.get("/queue"))[1].startswith("/login")


async def test_a_new_account_is_made_only_with_the_admins_own_password_and_code(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    a = client()
    admin, totp = await _signed_in_with_second_factor(running, a, "admin")
    new = {"email": "new-admin@example.jp", "name": "新しい 管理者", "role": "admin"}
    new["password"] = "temporary-quiet-harbor-7"
    for reauth in (
        {},
        {"current": "wrong-password-123", "current_code": totp.now()},
        {"current": PASSWORD, "current_code": _another_code(totp)},
    ):
        status, _, page = await a.post("/admin/staff", {**new, **reauth})
        assert status == 400, reauth
        assert _error_of(page) == "今のパスワードか確認コードがちがいます。"
        # What was typed stays in the form (the chosen role too), but no password.
        assert 'value="new-admin@example.jp"' in page
        assert '<option value="admin" selected>' in page
        assert "wrong-password-123" not in page
    assert await running.store.db[STAFF].find_one({"email": new["email"]}) is None
    assert [f for f in running.facts_of(F.STAFF_CREATED) if f.data["by"] == admin.id] == []

    _, path, _ = await a.post(
        "/admin/staff", {**new, "current": PASSWORD, "current_code": totp.now()}
    )
    assert path == "/admin/staff?msg=staff_created"
    created = await running.wait_fact(F.STAFF_CREATED, role="admin", by=admin.id)
    doc = await running.store.db[STAFF].find_one({"email": new["email"]})
    assert (doc["_id"], doc["role"]) == (created.data["staff_id"], "admin")


async def test_wrong_admin_passwords_on_the_staff_page_count_toward_the_address_wide_limit(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    admin, counselor = await running.add_staff("admin"), await running.add_staff("counselor")
    other = await running.add_staff("counselor")
    a = client()  # an admin's session in someone else's hands, guessing the admin's password
    a.http.headers["X-Forwarded-For"] = "203.0.113.9"
    await a.login(admin.email)
    for action, form in (
        ("role", {"role": "admin"}),
        ("disable", {}),
        ("role", {"role": "supervisor"}),
    ):
        status, _, _ = await a.post(
            f"/admin/staff/{counselor.id}/{action}", {**form, "current": "a-guess-at-it-1"}
        )
        assert status == 400
    await running.wait_fact(F.LOGIN_FAILED, staff_id=admin.id, reason="bad_reauthentication")
    same_place = client()
    same_place.http.headers["X-Forwarded-For"] = "203.0.113.9"
    status, _, page = await same_place.login(other.email)
    assert status == 429
    assert "この接続元からのログインの失敗が続いたため" in _error_of(page)
    doc = await running.store.db[STAFF].find_one({"_id": counselor.id})
    assert (doc["role"], doc["disabled"]) == ("counselor", False)


async def test_an_admin_cannot_set_their_own_password_from_the_staff_page(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    admin = await running.add_staff("admin")
    a = client()
    await a.login(admin.email)
    status, _, page = await a.post(
        f"/admin/staff/{admin.id}/reset-password", {"password": "temporary-quiet-harbor-7"}
    )
    assert status == 400
    assert "今のパスワードと確認コード" in _error_of(page)
    doc = await running.store.db[STAFF].find_one({"_id": admin.id})
    assert doc["password_hash"] == admin.password_hash
    assert running.facts_of(F.PASSWORD_CHANGED) == []


async def test_replacing_the_second_factor_signs_out_the_accounts_other_sessions(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    c = client()
    counselor, old = await _signed_in_with_second_factor(running, c, "counselor")
    other = client()  # the same person signed in elsewhere (or someone with a stolen session)
    await other.login(counselor.email)
    _, path, _ = await other.post("/login/second-factor", {"code": old.now()})
    assert path == "/queue"
    await running.store.db[STAFF].update_one(
        {"_id": counselor.id}, {"$set": {"totp_last_counter": 0}}
    )
    _, _, page = await c.get("/account/second-factor")
    new = pyotp.TOTP(page.split('name="secret" value="')[1].split('"')[0])
    _, path, _ = await c.post(
        "/account/second-factor",
        {"secret": new.secret, "code": new.now(), "current": PASSWORD, "current_code": old.now()},
    )
    assert path.startswith("/queue")
    await running.wait_fact(F.SECOND_FACTOR_ENABLED, staff_id=counselor.id, replaced=True)
    assert (await other.get("/queue"))[1].startswith("/login")
    assert (await c.get("/queue"))[1] == "/queue"


# -- item 5: strangers' failures stop attempts, never the person ----------------------------------


@pytest.fixture
def console_overrides(request: pytest.FixtureRequest) -> dict[str, Any]:
    if "from_many_addresses" in request.node.name or "same_time" in request.node.name:
        return {"trusted_proxies": "127.0.0.1", "console_account_failure_limit": 8}
    if "address_wide_limit" in request.node.name:
        return {"trusted_proxies": "127.0.0.1", "console_source_failure_limit": 3}
    if "smtp_server" in request.fixturenames:
        _, port = request.getfixturevalue("smtp_server")
        return {"smtp_host": "127.0.0.1", "smtp_port": port, "smtp_starttls": False}
    return {}


async def test_strangers_using_up_the_attempts_at_the_owners_address_do_not_keep_the_owner_out(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    # Without a trusted proxy every browser here is 127.0.0.1: one school's or office's address.
    counselor = await running.add_staff("counselor")
    owner = client()
    assert (await owner.login(counselor.email))[1] == "/queue"
    await owner.post("/logout")

    stranger = client()
    s = running.settings
    for _ in range(max(s.console_lockout_threshold, s.console_source_failure_limit) + 2):
        status, _, _ = await stranger.login(counselor.email, "a-guess-at-it-2026")
        assert status in (401, 429)
    assert (await stranger.login(counselor.email))[1].startswith("/login")  # stopped there
    await running.wait_fact(F.LOCKED_OUT, staff_id=counselor.id)

    _, path, _ = await owner.login(counselor.email)  # the owner's own browser still gets in
    assert path == "/queue"
    assert (await client().login(counselor.email))[1].startswith("/login")  # nobody else does


async def test_an_account_guessed_at_from_many_addresses_still_lets_its_owner_in_from_their_browser(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    counselor = await running.add_staff("counselor")
    owner = client()
    owner.http.headers["X-Forwarded-For"] = "198.51.100.20"
    assert (await owner.login(counselor.email))[1] == "/queue"
    await owner.post("/logout")
    for n in range(running.settings.console_account_failure_limit + 2):
        stranger = client()
        stranger.http.headers["X-Forwarded-For"] = f"203.0.113.{n + 1}"
        assert (await stranger.login(counselor.email, "a-guess-at-it-2026"))[0] == 401
    newcomer = client()  # the right password from a new browser: the account is stopped
    newcomer.http.headers["X-Forwarded-For"] = "203.0.113.200"
    assert (await newcomer.login(counselor.email))[1].startswith("/login")
    assert (await owner.login(counselor.email))[1] == "/queue"


async def test_a_remembered_browser_gets_only_the_usual_few_wrong_passwords(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    counselor = await running.add_staff("counselor")
    owner = client()
    assert (await owner.login(counselor.email))[1] == "/queue"
    await owner.post("/logout")
    for _ in range(running.settings.console_lockout_threshold):
        assert (await owner.login(counselor.email, "a-guess-at-it-2026"))[0] == 401
    status, path, page = await owner.login(counselor.email)
    assert (status, path) == (401, "/login")
    assert "メールアドレスかパスワードがちがいます" in _error_of(page)
    await running.wait_fact(F.LOCKED_OUT, staff_id=counselor.id)


async def test_a_lock_is_mailed_to_the_account_owner_and_the_admins(
    running: RunningConsole, client: Callable[[], Browserless], smtp_server: Any
) -> None:
    inbox, _ = smtp_server
    admin = await running.add_staff("admin")
    counselor = await running.add_staff("counselor")
    stranger = client()
    for _ in range(running.settings.console_lockout_threshold):
        await stranger.login(counselor.email, "a-guess-at-it-2026")
    await running.wait_fact(F.LOCKED_OUT, staff_id=counselor.id)
    await wait_until(lambda: len(inbox.messages) >= 1, timeout=10, message="the lock notice")
    mail = inbox.messages[0]
    assert {counselor.email, admin.email} <= set(mail["To"].replace(" ", "").split(","))
    assert "ログインの失敗が続いています" in str(mail["Subject"])
    assert "a-guess-at-it" not in mail.get_content()


async def test_unknown_locked_disabled_and_wrong_password_sign_ins_take_the_same_time(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    # Hashing as costly as it gets in a test (production's costs ~0.3 s here), so that a
    # skipped check would show; every account is created under it.
    use_hasher(PasswordHasher(time_cost=2, memory_cost=32 * 1024, parallelism=1))
    try:
        wrong = await running.add_staff("counselor")
        locked = await running.add_staff("counselor")
        disabled = await running.add_staff("counselor", disabled=True)
        locker = client()
        locker.http.headers["X-Forwarded-For"] = "192.0.2.1"
        for _ in range(running.settings.console_lockout_threshold):
            await locker.login(locked.email, "a-guess-at-it-2026")
        cases = {
            "wrong": (wrong.email, "a-guess-at-it-2026"),
            "locked": (locked.email, PASSWORD),
            "unknown": ("nobody@example.jp", PASSWORD),
            "disabled": (disabled.email, PASSWORD),
        }
        took: dict[str, list[float]] = {case: [] for case in cases}
        for n in range(7):
            for case, (email, password) in cases.items():
                c = locker if case == "locked" else client()
                if case != "locked":
                    c.http.headers["X-Forwarded-For"] = f"203.0.113.{n * 4 + len(took[case]) + 1}"
                await c.get("/login")
                began = time.perf_counter()
                status, _, page = await c.post("/login", {"email": email, "password": password})
                took[case].append(time.perf_counter() - began)
                assert status == 401, case
                assert "メールアドレスかパスワードがちがいます" in _error_of(page)
    finally:
        use_cheap_password_hashing()
    baseline = statistics.median(took["wrong"])
    for case in ("locked", "unknown", "disabled"):
        ratio = statistics.median(took[case]) / baseline
        assert 0.5 <= ratio <= 2.0, (case, ratio, took)


# -- item 7: guessing the current password -------------------------------------------------------


async def test_wrong_current_passwords_count_toward_the_address_wide_limit_like_failed_sign_ins(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    holder, other = await running.add_staff("counselor"), await running.add_staff("counselor")
    c = client()  # a session in someone else's hands, guessing its password
    c.http.headers["X-Forwarded-For"] = "203.0.113.9"
    await c.login(holder.email)
    change = {"new": "a-brand-new-long-passphrase", "again": "a-brand-new-long-passphrase"}
    for guess in ("a-guess-at-it-1", "a-guess-at-it-2", "a-guess-at-it-3"):
        status, _, _ = await c.post("/password", {**change, "current": guess})
        assert status == 400
    await running.wait_fact(F.LOGIN_FAILED, staff_id=holder.id, reason="bad_reauthentication")
    same_place = client()
    same_place.http.headers["X-Forwarded-For"] = "203.0.113.9"
    status, _, page = await same_place.login(other.email)
    assert status == 429
    assert "この接続元からのログインの失敗が続いたため" in _error_of(page)
    assert (await c.get("/queue"))[1] == "/queue"  # the guessing never ends the session itself
