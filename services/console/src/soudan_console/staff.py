"""Staff accounts: creation, sign-in with lockout, passwords, second factor, roles."""

from __future__ import annotations

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
        password, min_length=console.settings.console_password_min_length, email=email
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
    await console.emit(F.STAFF_CREATED, {"staff_id": staff.id, "role": role, "by": by})
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


LOGIN_REFUSED = "メールアドレスかパスワードがちがいます。"
LOCKED = (
    "ログインの失敗が続いたため、このアカウントはしばらく使えません。"
    "時間をおいてから試すか、管理者に連絡してください。"
)


SOURCE_THROTTLED = (
    "この接続元からのログインの失敗が続いたため、しばらく受け付けません。"
    "時間をおいてから試すか、管理者に連絡してください。"
)


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


async def authenticate(console: Console, email: str, password: str, source: str) -> SignIn:
    """Check the password; count failures and lock the account after too many.

    Failures are also counted per client address, across accounts: an address over
    ``console_source_failure_limit`` in the window is refused before any password is checked
    (guessing one password against many accounts never locks any of them).
    """
    refused_until = await source_refused_until(console, source)
    if refused_until is not None:
        await console.emit(
            F.LOGIN_FAILED, {"staff_id": None, "reason": "throttled", "source": source}
        )
        return SignIn(None, SOURCE_THROTTLED, retry_after=_seconds_until(refused_until))
    result = await _authenticate(console, email, password, source)
    if result.staff is None:
        await count_source_failure(console, source)
    return result


async def _authenticate(console: Console, email: str, password: str, source: str) -> SignIn:
    email = normalize_email(email)
    doc = await console.db[STAFF].find_one({"email": email}) if email else None
    if doc is None:
        await verify_password(None, password)
        await console.emit(
            F.LOGIN_FAILED, {"staff_id": None, "reason": "unknown_account", "source": source}
        )
        return SignIn(None, LOGIN_REFUSED)
    staff = Staff.model_validate(doc)
    now = utcnow()
    if staff.disabled:
        await console.emit(
            F.LOGIN_FAILED, {"staff_id": staff.id, "reason": "disabled", "source": source}
        )
        return SignIn(None, LOGIN_REFUSED)
    if staff.locked_until is not None and staff.locked_until > now:
        await console.emit(
            F.LOGIN_FAILED, {"staff_id": staff.id, "reason": "locked", "source": source}
        )
        return SignIn(None, LOCKED)
    if not await verify_password(staff.password_hash, password):
        return await record_failure(console, staff, "bad_password", source)
    return SignIn(staff)


async def record_failure(console: Console, staff: Staff, reason: str, source: str) -> SignIn:
    s = console.settings
    updated = await console.db[STAFF].find_one_and_update(
        {"_id": staff.id},
        {"$inc": {"failed_logins": 1}},
        return_document=ReturnDocument.AFTER,
    )
    failures = int((updated or {}).get("failed_logins", 0))
    await console.emit(F.LOGIN_FAILED, {"staff_id": staff.id, "reason": reason, "source": source})
    if failures >= s.console_lockout_threshold:
        until = utcnow() + timedelta(minutes=s.console_lockout_minutes)
        await console.db[STAFF].update_one(
            {"_id": staff.id}, {"$set": {"locked_until": until, "failed_logins": 0}}
        )
        await console.emit(F.LOCKED_OUT, {"staff_id": staff.id, "source": source})
        await console.sessions.delete_for_staff(staff.id)
        return SignIn(None, LOCKED)
    return SignIn(None, LOGIN_REFUSED)


async def check_second_factor(console: Console, staff: Staff, code: str, source: str) -> str | None:
    """None when ``code`` is right and unused; else the message for the form."""
    if staff.locked_until is not None and staff.locked_until > utcnow():
        return LOCKED
    counter = totp_counter(staff.totp_secret or "", code)
    if counter is not None:
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
        if taken is not None:
            return None
    result = await record_failure(console, staff, "bad_second_factor", source)
    return result.error or "確認コードがちがいます。"


async def login_succeeded(console: Console, staff: Staff, *, second_factor: bool) -> None:
    await console.db[STAFF].update_one(
        {"_id": staff.id},
        {"$set": {"failed_logins": 0, "locked_until": None, "last_login_at": utcnow()}},
    )
    await console.emit(
        F.LOGIN_SUCCEEDED,
        {"staff_id": staff.id, "role": staff.role, "second_factor": second_factor},
    )


def needs_password_change(console: Console, staff: Staff) -> bool:
    return staff.must_change_password or password_expired(
        staff.password_changed_at, console.settings.console_password_max_age_days
    )


async def change_password(
    console: Console, staff: Staff, new_password: str, *, by: str, must_change: bool = False
) -> None:
    problem = password_problem(
        new_password, min_length=console.settings.console_password_min_length, email=staff.email
    )
    if problem:
        raise StaffError(problem)
    if by == staff.id and await verify_password(staff.password_hash, new_password):
        raise StaffError("今と同じパスワードは使えません。新しいものにしてください。")
    await console.db[STAFF].update_one(
        {"_id": staff.id},
        {
            "$set": {
                "password_hash": await hash_password(new_password),
                "password_changed_at": utcnow(),
                "must_change_password": must_change,
                "failed_logins": 0,
                "locked_until": None,
            }
        },
    )
    await console.emit(F.PASSWORD_CHANGED, {"staff_id": staff.id, "by": by})


async def enable_second_factor(console: Console, staff: Staff, secret: str, code: str) -> bool:
    counter = totp_counter(secret, code)
    if counter is None:
        return False
    await console.db[STAFF].update_one(
        {"_id": staff.id},
        {"$set": {"totp_secret": secret, "totp_enabled": True, "totp_last_counter": counter}},
    )
    await console.emit(F.SECOND_FACTOR_ENABLED, {"staff_id": staff.id})
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
    await console.emit(
        F.SETTINGS_CHANGED,
        {"what": f"staff.{staff.id}.locked", "before": True, "after": False, "staff_id": by},
    )


async def reset_second_factor(console: Console, staff: Staff, *, by: str) -> None:
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
