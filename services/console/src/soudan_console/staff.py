"""Staff accounts: creation, sign-in with lockout, passwords, second factor, roles."""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError
from soudan_shared import fact_types as F
from soudan_shared.contracts import utcnow

from soudan_console.core import Console
from soudan_console.domain import SECURITY, SIGN_IN_SOURCES, STAFF, Staff
from soudan_console.security import (
    hash_password,
    password_expired,
    password_problem,
    totp_counter,
    verify_password,
)

log = structlog.get_logger(__name__)


class StaffError(Exception):
    """A refusal to show on the form (Japanese)."""


def normalize_email(email: str) -> str:
    return email.strip().lower()


async def get_staff(console: Console, staff_id: str | None) -> Staff | None:
    if not staff_id:
        return None
    doc = await console.db[STAFF].find_one({"_id": staff_id})
    return Staff.model_validate(doc) if doc else None


async def all_staff(console: Console) -> list[Staff]:
    docs = await console.db[STAFF].find({}).sort("email", 1).to_list()
    return [Staff.model_validate(d) for d in docs]


async def staff_names(console: Console) -> dict[str, str]:
    docs = await console.db[STAFF].find({}, {"name": 1}).to_list()
    return {d["_id"]: d.get("name", "") for d in docs}


async def create_staff(
    console: Console,
    *,
    email: str,
    name: str,
    role: str,
    password: str,
    by: str,
    must_change: bool = True,
) -> Staff:
    email = normalize_email(email)
    if "@" not in email or len(email) > 200:
        raise StaffError("メールアドレスの形が正しくありません。")
    if not name.strip() or len(name) > 60:
        raise StaffError("名前を60文字以内で入れてください。")
    problem = password_problem(
        password,
        min_length=console.settings.console_password_min_length,
        email=email,
        user_inputs=(name,),
    )
    if problem:
        raise StaffError(problem)
    staff = Staff.model_validate(
        {
            "email": email,
            "name": name.strip(),
            "role": role,
            "password_hash": await hash_password(password),
            "password_changed_at": utcnow(),
            "must_change_password": must_change,
        }
    )
    try:
        await console.db[STAFF].insert_one(staff.to_document())
    except DuplicateKeyError:
        raise StaffError("このメールアドレスのアカウントはもうあります。") from None
    await console.emit(
        F.STAFF_CREATED, {"staff_id": staff.id, "role": role, "by": by, "name": staff.name}
    )
    return staff


async def bootstrap_admin(console: Console) -> Staff | None:
    """The first admin from CONSOLE_ADMIN_EMAIL / CONSOLE_ADMIN_PASSWORD, if no account exists."""
    s = console.settings
    if not s.console_admin_email or s.console_admin_password is None:
        return None
    if await console.db[STAFF].count_documents({}) > 0:
        return None
    try:
        staff = await create_staff(
            console,
            email=s.console_admin_email,
            name="管理者",
            role="admin",
            password=s.console_admin_password.get_secret_value(),
            by="bootstrap",
        )
    except StaffError as exc:
        log.error("bootstrap_admin_refused", reason=str(exc))
        return None
    log.info("bootstrap_admin_created", staff_id=staff.id)
    return staff


@dataclass
class SignIn:
    staff: Staff | None
    error: str | None = None
    retry_after: int | None = None  # seconds, when the client's address is refused for now


LOGIN_REFUSED = (
    "メールアドレスかパスワードがちがいます。失敗が続いたときは、しばらくログインを受け付けません。"
    "時間をおいてから試すか、管理者に連絡してください。"
)
LOCKED = (
    "確認コードの失敗が続いたため、しばらくログインを受け付けません。"
    "時間をおいてから試すか、管理者に連絡してください。"
)
WRONG_CODE = "確認コードがちがいます。アプリに出ている6けたの数字を入れてください。"
SOURCE_THROTTLED = (
    "この接続元からのログインの失敗が続いたため、しばらく受け付けません。"
    "時間をおいてから試すか、管理者に連絡してください。"
)
_background: set[asyncio.Task[None]] = set()


