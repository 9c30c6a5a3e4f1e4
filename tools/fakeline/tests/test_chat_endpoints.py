"""The fake's chat endpoints, as LINE's spec describes them: ``markAsRead`` (既読) by the token of
a webhook message, and ``loading/start`` (the loading animation), both free of the quota."""

from __future__ import annotations

import json
import uuid
from typing import Any

import aiohttp
import pytest
from soudan_fakeline import FakeLineServer, new_user_id
from soudan_fakeline.server import TEST_ACCESS_TOKEN as TOKEN

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

MARK = "/v2/bot/chat/markAsRead"
LOADING = "/v2/bot/chat/loading/start"


async def _post(
    http: aiohttp.ClientSession,
    line: FakeLineServer,
    path: str,
    body: Any,
    *,
    token: str | None = TOKEN,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    sent = {"Content-Type": "application/json", **(headers or {})}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    async with http.post(line.url + path, data=json.dumps(body).encode(), headers=sent) as r:
        text = await r.text()
        assert r.headers.get("x-line-request-id")
        return r.status, json.loads(text) if text else None


async def _chat(http: aiohttp.ClientSession, line: FakeLineServer, user: str) -> dict[str, Any]:
    async with http.get(f"{line.url}/fake/v1/users/{user}/chat") as response:
        assert response.status == 200
        chat: dict[str, Any] = await response.json()
        return chat


async def test_a_webhook_messages_read_token_marks_it_and_the_earlier_ones_read_but_no_later(
    line: FakeLineServer, http: aiohttp.ClientSession
) -> None:
    user = new_user_id()
    events = [line.webhook.message_event(user, text) for text in ("一つ目", "二つ目", "三つ目")]
    tokens = [e["message"]["markAsReadToken"] for e in events]
    ids = [e["message"]["id"] for e in events]
    assert all(tokens)
    assert len(set(tokens)) == 3
    assert line.fake.read(user) == []

    status, body = await _post(http, line, MARK, {"markAsReadToken": tokens[1]})

    assert (status, body) == (200, {})
    assert line.fake.read(user) == ids[:2]
    chat = await _chat(http, line, user)
    assert [(m["id"], m["read"]) for m in chat["sent"]] == [
        (ids[0], True),
        (ids[1], True),
        (ids[2], False),
    ]
    # The token has no expiry and may be used again; a later message's marks the rest.
    line.fake.advance(30 * 24 * 3600)
    assert (await _post(http, line, MARK, {"markAsReadToken": tokens[1]}))[0] == 200
    assert (await _post(http, line, MARK, {"markAsReadToken": tokens[2]}))[0] == 200
    assert line.fake.read(user) == ids
    assert [r.status for r in line.fake.requests_to("mark_as_read")] == [200, 200, 200]
    assert line.fake.consumption == 0  # free: no message of the month's quota


async def test_a_media_message_carries_a_read_token_too(
    line: FakeLineServer, http: aiohttp.ClientSession
) -> None:
    user = new_user_id()
    event = line.webhook.media_event(user, "sticker")
    assert (
        await _post(http, line, MARK, {"markAsReadToken": event["message"]["markAsReadToken"]})
    )[0] == 200
    assert line.fake.read(user) == [event["message"]["id"]]


@pytest.mark.parametrize(
    "body",
    [{}, {"markAsReadToken": ""}, {"markAsReadToken": 12}, {"chat": {"userId": "U1"}}],
)
async def test_mark_as_read_of_the_wrong_shape_is_400_with_lines_error_body(
    line: FakeLineServer, http: aiohttp.ClientSession, body: dict[str, Any]
) -> None:
    status, answer = await _post(http, line, MARK, body)
    assert status == 400
    assert answer["message"] == "The request body has 1 error(s)"
    assert answer["details"][0]["property"] == "markAsReadToken"


async def test_mark_as_read_with_an_unknown_token_is_400_and_marks_nothing(
    line: FakeLineServer, http: aiohttp.ClientSession
) -> None:
    user = new_user_id()
    line.webhook.message_event(user, "よんで")
    status, answer = await _post(http, line, MARK, {"markAsReadToken": "not-from-a-webhook"})
    assert status == 400
    assert "markAsReadToken" in answer["message"]
    assert line.fake.read(user) == []


async def test_mark_as_read_needs_the_channel_token_and_takes_no_retry_key(
    line: FakeLineServer, http: aiohttp.ClientSession
) -> None:
    user = new_user_id()
    token = line.webhook.message_event(user, "よんで")["message"]["markAsReadToken"]
    assert (await _post(http, line, MARK, {"markAsReadToken": token}, token=None))[0] == 401
    key = {"X-Line-Retry-Key": str(uuid.uuid4())}
    assert (await _post(http, line, MARK, {"markAsReadToken": token}, headers=key))[0] == 400
    assert line.fake.read(user) == []


async def test_the_loading_animation_shows_for_its_seconds_and_ends_when_a_message_arrives(
    line: FakeLineServer, http: aiohttp.ClientSession
) -> None:
    user = new_user_id()
    status, body = await _post(http, line, LOADING, {"chatId": user, "loadingSeconds": 10})
    assert (status, body) == (202, {})
    assert line.fake.loading_shown(user)
    line.fake.advance(10)
    assert not line.fake.loading_shown(user)

    assert (await _post(http, line, LOADING, {"chatId": user}))[0] == 202  # 20 s by default
    line.fake.advance(15)
    assert line.fake.loading_shown(user)
    push = {"to": user, "messages": [{"type": "text", "text": "おまたせ"}]}
    assert (await _post(http, line, "/v2/bot/message/push", push))[0] == 200
    assert not line.fake.loading_shown(user)

    chat = await _chat(http, line, user)
    assert [x["seconds"] for x in chat["loading"]] == [10, 20]
    assert chat["loadingShown"] is False
    assert [r.status for r in line.fake.requests_to("loading")] == [202, 202]
    assert line.fake.consumption == 1  # the push; the animations are free


@pytest.mark.parametrize("seconds", [0, 3, 7, 61, 65, 120, -5, "10", True, 10.0, None])
async def test_loading_seconds_outside_5_to_60_or_not_a_multiple_of_5_are_400(
    line: FakeLineServer, http: aiohttp.ClientSession, seconds: Any
) -> None:
    user = new_user_id()
    status, answer = await _post(http, line, LOADING, {"chatId": user, "loadingSeconds": seconds})
    assert status == 400
    assert answer["details"][0]["property"] == "loadingSeconds"
    assert line.fake.loadings_of(user) == []


@pytest.mark.parametrize("chat_id", [None, "", "not-a-user", "C" + "0" * 32, 42])
async def test_loading_for_anything_but_a_user_id_is_400(
    line: FakeLineServer, http: aiohttp.ClientSession, chat_id: Any
) -> None:
    body = {"loadingSeconds": 5} if chat_id is None else {"chatId": chat_id, "loadingSeconds": 5}
    status, answer = await _post(http, line, LOADING, body)
    assert status == 400
    assert answer["details"][0]["property"] == "chatId"
    assert line.fake.loadings == []


@pytest.mark.parametrize("seconds", [5, 30, 60])
async def test_every_multiple_of_5_from_5_to_60_is_taken(
    line: FakeLineServer, http: aiohttp.ClientSession, seconds: int
) -> None:
    user = new_user_id()
    assert (await _post(http, line, LOADING, {"chatId": user, "loadingSeconds": seconds}))[0] == 202
    assert [x.seconds for x in line.fake.loadings_of(user)] == [seconds]
