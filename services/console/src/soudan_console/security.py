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
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import pyotp
import segno
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from markupsafe import Markup
from soudan_shared.contracts import utcnow
from zxcvbn import zxcvbn  # type: ignore[import-untyped]
from zxcvbn.frequency_lists import FREQUENCY_LISTS  # type: ignore[import-untyped]

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


MIN_STRENGTH = 3  # zxcvbn's score, 0-4: 3 is "safely unguessable" against online guessing

# The password leaks and common lists zxcvbn ships (its "passwords" list: the most common of
# millions of leaked passwords), read once; checked offline, nothing leaves the machine.
_COMMON = frozenset(FREQUENCY_LISTS["passwords"])


# Words of this service itself: a password built on them is among an attacker's first guesses.
CONTEXT_WORDS = (
    "soudan",
    "sodan",
    "soudanmadoguchi",
    "madoguchi",
    "consult",
    "console",
    "line",
    "相談",
    "窓口",
)


def password_problem(
    password: str, *, min_length: int, email: str = "", user_inputs: tuple[str, ...] = ()
) -> str | None:
    """Why ``password`` is not acceptable, in Japanese for the form; None when it is.

    Length first, then the local list of common and leaked passwords, then zxcvbn's estimate
    of how fast it is guessed (keyboard rows, sequences, words, dates, the person's own name
    and address count against it). Everything is judged on the NFKC form, so full-width
    ``ｐａｓｓｗｏｒｄ１２３４`` is the common password it looks like; and what is left once the
    service's own words and the person's name and address are taken out must still be strong.
    """
    password = unicodedata.normalize("NFKC", password)
    if len(password) < min_length:
        return f"パスワードは{min_length}文字以上にしてください。"
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"パスワードは{MAX_PASSWORD_LENGTH}文字以内にしてください。"
    if email and password.strip().lower() == email.strip().lower():
        return "メールアドレスと同じパスワードは使えません。"
    if len(set(password)) < 4:
        return "同じ文字のくり返しが多すぎます。ほかの人に推測されにくいものにしてください。"
    if password.lower() in _COMMON:
        return (
            "このパスワードはよく使われていて、流出したパスワードの一覧にも入っています。"
            "ほかのものにしてください。"
        )
    personal = [i for i in (email, email.partition("@")[0], *user_inputs) if i]
    inputs = [*personal, *CONTEXT_WORDS]
    estimate = zxcvbn(password, user_inputs=inputs, max_length=MAX_PASSWORD_LENGTH)
    if estimate["score"] < MIN_STRENGTH:
        return _weakness(estimate)
    rest = _without(password.lower(), [*CONTEXT_WORDS, *personal])
    if rest != password.lower() and (
        len(rest) < 8 or zxcvbn(rest, max_length=MAX_PASSWORD_LENGTH)["score"] < MIN_STRENGTH
    ):
        return (
            "このパスワードは、この相談窓口の名前（soudan、相談、LINE など）や、あなたの名前・"
            "メールアドレスが中心になっていて、すぐに推測されてしまいます。"
            "関係のない言葉を組み合わせてください。"
        )
    return None


def _without(text: str, words: list[str]) -> str:
    """``text`` with every occurrence of ``words`` (longest first, case folded) taken out."""
    for word in sorted({unicodedata.normalize("NFKC", w).lower() for w in words}, key=len)[::-1]:
        if len(word) >= 3:
            text = text.replace(word, "")
    return text


def _weakness(estimate: dict[str, Any]) -> str:
    sequence = estimate.get("sequence", [])
    patterns = {m.get("pattern") for m in sequence}
    if any(m.get("dictionary_name") == "passwords" for m in sequence):
        why = "よく使われるパスワードに似ていて、"
    elif "spatial" in patterns:
        why = "キーボードの並び（qwerty など）が入っていて、"
    elif "sequence" in patterns or "repeat" in patterns:
        why = "数字や文字の続き・くり返し（1234、abc など）が入っていて、"
    elif "date" in patterns:
        why = "日付や年が入っていて、"
    elif "dictionary" in patterns:
        why = "よく使われる言葉や、名前・メールアドレスに近い部分があり、"
    else:
        why = ""
    return (
        f"このパスワードは{why}すぐに推測されてしまいます。"
        "関係のない3つ以上の単語をつなげるなど、長く推測しにくいものにしてください。"
    )