def _source_window(console: Console, source: str) -> tuple[str, datetime]:
    """The key of ``source``'s current window of failures, and when that window ends."""
    minutes = console.settings.console_source_failure_window_minutes
    width = minutes * 60
    start = int(utcnow().timestamp()) // width * width
    ends = datetime.fromtimestamp(start + width, UTC)
    return f"{source}|{start}", ends


def _seconds_until(moment: datetime) -> int:
    return max(1, int((moment - utcnow()).total_seconds()) + 1)


async def source_refused_until(console: Console, source: str) -> datetime | None:
    """The end of the window while ``source`` has used up its failed sign-ins; else None."""
    key, ends = _source_window(console, source)
    doc = await console.db[SIGN_IN_SOURCES].find_one({"_id": key})
    if doc is None or doc["failures"] < console.settings.console_source_failure_limit:
        return None
    return ends


async def count_source_failure(console: Console, source: str) -> None:
    key, ends = _source_window(console, source)
    await console.db[SIGN_IN_SOURCES].update_one(
        {"_id": key},
        {"$inc": {"failures": 1}, "$setOnInsert": {"source": source, "expires_at": ends}},
        upsert=True,
    )


# -- throttling the attempts on one account (ASVS 2.2.1) -----------------------------------------
#
# Failures are counted per e-mail address as typed (known or not, so an unknown address costs
# the same work), per address and client, and per address across clients. Too many stop the
# *attempts* for a while, never the person: a session already open stays open, and the answer
# is the same as for a wrong password, so nobody learns whether an account exists or is locked.


def _account_key(email: str) -> str:
    return "account|" + hashlib.sha256(normalize_email(email).encode()).hexdigest()[:32]


def _pair_key(email: str, source: str) -> str:
    return f"{_account_key(email)}|{source}"


async def _failures(console: Console, key: str) -> int:
    doc = await console.db[SIGN_IN_SOURCES].find_one({"_id": key})
    if doc is None or doc["expires_at"] <= utcnow():
        return 0
    return int(doc["failures"])


async def _bump(console: Console, key: str) -> int:
    """One more failure under ``key``; the count lasts the lockout time after the last one."""
    until = utcnow() + timedelta(minutes=console.settings.console_lockout_minutes)
    doc = await console.db[SIGN_IN_SOURCES].find_one({"_id": key})
    if doc is not None and doc["expires_at"] <= utcnow():
        await console.db[SIGN_IN_SOURCES].delete_one({"_id": key, "expires_at": doc["expires_at"]})
    updated = await console.db[SIGN_IN_SOURCES].find_one_and_update(
        {"_id": key},
        {"$inc": {"failures": 1}, "$set": {"expires_at": until}},
        upsert=True,
        return_document=ReturnDocument.AFTER,
    )
    return int((updated or {}).get("failures", 1))


async def attempts_locked(console: Console, email: str, source: str) -> bool:
    s = console.settings
    return (
        await _failures(console, _pair_key(email, source)) >= s.console_lockout_threshold
        or await _failures(console, _account_key(email)) >= s.console_account_failure_limit
    )


# -- browsers the account's owner signed in with (OWASP's "device cookies") -----------------------
#
# A full sign-in leaves a random token in a long-lived cookie of that browser; the store keeps
# only its hash, with the account it belongs to. Strangers' failures stop the attempts from an
# address or on an account, but never from a browser its owner signed in with before: that
# browser is held to its own count of failures instead (its failures count on the address and
# the account as well, so a stolen token buys only console_lockout_threshold guesses, then the
# browser is treated like any other until the next sign-in from it).

DEVICE_COOKIE = "soudan_device"
MAX_DEVICE_TOKENS = 5  # accounts remembered by one browser (a shared office computer)


def _device_key(token: str) -> str:
    return "device|" + hashlib.sha256(token.encode()).hexdigest()[:40]


def device_tokens(cookie: str | None) -> list[str]:
    if not cookie or len(cookie) > 60 * MAX_DEVICE_TOKENS:
        return []
    return [t for t in cookie.split(".") if 20 <= len(t) <= 60][:MAX_DEVICE_TOKENS]


