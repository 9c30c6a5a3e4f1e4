"""The fake platform's state: tokens, reply tokens, retry keys, limits, faults, and what was sent.

:class:`FakeLine` is the handle a test holds. The HTTP side (:mod:`soudan_fakeline.api`) asks it
to authorise, rate-limit and record; the test asks it what each user received, switches faults on
and off, and issues reply tokens through the webhook sender (:mod:`soudan_fakeline.webhook`).

Everything here runs on the event loop of the app that serves it (only a held answer waits, see
:class:`Fault`), so it needs no locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

# Endpoint names used by rate limits, faults and the request log.
REPLY = "reply"
PUSH = "push"
MULTICAST = "multicast"
BROADCAST = "broadcast"
NARROWCAST = "narrowcast"
QUOTA = "quota"
QUOTA_CONSUMPTION = "quota_consumption"
RICHMENU = "richmenu"
TOKEN = "token"  # noqa: S105 - an endpoint name, not a secret
MARK_AS_READ = "mark_as_read"
LOADING = "loading"

RETRY_KEY_TTL = 24 * 3600.0
JST = timezone(timedelta(hours=9), "JST")  # LINE counts the monthly quota by the month in Japan
REPLY_TOKEN_TTL = 60.0
MESSAGE_ENDPOINTS = (REPLY, PUSH, MULTICAST, BROADCAST, NARROWCAST)
RETRY_KEY_ENDPOINTS = (PUSH, MULTICAST, BROADCAST, NARROWCAST)


@dataclass
class RateLimit:
    """A token bucket: ``rate`` requests per ``per`` seconds, bursts of at most ``burst``.

    LINE states its limits as requests per second (or hour); a full one-second bucket would let a
    client fire a whole second's worth at once, so the default burst is a tenth of that, which
    keeps a client that paces itself close to the stated rate honest.
    """

    rate: float
    per: float = 1.0
    burst: float | None = None

    def __post_init__(self) -> None:
        if self.burst is None:
            self.burst = max(1.0, self.rate / 10)
        self._tokens = float(self.burst)
        self._at: float | None = None

    def take(self, now: float) -> bool:
        assert self.burst is not None
        if self._at is not None:
            # The fake's clock can be moved back (``advance`` with a past time): no time passed.
            elapsed = max(0.0, now - self._at)
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate / self.per)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


def default_rate_limits() -> dict[str, RateLimit]:
    """LINE's published limits (``line-openapi/README.md``)."""
    return {
        REPLY: RateLimit(2000),
        PUSH: RateLimit(2000),
        MULTICAST: RateLimit(200),
        BROADCAST: RateLimit(60, per=3600.0, burst=60),
        NARROWCAST: RateLimit(60, per=3600.0, burst=60),
        "*": RateLimit(2000),
    }


@dataclass
class Fault:
    """An injected failure on ``endpoint`` (``"*"`` for all) for the next ``times`` requests.

    ``status`` 0 injects only ``latency`` (and ``hold``). With ``after_processing`` the request
    takes effect (the message is delivered, the retry key remembered) and only the answer is the
    failure: the case of a response lost on the way back, which a retry key is for.

    ``hold``: seconds the answer waits *after* the request took effect (``latency`` waits
    before), or until :meth:`FakeLine.release_held`. The sender has no answer yet while the
    message is already out: the window in which a sender killed never learns that it was sent.
    """

    endpoint: str
    status: int = 500
    times: int = 1
    after_processing: bool = False
    latency: float = 0.0
    message: str | None = None
    hold: float = 0.0


@dataclass(frozen=True)
class Delivery:
    """One message object as a user received it."""

    seq: int
    user_id: str
    method: str
    message: dict[str, Any]
    request_id: str
    at: float
    retry_key: str | None

    @property
    def type(self) -> str:
        return str(self.message.get("type"))

    @property
    def text(self) -> str | None:
        text = self.message.get("text")
        return text if isinstance(text, str) else None

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "userId": self.user_id,
            "method": self.method,
            "type": self.type,
            "text": self.text,
            "message": self.message,
            "requestId": self.request_id,
            "at": self.at,
            "retryKey": self.retry_key,
        }


@dataclass(frozen=True)
class RequestRecord:
    """One API request as the fake answered it."""

    endpoint: str
    method: str
    path: str
    status: int
    request_id: str
    at: float
    retry_key: str | None = None
    recipients: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "requestId": self.request_id,
            "at": self.at,
            "retryKey": self.retry_key,
            "recipients": self.recipients,
        }


@dataclass
class ReplyToken:
    user_id: str
    issued_at: float
    used: bool = False