def password_expired(changed_at: datetime, max_age_days: int, now: datetime | None = None) -> bool:
    return (now or utcnow()) - changed_at >= timedelta(days=max_age_days)


# -- TOTP -------------------------------------------------------------------------------------


def new_totp_secret() -> str:
    return pyotp.random_base32()


def totp_uri(secret: str, email: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=TOTP_ISSUER)


def totp_qr(uri: str) -> Markup:
    """``uri`` as an inline SVG QR code (segno, drawn locally: the secret never leaves)."""
    svg = segno.make(uri, error="m").svg_inline(scale=4, dark="#000", light="#fff")
    return Markup(svg)  # noqa: S704 - segno's own SVG of a URI it encodes, no user markup


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


SessionsEnded = Callable[..., object]  # (session_key=… | staff_id=…, keep=…)


class Sessions:
    """Server-side sessions with an idle timeout and an absolute lifetime.

    ``on_end`` hears of every session this process deletes (the live streams of the session
    stop at once). ``live_at`` is refreshed by an open live stream, so "online" means a browser
    is really there, not merely a session that has not yet idled out.
    """

    TOUCH_EVERY = timedelta(seconds=60)
    LIVE_EVERY = timedelta(seconds=20)
    ONLINE_WITHIN = timedelta(seconds=75)

    def __init__(
        self,
        db: Any,
        *,
        secret: bytes | None,
        idle: timedelta,
        lifetime: timedelta,
        on_end: SessionsEnded | None = None,
    ) -> None:
        self._collection = db[SESSIONS]
        self._secret = secret
        self.idle = idle
        self.lifetime = lifetime
        self.on_end = on_end

    def _ended(self, **which: str | None) -> None:
        if self.on_end is not None:
            self.on_end(**which)

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
            self._ended(session_key=key)
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
        self._ended(session_key=session.key)

    async def delete_for_staff(self, staff_id: str, *, keep: str | None = None) -> None:
        query: dict[str, Any] = {"staff_id": staff_id}
        if keep is not None:
            query["_id"] = {"$ne": keep}
        await self._collection.delete_many(query)
        self._ended(staff_id=staff_id, keep=keep)

    async def mark_live(self, session: Session) -> None:
        """A live stream of ``session`` is open now (called at each of its re-checks)."""
        now = utcnow()
        await self._collection.update_one(
            {
                "_id": session.key,
                "$or": [{"live_at": None}, {"live_at": {"$lt": now - self.LIVE_EVERY}}],
            },
            {"$set": {"live_at": now}},
        )

    async def online_staff(self) -> dict[str, datetime]:
        """Staff really at the console now, with when each was last seen.

        A session counts while a live stream of it has reported in the last
        ``ONLINE_WITHIN``, or it made a request that recently; a closed browser drops off
        within about a minute, not when its session idles out.
        """
        now = utcnow()
        recent = now - self.ONLINE_WITHIN
        docs = await self._collection.find(
            {
                "stage": "full",
                "expires_at": {"$gt": now},
                "last_seen_at": {"$gt": now - self.idle},
                "$or": [{"live_at": {"$gt": recent}}, {"last_seen_at": {"$gt": recent}}],
            }
        ).to_list()
        seen: dict[str, datetime] = {}
        for doc in docs:
            staff_id = doc.get("staff_id")
            at = max(doc["last_seen_at"], doc.get("live_at") or doc["last_seen_at"])
            if staff_id and (staff_id not in seen or at > seen[staff_id]):
                seen[staff_id] = at
        return seen

    async def purge_expired(self) -> int:
        now = utcnow()
        query = {
            "$or": [{"expires_at": {"$lte": now}}, {"last_seen_at": {"$lte": now - self.idle}}]
        }
        keys = [d["_id"] for d in await self._collection.find(query, {"_id": 1}).to_list()]
        if not keys:
            return 0
        result = await self._collection.delete_many({"_id": {"$in": keys}})
        for key in keys:
            self._ended(session_key=key)
        return int(result.deleted_count)