async def trusted_device(console: Console, staff: Staff | None, tokens: list[str]) -> str | None:
    """The key of the browser's token for ``staff``, while it has failures to spare; else None.

    One look-up whenever the browser sends tokens, whoever the account (same work for all).
    """
    if not tokens:
        return None
    docs = (
        await console.db[SIGN_IN_SOURCES]
        .find({"_id": {"$in": [_device_key(t) for t in tokens]}})
        .to_list()
    )
    now = utcnow()
    for doc in docs:
        if (
            staff is not None
            and doc.get("staff_id") == staff.id
            and doc["expires_at"] > now
            and doc.get("failures", 0) < console.settings.console_lockout_threshold
        ):
            return str(doc["_id"])
    return None


async def remember_device(console: Console, staff: Staff, tokens: list[str]) -> str:
    """After a full sign-in: the browser's cookie value, with a fresh token for ``staff``.

    The browser's earlier token for this account is replaced (and forgotten), so each sign-in
    renews it and its count of failures starts again.
    """
    keys = {_device_key(t): t for t in tokens}
    mine = (
        await console.db[SIGN_IN_SOURCES]
        .find({"_id": {"$in": list(keys)}, "staff_id": staff.id}, {"_id": 1})
        .to_list()
    )
    for doc in mine:
        keys.pop(doc["_id"], None)
    await console.db[SIGN_IN_SOURCES].delete_many({"_id": {"$in": [d["_id"] for d in mine]}})
    token = secrets.token_urlsafe(32)
    days = console.settings.console_device_trust_days
    await console.db[SIGN_IN_SOURCES].insert_one(
        {
            "_id": _device_key(token),
            "staff_id": staff.id,
            "failures": 0,
            "expires_at": utcnow() + timedelta(days=days),
        }
    )
    return ".".join([token, *keys.values()][:MAX_DEVICE_TOKENS])


async def _stopped(console: Console, email: str, source: str, device: str | None) -> bool:
    """Are attempts on ``email`` from here refused now? Never from a trusted browser."""
    if device is not None:
        return False
    return await attempts_locked(console, email, source)


async def _failed(
    console: Console,
    email: str,
    source: str,
    staff: Staff | None,
    reason: str,
    device: str | None,
) -> None:
    """Count a failure on the address and the account, and on the trusted browser if any (so a
    stolen token buys no more guesses than an address does)."""
    if device is not None:
        await console.db[SIGN_IN_SOURCES].update_one({"_id": device}, {"$inc": {"failures": 1}})
    await count_failure(console, email, source, staff, reason)


async def count_failure(
    console: Console, email: str, source: str, staff: Staff | None, reason: str
) -> None:
    """Count a failed attempt on ``email`` from ``source``; at the limit, stop the attempts."""
    s = console.settings
    pair = await _bump(console, _pair_key(email, source))
    total = await _bump(console, _account_key(email))
    await _emit_failure(console, staff, reason, source)
    reached = pair == s.console_lockout_threshold or total == s.console_account_failure_limit
    if reached and staff is not None:
        _notify_locked(console, staff, source)


def _notify_locked(console: Console, staff: Staff, source: str) -> None:
    task = asyncio.create_task(_locked(console, staff, source), name="sign-in-locked")
    _background.add(task)
    task.add_done_callback(_background.discard)


