"""The webhook sender: events signed with the channel secret and posted the way LINE posts them.

LINE sends ``POST <webhook URL>`` with a JSON body ``{"destination": <bot user id>, "events":
[...]}``, the header ``X-Line-Signature`` (base64 of the HMAC-SHA256 of the raw body under the
channel secret), ``Content-Type: application/json`` and a ``LineBotWebhook/2.0`` user agent. Each
event that can be answered carries a reply token; the sender issues it from the fake platform,
which will then accept it once, within a minute. Each message carries a ``markAsReadToken``,
which the platform accepts at ``/v2/bot/chat/markAsRead`` for as long as it runs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from soudan_fakeline.platform import FakeLine

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def signature(channel_secret: str, body: bytes) -> str:
    """The ``X-Line-Signature`` of ``body``."""
    digest = hmac.new(channel_secret.encode(), body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def new_webhook_event_id(now_ms: int | None = None) -> str:
    """A ULID, the format of LINE's ``webhookEventId``: 48-bit time, 80 random bits, base32."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    value = (ms << 80) | secrets.randbits(80)
    return "".join(_CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(26)))


def new_message_id() -> str:
    return str(10**17 + secrets.randbelow(9 * 10**17))


@dataclass(frozen=True)
class WebhookResult:
    status: int
    body: str
    events: list[dict[str, Any]]


class WebhookSender:
    """Builds and posts webhook events for one fake platform.

    ``url`` is the default target (e.g. ``http://127.0.0.1:8080/webhook``); :meth:`send` may be
    given another. Build events with the ``*_event`` methods (they issue the reply tokens) and
    post one or several in one request with :meth:`send`, or use :meth:`text` and friends, which
    do both.
    """

    def __init__(self, fake: FakeLine, url: str | None = None, *, timeout: float = 10.0) -> None:
        self.fake = fake
        self.url = url
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- events -----------------------------------------------------------------------------------

    def _base(self, kind: str, user_id: str, *, redelivery: bool = False) -> dict[str, Any]:
        now_ms = int(self.fake.now() * 1000)
        return {
            "type": kind,
            "mode": "active",
            "timestamp": now_ms,
            "source": {"type": "user", "userId": user_id},
            "webhookEventId": new_webhook_event_id(now_ms),
            "deliveryContext": {"isRedelivery": redelivery},
        }

    def message_event(
        self, user_id: str, text: str, *, message_id: str | None = None
    ) -> dict[str, Any]:
        event = self._base("message", user_id)
        event["replyToken"] = self.fake.issue_reply_token(user_id)
        line_id = message_id or new_message_id()
        event["message"] = {
            "type": "text",
            "id": line_id,
            "text": text,
            "quoteToken": secrets.token_urlsafe(24),
            "markAsReadToken": self.fake.issue_read_token(user_id, line_id),
        }
        return event

    def media_event(self, user_id: str, kind: str = "image") -> dict[str, Any]:
        """An image, video, audio, file, location or sticker message (its content is not sent)."""
        event = self._base("message", user_id)
        event["replyToken"] = self.fake.issue_reply_token(user_id)
        line_id = new_message_id()
        message: dict[str, Any] = {
            "type": kind,
            "id": line_id,
            "markAsReadToken": self.fake.issue_read_token(user_id, line_id),
        }
        if kind in ("image", "video", "audio"):
            message["contentProvider"] = {"type": "line"}
        if kind == "sticker":
            message.update(
                {"packageId": "446", "stickerId": "1988", "stickerResourceType": "STATIC"}
            )
        if kind == "location":
            message.update({"title": "", "address": "", "latitude": 43.06, "longitude": 141.35})
        if kind == "file":
            message.update({"fileName": "file.pdf", "fileSize": 1024})
        event["message"] = message
        return event

    def follow_event(self, user_id: str, *, unblocked: bool = False) -> dict[str, Any]:
        event = self._base("follow", user_id)
        event["replyToken"] = self.fake.issue_reply_token(user_id)
        event["follow"] = {"isUnblocked": unblocked}
        return event

    def unfollow_event(self, user_id: str) -> dict[str, Any]:
        self.fake.followers.discard(user_id)
        return self._base("unfollow", user_id)

    def postback_event(self, user_id: str, data: str) -> dict[str, Any]:
        event = self._base("postback", user_id)
        event["replyToken"] = self.fake.issue_reply_token(user_id)
        event["postback"] = {"data": data}
        return event

    def unsend_event(self, user_id: str, message_id: str) -> dict[str, Any]:
        event = self._base("unsend", user_id)
        event["unsend"] = {"messageId": message_id}
        return event

    def event_from_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        """An event from a short description (the control API and ``simulate`` use these)."""
        kind = spec.get("type", "message")
        user_id = str(spec["userId"])
        if kind == "message" and "text" in spec:
            return self.message_event(user_id, str(spec["text"]))
        if kind == "message":
            return self.media_event(user_id, str(spec.get("messageType", "image")))
        if kind == "follow":
            return self.follow_event(user_id, unblocked=bool(spec.get("unblocked", False)))
        if kind == "unfollow":
            return self.unfollow_event(user_id)
        if kind == "postback":
            return self.postback_event(user_id, str(spec["data"]))
        if kind == "unsend":
            return self.unsend_event(user_id, str(spec["messageId"]))
        raise ValueError(f"unknown event type {kind!r}")

    # -- sending ----------------------------------------------------------------------------------

    def body(self, events: list[dict[str, Any]]) -> bytes:
        payload = {"destination": self.fake.bot_user_id, "events": events}
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()

    async def send(
        self,
        events: list[dict[str, Any]],
        *,
        url: str | None = None,
        redelivery: bool = False,
        sign_with: str | None = None,
    ) -> WebhookResult:
        """Post ``events`` in one signed request; ``sign_with`` forges a wrong secret."""
        target = url or self.url
        if target is None:
            raise ValueError("no webhook URL: pass url= or give the sender one")
        if redelivery:
            for event in events:
                event["deliveryContext"] = {"isRedelivery": True}
        raw = self.body(events)
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "X-Line-Signature": signature(sign_with or self.fake.channel_secret, raw),
            "User-Agent": "LineBotWebhook/2.0",
        }
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        async with self._session.post(target, data=raw, headers=headers) as response:
            return WebhookResult(response.status, await response.text(), events)

    async def text(self, user_id: str, text: str, *, url: str | None = None) -> WebhookResult:
        return await self.send([self.message_event(user_id, text)], url=url)

    async def follow(self, user_id: str, *, url: str | None = None) -> WebhookResult:
        return await self.send([self.follow_event(user_id)], url=url)

    async def unfollow(self, user_id: str, *, url: str | None = None) -> WebhookResult:
        return await self.send([self.unfollow_event(user_id)], url=url)

    async def postback(self, user_id: str, data: str, *, url: str | None = None) -> WebhookResult:
        return await self.send([self.postback_event(user_id, data)], url=url)

    async def media(
        self, user_id: str, kind: str = "image", *, url: str | None = None
    ) -> WebhookResult:
        return await self.send([self.media_event(user_id, kind)], url=url)
