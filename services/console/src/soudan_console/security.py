"""Passwords, second factor, server-side sessions and the password policy (運営要領 第7).

Passwords are hashed with argon2id (argon2-cffi's defaults); hashing runs in a worker thread so
a login does not stall everybody else's page. Sessions live in the store: the cookie holds a
random token and the store only its HMAC, so a copy of the database opens no session.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from soudan_shared.contracts import utcnow

from soudan_console.domain import SESSIONS

COOKIE = "soudan_session"
MAX_PASSWORD_LENGTH = 256
TOTP_ISSUER = "Soudan"

_hasher = PasswordHasher()  # argon2id, RFC 9106's second recommended parameters
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


def use_hasher(hasher: PasswordHasher) -> None:
    """Swap the hasher (tests use cheaper argon2id parameters; stored hashes carry their own)."""
    global _hasher, _DUMMY_HASH
    _hasher = hasher
    _DUMMY_HASH = hasher.hash(secrets.token_hex(16))


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(password_hash: str | None, password: str) -> bool:
    """True when ``password`` matches; an unknown account costs the same time as a wrong one."""

    def check() -> bool:
        try:
            return _hasher.verify(password_hash or _DUMMY_HASH, password) and bool(password_hash)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(check)


def password_problem(password: str, *, min_length: int, email: str = "") -> str | None:
    """Why ``password`` is not acceptable, in Japanese for the form; None when it is."""
    if len(password) < min_length:
        return f"パスワードは{min_length}文字以上にしてください。"
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"パスワードは{MAX_PASSWORD_LENGTH}文字以内にしてください。"
    if email and password.strip().lower() == email.strip().lower():
        return "メールアドレスと同じパスワードは使えません。"
    if len(set(password)) < 4:
        return "同じ文字のくり返しが多すぎます。ほかの人に推測されにくいものにしてください。"
    return None


def password_expired(changed_at: datetime, max_age_days: int, now: datetime | None = None) -> bool:
    return (now or utcnow()) - changed_at >= timedelta(days=max_age_days)


# -- TOTP -------------------------------------------------------------------------------------


def new_totp_secret() -> str:
    return pyotp.random_base32()


def totp_uri(secret: str, email: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=TOTP_ISSUER)


def totp_counter(secret: str, code: str, *, now: datetime | None = None) -> int | None:
    """The time step ``code`` belongs to (±1 step of clock drift), or None if it is wrong."""
    code = "".join(code.split())
    if not code.isdigit() or len(code) != 6:
        return None
    totp = pyotp.TOTP(secret)
    at = now or utcnow()
    for drift in (0, -1, 1):
        moment = at + timedelta(seconds=drift * totp.interval)
        if hmac.compare_digest(totp.at(moment), code):
            return int(totp.timecode(moment))
    return None


# -- sessions ---------------------------------------------------------------------------------

Stage = Literal["anonymous", "second_factor", "full"]


@dataclass
class Session:
    key: str
    token: str
    staff_id: str | None
    stage: Stage
    csrf: str
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime


class Sessions:
    """Server-side sessions with an idle timeout and an absolute lifetime."""

    TOUCH_EVERY = timedelta(seconds=60)

    def __init__(
        self, db: Any, *, secret: bytes | None, idle: timedelta, lifetime: timedelta
    ) -> None:
        self._collection = db[SESSIONS]
        self._secret = secret
        self.idle = idle
        self.lifetime = lifetime

    def _key(self, token: str) -> str:
        if self._secret:
            return hmac.new(self._secret, token.encode(), hashlib.sha256).hexdigest()
        return hashlib.sha256(token.encode()).hexdigest()

    async def create(self, staff_id: str | None, stage: Stage) -> Session:
        token = secrets.token_urlsafe(32)
        now = utcnow()
        lifetime = self.lifetime if stage == "full" else min(self.lifetime, timedelta(hours=1))
        session = Session(
            key=self._key(token),
            token=token,
            staff_id=staff_id,
            stage=stage,
            csrf=secrets.token_urlsafe(32),
            created_at=now,
            last_seen_at=now,
            expires_at=now + lifetime,
        )
        await self._collection.insert_one(
            {
                "_id": session.key,
                "staff_id": staff_id,
                "stage": stage,
                "csrf": session.csrf,
                "created_at": now,
                "last_seen_at": now,
                "expires_at": session.expires_at,
            }
        )
        return session

    async def load(self, token: str | None) -> Session | None:
        if not token or len(token) > 100:
            return None
        key = self._key(token)
        doc = await self._collection.find_one({"_id": key})
        if doc is None:
            return None
        now = utcnow()
        if doc["expires_at"] <= now or now - doc["last_seen_at"] >= self.idle:
            await self._collection.delete_one({"_id": key})
            return None
        return Session(
            key=key,
            token=token,
            staff_id=doc.get("staff_id"),
            stage=doc["stage"],
            csrf=doc["csrf"],
            created_at=doc["created_at"],
            last_seen_at=doc["last_seen_at"],
            expires_at=doc["expires_at"],
        )

    async def touch(self, session: Session) -> None:
        now = utcnow()
        if now - session.last_seen_at >= self.TOUCH_EVERY:
            session.last_seen_at = now
            await self._collection.update_one({"_id": session.key}, {"$set": {"last_seen_at": now}})

    async def delete(self, session: Session) -> None:
        await self._collection.delete_one({"_id": session.key})

    async def delete_for_staff(self, staff_id: str, *, keep: str | None = None) -> None:
        query: dict[str, Any] = {"staff_id": staff_id}
        if keep is not None:
            query["_id"] = {"$ne": keep}
        await self._collection.delete_many(query)

    async def online_staff(self) -> dict[str, datetime]:
        """Staff with a live full session, with when each was last seen."""
        since = utcnow() - self.idle
        docs = await self._collection.find(
            {"stage": "full", "last_seen_at": {"$gt": since}, "expires_at": {"$gt": utcnow()}}
        ).to_list()
        seen: dict[str, datetime] = {}
        for doc in docs:
            staff_id = doc.get("staff_id")
            if staff_id and (staff_id not in seen or doc["last_seen_at"] > seen[staff_id]):
                seen[staff_id] = doc["last_seen_at"]
        return seen

    async def purge_expired(self) -> int:
        now = utcnow()
        result = await self._collection.delete_many(
            {"$or": [{"expires_at": {"$lte": now}}, {"last_seen_at": {"$lte": now - self.idle}}]}
        )
        return int(result.deleted_count)