@dataclass
class Inbound:
    """A message a user sent (through the webhook sender), and whether it shows 既読."""

    user_id: str
    message_id: str
    read_token: str
    at: float
    read_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.message_id,
            "at": self.at,
            "read": self.read_at is not None,
            "readAt": self.read_at,
        }


@dataclass(frozen=True)
class Loading:
    """One ``loading/start`` LINE took: the animation in ``user_id``'s chat from ``at`` for
    ``seconds``, or until a message reaches the user."""

    user_id: str
    seconds: int
    at: float
    request_id: str

    def to_json(self) -> dict[str, Any]:
        return {
            "userId": self.user_id,
            "seconds": self.seconds,
            "at": self.at,
            "requestId": self.request_id,
        }


@dataclass
class AcceptedKey:
    request_id: str
    expires_at: float


@dataclass
class RichMenu:
    rich_menu_id: str
    body: dict[str, Any]
    image: bytes | None = None
    image_type: str | None = None


@dataclass
class IssuedToken:
    access_token: str
    key_id: str
    expires_at: float
    revoked: bool = False


def new_request_id() -> str:
    return str(uuid.uuid4())


def new_user_id() -> str:
    """A LINE-shaped user id: ``U`` and 32 hex digits."""
    return "U" + secrets.token_hex(16)