async def _locked(console: Console, staff: Staff, source: str) -> None:
    """A lock happened: an audit fact, the admin page's badge, a notice to the owner and admins.

    Runs after the answer (the attempt that locks takes no longer than any other).
    """
    until = utcnow() + timedelta(minutes=console.settings.console_lockout_minutes)
    await console.db[STAFF].update_one({"_id": staff.id}, {"$set": {"locked_until": until}})
    await console.emit(F.LOCKED_OUT, {"staff_id": staff.id, "source": source})
    text = (
        f"{staff.name}さんのアカウントへのログインの失敗が続いたため、しばらくログインを"
        "受け付けないようにしました。ログイン中の画面はそのまま使えます。"
        "心当たりがないときは、管理者に知らせてください。"
    )
    console.hub.send("notice", {"type": "security.locked_out", "text": text}, roles=_ADMINS)
    if not console.mailer.configured:
        return
    admins = await console.db[STAFF].find({"role": "admin", "disabled": False}).to_list()
    recipients = sorted({staff.email, *(a["email"] for a in admins)})
    try:
        await console.mailer.send(recipients, "【相談窓口】ログインの失敗が続いています", text)
    except Exception as exc:  # a notice that cannot go out is logged, the lock holds anyway
        log.warning("lock_notice_failed", staff_id=staff.id, error=type(exc).__name__)


_ADMINS = frozenset({"admin"})


async def _emit_failure(console: Console, staff: Staff | None, reason: str, source: str) -> None:
    data = {"staff_id": staff.id if staff else None, "reason": reason, "source": source}
    await console.emit(F.LOGIN_FAILED, data)


async def authenticate(
    console: Console, email: str, password: str, source: str, devices: list[str] | None = None
) -> SignIn:
    """Check the password, with the same work and answer for every kind of failure.

    An address over ``console_source_failure_limit`` failures in the window is refused before
    the password is looked at (password spraying). Otherwise the password is always checked
    (against a dummy hash for an unknown address), and unknown, disabled, throttled and wrong
    all answer :data:`LOGIN_REFUSED`. ``devices`` are the browser's tokens from earlier
    sign-ins: a browser its owner signed in with is not stopped by strangers' failures.
    """
    email = normalize_email(email)[:200]
    doc = await console.db[STAFF].find_one({"email": email}) if email else None
    staff = Staff.model_validate(doc) if doc else None
    device = await trusted_device(console, staff, devices or [])
    refused_until = None if device else await source_refused_until(console, source)
    if refused_until is not None:
        await console.emit(
            F.LOGIN_FAILED, {"staff_id": None, "reason": "throttled", "source": source}
        )
        return SignIn(None, SOURCE_THROTTLED, retry_after=_seconds_until(refused_until))
    locked = await _stopped(console, email, source, device)
    right = await verify_password(staff.password_hash if staff else None, password)
    if staff is not None and right and not staff.disabled and not locked:
        return SignIn(staff)
    if staff is None:
        reason = "unknown_account"
    elif staff.disabled:
        reason = "disabled"
    elif locked:
        reason = "locked"
    else:
        reason = "bad_password"
    # Every failure does the same writes (a refused attempt while stopped counts too and keeps
    # the stop going), so neither the answer nor its time tells the cases apart.
    await count_source_failure(console, source)
    await _failed(console, email, source, staff, reason, device)
    return SignIn(None, LOGIN_REFUSED)


async def check_second_factor(
    console: Console, staff: Staff, code: str, source: str, devices: list[str] | None = None
) -> str | None:
    """None when ``code`` is right and unused; else the message for the form.

    Wrong codes count like wrong passwords; once the attempts are stopped the answer is
    :data:`LOCKED` (this person has shown the password already: nothing is given away).
    """
    device = await trusted_device(console, staff, devices or [])
    if await _stopped(console, staff.email, source, device):
        return LOCKED
    if await _take_code(console, staff, code):
        return None
    await count_source_failure(console, source)
    await _failed(console, staff.email, source, staff, "bad_second_factor", device)
    if await _stopped(
        console, staff.email, source, await trusted_device(console, staff, devices or [])
    ):
        return LOCKED
    return WRONG_CODE


async def _take_code(console: Console, staff: Staff, code: str) -> bool:
    """True when ``code`` is the staff member's current code and was not used before."""
    counter = totp_counter(staff.totp_secret or "", code)
    if counter is None:
        return False
    # A code is good once: the update only matches while its step is newer than the last.
    taken = await console.db[STAFF].find_one_and_update(
        {
            "_id": staff.id,
            "$or": [
                {"totp_last_counter": {"$exists": False}},
                {"totp_last_counter": {"$lt": counter}},
            ],
        },
        {"$set": {"totp_last_counter": counter}},
    )
    return taken is not None


