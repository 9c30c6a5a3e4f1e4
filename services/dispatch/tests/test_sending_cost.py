"""What one automatic reply costs dispatch in store round trips (issue 17)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import pytest
from soudan_dispatch.line import LineResult
from soudan_dispatch.sending import SENT, Backoff, Sender
from soudan_shared.contracts import Message, SendText, utcnow
from soudan_shared.facts import Facts
from soudan_shared.records import MESSAGES, REPLY_TOKENS, record_reply_token
from soudan_shared.store import Store
from soudan_shared.testing.counting import CountedDb

pytestmark = pytest.mark.integration


class Line:
    """LINE accepting every reply and push."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[str]]] = []

    async def reply(self, token: str, texts: Sequence[str], quick_reply: Any = None) -> LineResult:
        self.sent.append(("reply", list(texts)))
        return LineResult(200, f"req-{len(self.sent)}")

    async def push(
        self, to: str, texts: Sequence[str], quick_reply: Any = None, *, key: str
    ) -> LineResult:
        self.sent.append(("push", list(texts)))
        return LineResult(200, f"req-{len(self.sent)}")


class Publisher:
    def __init__(self) -> None:
        self.published: list[Message] = []

    async def publish(self, message: Message, *, timeout: float | None = None) -> None:
        self.published.append(message)


async def test_an_automatic_reply_costs_four_round_trips_and_its_redelivery_sends_nothing(
    store: Store,
) -> None:
    line, publisher = Line(), Publisher()
    counted = CountedDb(store.db)
    sender = Sender(line, counted, Facts(publisher, "dispatch"), backoff=Backoff())  # type: ignore[arg-type]
    received = utcnow() - timedelta(seconds=2)
    await record_reply_token(
        store.db, "rt-1", user_id="U1", received_at=received, message_id="line:1"
    )
    command = SendText(
        to="U1",
        texts=["いまは受付時間外です。"],
        purpose="out_of_hours",
        reply_token="rt-1",
        reply_token_received_at=received,
        case_id="case-1",
    )
    await sender.handle(command)
    # the token claimed; the reply noted as tried (reading any earlier delivery's record);
    # the send recorded; the text kept in the conversation
    assert counted.calls == {
        f"{REPLY_TOKENS} update_one": 1,
        f"{SENT} find_one_and_update": 1,
        f"{SENT} update_one": 1,
        f"{MESSAGES} update_one": 1,
    }
    await sender.handle(command)  # redelivered
    assert line.sent == [("reply", ["いまは受付時間外です。"])]
    assert [m.data["method"] for m in publisher.published] == ["reply", "reply"]  # type: ignore[attr-defined]
    assert (await store.db[SENT].find_one({"_id": command.id}))["state"] == "sent"