@dataclass
class FakeLine:
    """The fake platform's state and the test's switches.

    ``access_tokens`` are the channel access tokens it accepts (more can be added, or removed to
    simulate a revoked token, at any time). ``quota_limit`` None means no monthly target limit.
    ``consumption`` is the month's count of recipients of push, multicast, narrowcast and
    broadcast (replies are free); it starts again at 0 when the month (in Japan) changes on the
    fake's clock, as LINE's does.
    ``strict_ids`` checks that ``to`` looks like a LINE id (``U`` + 32 hex), as LINE does.
    """

    channel_secret: str
    access_tokens: set[str] = field(default_factory=set)
    reply_token_ttl: float = REPLY_TOKEN_TTL
    retry_key_ttl: float = RETRY_KEY_TTL
    quota_limit: int | None = None
    strict_ids: bool = True
    rate_limits: dict[str, RateLimit] = field(default_factory=default_rate_limits)
    bot_user_id: str = field(default_factory=new_user_id)
    channel_id: str = "1234567890"
    clock: Callable[[], float] = time.time
    assertion_verifier: Callable[[str], bool] | None = None

    def __post_init__(self) -> None:
        self._consumption = 0
        self._consumption_month = ""
        self._offset = 0.0
        self._seq = 0
        self.deliveries: list[Delivery] = []
        self._by_user: dict[str, list[Delivery]] = defaultdict(list)
        self.requests: deque[RequestRecord] = deque(maxlen=100_000)
        self.reply_tokens: dict[str, ReplyToken] = {}
        self.read_tokens: dict[str, Inbound] = {}
        self._inbound: dict[str, list[Inbound]] = defaultdict(list)
        self.loadings: list[Loading] = []
        self.retry_keys: dict[str, AcceptedKey] = {}
        self.faults: list[Fault] = []
        self.followers: set[str] = set()
        self.rich_menus: dict[str, RichMenu] = {}
        self.default_rich_menu: str | None = None
        self.issued_tokens: dict[str, IssuedToken] = {}
        self.held = 0  # answers being held now (Fault.hold)
        self._release: asyncio.Event | None = None  # made in the serving loop, when first needed

    # -- time ------------------------------------------------------------------------------------

    def month(self) -> str:
        """The month the quota counts, ``YYYY-MM`` in Japan, by the fake's clock."""
        return datetime.fromtimestamp(self.now(), UTC).astimezone(JST).strftime("%Y-%m")

    @property
    def consumption(self) -> int:
        """Messages counted against the quota this month (0 again in a new month)."""
        if self._consumption_month != self.month():
            self._consumption = 0
            self._consumption_month = self.month()
        return self._consumption

    @consumption.setter
    def consumption(self, value: int) -> None:
        self._consumption = value
        self._consumption_month = self.month()

    def now(self) -> float:
        return self.clock() + self._offset

    def advance(self, seconds: float) -> None:
        """Move the fake's clock forward (reply tokens and retry keys expire by it)."""
        self._offset += seconds

    # -- reply tokens ----------------------------------------------------------------------------

    def issue_reply_token(self, user_id: str) -> str:
        """A reply token for an event of ``user_id``: single use, valid ``reply_token_ttl``."""
        token = secrets.token_hex(16)
        self.reply_tokens[token] = ReplyToken(user_id, self.now())
        self.followers.add(user_id)
        return token

    def use_reply_token(self, token: str) -> str | None:
        """The user the token answers, marking it used; None if unknown, used or expired."""
        entry = self.reply_tokens.get(token)
        if entry is None or entry.used or self.now() - entry.issued_at > self.reply_token_ttl:
            return None
        entry.used = True
        return entry.user_id

    # -- read marks (既読) and the loading animation ---------------------------------------------

    def issue_read_token(self, user_id: str, message_id: str) -> str:
        """The ``markAsReadToken`` of a message ``user_id`` sent: no expiry, usable again."""
        token = secrets.token_urlsafe(24)
        inbound = Inbound(user_id, message_id, token, self.now())
        self.read_tokens[token] = inbound
        self._inbound[user_id].append(inbound)
        return token

    def mark_read(self, token: str) -> list[Inbound] | None:
        """Mark the token's message and every earlier one of its user read (LINE's rule); the
        messages newly read, or None if the token is unknown."""
        marked = self.read_tokens.get(token)
        if marked is None:
            return None
        now = self.now()
        newly = []
        for inbound in self._inbound[marked.user_id]:
            if inbound.read_at is None:
                inbound.read_at = now
                newly.append(inbound)
            if inbound is marked:
                break
        return newly

    def sent_by(self, user_id: str) -> list[Inbound]:
        """The messages ``user_id`` sent, in order, each with whether it shows 既読."""
        return list(self._inbound.get(user_id, ()))

    def read(self, user_id: str) -> list[str]:
        """The ids of the messages of ``user_id`` that show 既読."""
        return [i.message_id for i in self._inbound.get(user_id, ()) if i.read_at is not None]

    def start_loading(self, user_id: str, seconds: int, request_id: str) -> Loading:
        loading = Loading(user_id, seconds, self.now(), request_id)
        self.loadings.append(loading)
        return loading

    def loadings_of(self, user_id: str) -> list[Loading]:
        return [x for x in self.loadings if x.user_id == user_id]

    def loading_shown(self, user_id: str) -> bool:
        """Whether ``user_id`` sees the animation now: the latest start has not run out, and no
        message reached the user since (either ends it, as on LINE)."""
        starts = self.loadings_of(user_id)
        if not starts:
            return False
        last = starts[-1]
        now = self.now()
        if now >= last.at + last.seconds:
            return False
        return not any(d.at >= last.at for d in self._by_user.get(user_id, ()))

    # -- authorisation ---------------------------------------------------------------------------

    def token_valid(self, token: str) -> bool:
        if token in self.access_tokens:
            return True
        issued = self.issued_tokens.get(token)
        return issued is not None and not issued.revoked and issued.expires_at > self.now()

    def issue_access_token(self, expires_in: float) -> IssuedToken:
        issued = IssuedToken(
            access_token=secrets.token_urlsafe(48),
            key_id=secrets.token_urlsafe(16),
            expires_at=self.now() + expires_in,
        )
        self.issued_tokens[issued.access_token] = issued
        return issued

    def revoke_access_token(self, token: str) -> None:
        self.access_tokens.discard(token)
        issued = self.issued_tokens.get(token)
        if issued is not None:
            issued.revoked = True

    # -- limits ----------------------------------------------------------------------------------

    def take_rate(self, endpoint: str) -> bool:
        limit = self.rate_limits.get(endpoint) or self.rate_limits.get("*")
        return True if limit is None else limit.take(self.now())

    def set_rate_limit(
        self, endpoint: str, rate: float, *, per: float = 1.0, burst: float | None = None
    ) -> None:
        self.rate_limits[endpoint] = RateLimit(rate, per=per, burst=burst)

    def quota_allows(self, recipients: int) -> bool:
        return self.quota_limit is None or self.consumption + recipients <= self.quota_limit

    # -- retry keys ------------------------------------------------------------------------------

    def accepted_request(self, retry_key: str) -> str | None:
        """The request id that already accepted ``retry_key`` within 24 h, if any."""
        entry = self.retry_keys.get(retry_key)
        if entry is None:
            return None
        if entry.expires_at <= self.now():
            del self.retry_keys[retry_key]
            return None
        return entry.request_id

    def remember_retry_key(self, retry_key: str, request_id: str) -> None:
        self.retry_keys[retry_key] = AcceptedKey(request_id, self.now() + self.retry_key_ttl)

    # -- faults ----------------------------------------------------------------------------------

    def inject(
        self,
        endpoint: str = "*",
        *,
        status: int = 500,
        times: int = 1,
        after_processing: bool = False,
        latency: float = 0.0,
        message: str | None = None,
        hold: float = 0.0,
    ) -> Fault:
        """Make the next ``times`` requests to ``endpoint`` fail with ``status`` (see Fault)."""
        fault = Fault(endpoint, status, times, after_processing, latency, message, hold)
        self.faults.append(fault)
        return fault

    def set_latency(self, seconds: float, endpoint: str = "*", times: int = 1_000_000_000) -> None:
        """Delay every answer of ``endpoint`` by ``seconds`` (0 clears it)."""
        self.faults = [f for f in self.faults if not (f.status == 0 and f.endpoint == endpoint)]
        if seconds > 0:
            self.faults.append(Fault(endpoint, status=0, times=times, latency=seconds))

    def clear_faults(self) -> None:
        """No more faults; every held answer is given now."""
        self.faults.clear()
        self.release_held()

    async def hold_answer(self, seconds: float) -> None:
        """Wait ``seconds``, or less if :meth:`release_held` is called meanwhile."""
        if self._release is None:
            self._release = asyncio.Event()
        release = self._release
        self.held += 1
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(release.wait(), seconds)
        finally:
            self.held -= 1

    def release_held(self) -> None:
        """Give every held answer now."""
        if self._release is not None:
            self._release.set()
            self._release = None

    def next_fault(self, endpoint: str) -> tuple[Fault | None, float]:
        """The failure to inject into this request (consumed), and the latency to add."""
        latency = 0.0
        chosen: Fault | None = None
        for fault in list(self.faults):
            if fault.endpoint not in (endpoint, "*"):
                continue
            if fault.status == 0 and not fault.hold:
                latency = max(latency, fault.latency)
                fault.times -= 1
            elif chosen is None:
                chosen = fault
                latency = max(latency, fault.latency)
                fault.times -= 1
            if fault.times <= 0:
                self.faults.remove(fault)
        return chosen, latency

    # -- deliveries ------------------------------------------------------------------------------

    def deliver(
        self,
        users: Iterable[str],
        messages: list[dict[str, Any]],
        *,
        method: str,
        request_id: str,
        retry_key: str | None,
    ) -> int:
        """Record ``messages`` as received by each of ``users``; the number of recipients."""
        at = self.now()
        count = 0
        for user_id in users:
            count += 1
            self.followers.add(user_id)
            bucket = self._by_user[user_id]
            for message in messages:
                self._seq += 1
                delivery = Delivery(self._seq, user_id, method, message, request_id, at, retry_key)
                self.deliveries.append(delivery)
                bucket.append(delivery)
        return count

    def received(self, user_id: str) -> list[Delivery]:
        """What ``user_id`` received, in order (one entry per message object)."""
        return list(self._by_user.get(user_id, ()))

    def texts(self, user_id: str) -> list[str]:
        """The texts ``user_id`` received, in order."""
        return [d.text for d in self._by_user.get(user_id, ()) if d.text is not None]

    def recipients(self) -> set[str]:
        return set(self._by_user)

    def record(self, record: RequestRecord) -> None:
        self.requests.append(record)

    def requests_to(self, endpoint: str) -> list[RequestRecord]:
        return [r for r in self.requests if r.endpoint == endpoint]

    def add_followers(self, user_ids: Iterable[str]) -> None:
        """Users the ``broadcast`` endpoint reaches (besides everyone the fake has seen)."""
        self.followers.update(user_ids)

    def reset(self) -> None:
        """Forget every delivery, request, token, key and fault; keep the configuration."""
        self.consumption = 0
        self.deliveries.clear()
        self._by_user.clear()
        self.requests.clear()
        self.reply_tokens.clear()
        self.read_tokens.clear()
        self._inbound.clear()
        self.loadings.clear()
        self.retry_keys.clear()
        self.clear_faults()
        self.rich_menus.clear()
        self.default_rich_menu = None
        self.followers.clear()
        self.rate_limits = default_rate_limits()

    def stats(self) -> dict[str, Any]:
        by_status: dict[str, int] = defaultdict(int)
        by_endpoint: dict[str, int] = defaultdict(int)
        for r in self.requests:
            by_status[str(r.status)] += 1
            by_endpoint[r.endpoint] += 1
        return {
            "requests": len(self.requests),
            "byStatus": dict(by_status),
            "byEndpoint": dict(by_endpoint),
            "deliveries": len(self.deliveries),
            "readMessages": sum(1 for i in self.read_tokens.values() if i.read_at is not None),
            "loadings": len(self.loadings),
            "held": self.held,
            "recipients": len(self._by_user),
            "consumption": self.consumption,
            "quotaLimit": self.quota_limit,
            "defaultRichMenu": self.default_rich_menu,
        }