REAUTH_REFUSED = "今のパスワードか確認コードがちがいます。"
REAUTH_LOCKED = (
    "今のパスワードの失敗が続いたため、しばらく受け付けません。"
    "時間をおいてから試すか、管理者に連絡してください。"
)


async def reauthenticate(
    console: Console,
    staff: Staff,
    password: str,
    code: str,
    source: str,
    devices: list[str] | None = None,
) -> str | None:
    """None when ``password`` (and, with a second factor, ``code``) are the current ones.

    Asked before the password or the second factor changes, so a session alone (a borrowed
    computer, a stolen cookie) cannot take the account over. Failures count like sign-in
    failures; the message says why, for the form.
    """
    device = await trusted_device(console, staff, devices or [])
    if await _stopped(console, staff.email, source, device):
        await _emit_failure(console, staff, "locked", source)
        return REAUTH_LOCKED
    right = await verify_password(staff.password_hash, password)
    if right and (not staff.totp_enabled or await _take_code(console, staff, code)):
        return None
    await count_source_failure(console, source)  # like a failed sign-in, in every count
    await _failed(console, staff.email, source, staff, "bad_reauthentication", device)
    if await _stopped(
        console, staff.email, source, await trusted_device(console, staff, devices or [])
    ):
        return REAUTH_LOCKED
    return REAUTH_REFUSED


async def login_succeeded(
    console: Console, staff: Staff, *, second_factor: bool, source: str = ""
) -> None:
    await console.db[STAFF].update_one(
        {"_id": staff.id}, {"$set": {"failed_logins": 0, "last_login_at": utcnow()}}
    )
    await console.db[SIGN_IN_SOURCES].delete_one({"_id": _pair_key(staff.email, source)})
    await console.emit(
        F.LOGIN_SUCCEEDED,
        {"staff_id": staff.id, "role": staff.role, "second_factor": second_factor},
    )


def needs_password_change(console: Console, staff: Staff) -> bool:
    return staff.must_change_password or password_expired(
        staff.password_changed_at, console.settings.console_password_max_age_days
    )


async def change_password(
    console: Console,
    staff: Staff,
    new_password: str,
    *,
    by: str,
    must_change: bool = False,
    reauthenticated: bool = False,
) -> None:
    """Set a new password: strong enough, and none of the last ``console_password_history``.

    One's own password changes only after :func:`reauthenticate` (``reauthenticated``): an
    admin's staff page does not set the admin's own password from the session alone.
    """
    if by == staff.id and not reauthenticated:
        raise StaffError(OWN_CREDENTIALS)
    problem = password_problem(
        new_password,
        min_length=console.settings.console_password_min_length,
        email=staff.email,
        user_inputs=(staff.name,),
    )
    if problem:
        raise StaffError(problem)
    keep = console.settings.console_password_history
    earlier = [staff.password_hash, *staff.password_history][:keep]
    # The NFKC form too: the old password typed with full-width letters is the same password.
    typed = {new_password, unicodedata.normalize("NFKC", new_password)}
    for old in earlier:
        if any([await verify_password(old, candidate) for candidate in typed]):
            raise StaffError(
                f"最近{keep}回のうちに使ったパスワードは使えません。新しいものにしてください。"
            )
    await console.db[STAFF].update_one(
        {"_id": staff.id},
        {
            "$set": {
                "password_hash": await hash_password(new_password),
                "password_history": earlier[: max(0, keep - 1)],
                "password_changed_at": utcnow(),
                "must_change_password": must_change,
                "failed_logins": 0,
                "locked_until": None,
            }
        },
    )
    await console.emit(F.PASSWORD_CHANGED, {"staff_id": staff.id, "by": by})


