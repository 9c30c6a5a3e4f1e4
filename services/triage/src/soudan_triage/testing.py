"""Test support for triage: LINE events as ingress publishes them, and what triage sends on.

Used by the service's tests (``services/triage/tests``) and benchmarks; not by the service.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from soudan_shared.bus import Bus
from soudan_shared.contracts import Fact, LineEventReceived, SendText
from soudan_shared.store import Store
from soudan_shared.testing.waiting import wait_until

from soudan_triage.store import EVENTS

SHIPPED_CONFIG = Path(__file__).resolve().parents[4] / "deploy" / "config"
DESTINATION = "U" + "0" * 32

# Thursday 24 December 2026: the service is open 17:00–21:00 JST, accepting until 20:30.
IN_HOURS = datetime(2026, 12, 24, 9, 0, tzinfo=UTC)  # 18:00 JST
NIGHT = datetime(2026, 12, 24, 13, 0, tzinfo=UTC)  # 22:00 JST


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


class Line:
    """LINE's side: events of one or more users, as ingress publishes them."""

    def __init__(self) -> None:
        self._serial = 0
        self._prefix = uuid.uuid4().hex[:10].upper()

    def user(self) -> str:
        return "U" + uuid.uuid4().hex

    def event(
        self, kind: str, user_id: str | None, at: datetime, **fields: Any
    ) -> LineEventReceived:
        self._serial += 1
        event_id = f"01J{self._prefix}{self._serial:013d}"
        raw: dict[str, Any] = {
            "type": kind,
            "mode": "active",
            "timestamp": ms(at),
            "source": {"type": "user", "userId": user_id} if user_id else {"type": "group"},
            "webhookEventId": event_id,
            "deliveryContext": {"isRedelivery": False},
            **fields,
        }
        return LineEventReceived(
            destination=DESTINATION,
            webhook_event_id=event_id,
            user_id=user_id,
            event_type=kind,
            timestamp_ms=ms(at),
            received_at=at,
            event=raw,
        )

    def text(self, user_id: str, text: str, at: datetime) -> LineEventReceived:
        return self.event(
            "message",
            user_id,
            at,
            replyToken=f"rt-{uuid.uuid4().hex}",
            message={"id": self._message_id(), "type": "text", "text": text},
        )

    def media(self, user_id: str, kind: str, at: datetime) -> LineEventReceived:
        message: dict[str, Any] = {"id": self._message_id(), "type": kind}
        if kind in ("image", "video", "audio"):
            message["contentProvider"] = {"type": "line"}
        if kind == "sticker":
            message.update(packageId="446", stickerId="1988", stickerResourceType="STATIC")
        return self.event(
            "message", user_id, at, replyToken=f"rt-{uuid.uuid4().hex}", message=message
        )

    def follow(self, user_id: str, at: datetime, *, unblocked: bool = False) -> LineEventReceived:
        return self.event(
            "follow",
            user_id,
            at,
            replyToken=f"rt-{uuid.uuid4().hex}",
            follow={"isUnblocked": unblocked},
        )

    def unfollow(self, user_id: str, at: datetime) -> LineEventReceived:
        return self.event("unfollow", user_id, at)

    def postback(self, user_id: str, data: str, at: datetime) -> LineEventReceived:
        return self.event(
            "postback", user_id, at, replyToken=f"rt-{uuid.uuid4().hex}", postback={"data": data}
        )

    def unsend(self, user_id: str, line_message_id: str, at: datetime) -> LineEventReceived:
        return self.event("unsend", user_id, at, unsend={"messageId": line_message_id})

    def _message_id(self) -> str:
        self._serial += 1
        return f"{uuid.uuid4().int % 10**17:017d}"


@dataclass
class Downstream:
    """What dispatch and reporting receive from triage."""

    commands: list[SendText] = field(default_factory=list)
    facts: list[Fact] = field(default_factory=list)

    def facts_of(self, kind: str) -> list[Fact]:
        return [f for f in self.facts if f.type == kind]

    def commands_to(self, user_id: str) -> list[SendText]:
        return [c for c in self.commands if c.to == user_id]

    def user_facts(self, kind: str, user_id: str) -> list[Fact]:
        return [f for f in self.facts_of(kind) if f.data.get("user_id") == user_id]


@dataclass
class RunningTriage:
    app: web.Application
    publisher: Bus
    store: Store

    async def send(self, *events: LineEventReceived) -> None:
        """Publish like ingress and wait until triage has handled each event."""
        for event in events:
            await self.publisher.publish(event)
        for event in events:
            await self.handled(event)

    async def handled(self, event: LineEventReceived, timeout: float = 15) -> None:
        async def done() -> bool:
            doc = await self.store.db[EVENTS].find_one({"_id": event.webhook_event_id})
            return doc is not None and doc.get("state") == "done"

        await wait_until(done, timeout=timeout, message=f"{event.event_type} handled")


StartTriage = Callable[..., Awaitable[RunningTriage]]