async def enable_second_factor(console: Console, staff: Staff, secret: str, code: str) -> bool:
    """Set (or replace) the second factor; the caller has re-authenticated the person."""
    counter = totp_counter(secret, code)
    if counter is None:
        return False
    await console.db[STAFF].update_one(
        {"_id": staff.id},
        {"$set": {"totp_secret": secret, "totp_enabled": True, "totp_last_counter": counter}},
    )
    await console.emit(
        F.SECOND_FACTOR_ENABLED, {"staff_id": staff.id, "replaced": staff.totp_enabled}
    )
    return True


async def set_role(console: Console, staff: Staff, role: str, *, by: str) -> None:
    if role == staff.role:
        return
    if staff.role == "admin" and await _last_admin(console, staff.id):
        raise StaffError("管理者が1人もいなくなるため、変更できません。")
    await console.db[STAFF].update_one({"_id": staff.id}, {"$set": {"role": role}})
    await console.emit(
        F.STAFF_ROLE_CHANGED, {"staff_id": staff.id, "before": staff.role, "after": role, "by": by}
    )
    await console.sessions.delete_for_staff(staff.id)


async def set_disabled(console: Console, staff: Staff, disabled: bool, *, by: str) -> None:
    if disabled and staff.role == "admin" and await _last_admin(console, staff.id):
        raise StaffError("管理者が1人もいなくなるため、使えなくすることはできません。")
    await console.db[STAFF].update_one({"_id": staff.id}, {"$set": {"disabled": disabled}})
    if disabled:
        await console.sessions.delete_for_staff(staff.id)
        await console.emit(F.STAFF_DISABLED, {"staff_id": staff.id, "by": by})
    else:
        await console.emit(F.STAFF_ENABLED, {"staff_id": staff.id, "by": by})


async def unlock(console: Console, staff: Staff, *, by: str) -> None:
    await console.db[STAFF].update_one(
        {"_id": staff.id}, {"$set": {"locked_until": None, "failed_logins": 0}}
    )
    key = _account_key(staff.email)
    await console.db[SIGN_IN_SOURCES].delete_many({"_id": {"$regex": f"^{re.escape(key)}"}})
    await console.emit(
        F.SETTINGS_CHANGED,
        {"what": f"staff.{staff.id}.locked", "before": True, "after": False, "staff_id": by},
    )


OWN_CREDENTIALS = (
    "自分のパスワードや2段階認証は、ここでは変えられません。"
    "「パスワードの変更」や「2段階認証の設定」で、今のパスワードと確認コードを入れて変えてください。"
)


async def reset_second_factor(console: Console, staff: Staff, *, by: str) -> None:
    """An admin takes off someone else's second factor (never their own: that needs
    re-authentication, on the second-factor page)."""
    if by == staff.id:
        raise StaffError(OWN_CREDENTIALS)
    await console.db[STAFF].update_one(
        {"_id": staff.id}, {"$set": {"totp_secret": None, "totp_enabled": False}}
    )
    await console.emit(F.SECOND_FACTOR_DISABLED, {"staff_id": staff.id, "by": by})


async def _last_admin(console: Console, staff_id: str) -> bool:
    others = await console.db[STAFF].count_documents(
        {"role": "admin", "disabled": False, "_id": {"$ne": staff_id}}
    )
    return bool(others == 0)


async def set_status(console: Console, staff: Staff, status: str) -> None:
    await console.db[STAFF].update_one({"_id": staff.id}, {"$set": {"status": status}})


# -- the console's own security settings -------------------------------------------------------


async def totp_required_roles(console: Console) -> list[str]:
    doc = await console.db[SECURITY].find_one({"_id": "security"})
    return list((doc or {}).get("totp_required_roles", []))


async def set_totp_required_roles(console: Console, roles: list[str], *, by: str) -> None:
    before = await totp_required_roles(console)
    if sorted(before) == sorted(roles):
        return
    await console.db[SECURITY].replace_one(
        {"_id": "security"}, {"_id": "security", "totp_required_roles": roles}, upsert=True
    )
    await console.emit(
        F.SETTINGS_CHANGED,
        {"what": "security.totp_required_roles", "before": before, "after": roles, "staff_id": by},
    )


def public(staff: Staff) -> dict[str, Any]:
    return {"id": staff.id, "name": staff.name, "role": staff.role}
