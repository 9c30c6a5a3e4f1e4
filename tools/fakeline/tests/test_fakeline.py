"""The fake LINE platform checks requests as LINE does, and records what each user received."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import io
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from soudan_fakeline import FakeLineServer, new_user_id
from soudan_fakeline.main import simulate
from soudan_fakeline.platform import RateLimit
from soudan_fakeline.server import TEST_ACCESS_TOKEN as TOKEN
from soudan_fakeline.server import TEST_CHANNEL_SECRET as SECRET

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


async def _post(
    http: aiohttp.ClientSession,
    line: FakeLineServer,
    path: str,
    body: Any,
    *,
    token: str | None = TOKEN,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], Any]:
    sent = {"Content-Type": "application/json", **(headers or {})}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with http.post(line.url + path, data=data, headers=sent) as response:
        text = await response.text()
        return response.status, dict(response.headers), json.loads(text) if text else None


def _text(text: str) -> dict[str, str]:
    return {"type": "text", "text": text}


async def test_push_without_a_valid_bearer_token_is_401(
    line: FakeLineServer, http: aiohttp.ClientSession
) -> None:
    user = new_user_id()
    body = {"to": user, "messages": [_text("hi")]}
    for token in (None, "wrong-token"):
        status, headers, answer = await _post(http, line, "/v2/bot/message/push", body, token=token)
        assert status == 401
        assert "x-line-request-id" in {k.lower() for k in headers}
        assert "access token" in answer["message"]
    assert line.fake.received(user) == []


async def test_a_push_is_received_in_order_with_a_request_id(
    line: FakeLineServer, http: aiohttp.ClientSession
) -> None:
    user = new_user_id()
    body = {"to": user, "messages": [_text("一"), _text("二")]}
    status, headers, answer = await _post(http, line, "/v2/bot/message/push", body)
    assert status == 200
    assert len(answer["sentMessages"]) == 2
    status, _, _ = await _post(
        http, line, "/v2/bot/message/push", {**body, "messages": [_text("三")]}
    )
    assert status == 200
    assert line.fake.texts(user) == ["一", "二", "三"]
    assert line.fake.received(user)[0].request_id == headers["x-line-request-id"]
    assert line.fake.consumption == 2


@pytest.mark.parametrize(
    ("body", "prop"),
    [
        ({"messages": [_text("x")]}, "to"),
        ({"to": "not-a-user", "messages": [_text("x")]}, "to"),
        ({"to": "U" + "0" * 32, "messages": []}, "messages"),
        ({"to": "U" + "0" * 32, "messages": [_text("x")] * 6}, "messages"),
        ({"to": "U" + "0" * 32, "messages": [{"type": "text", "text": ""}]}, "messages[0].text"),
        ({"to": "U" + "0" * 32, "messages": [{"type": "txt", "text": "x"}]}, "messages[0].type"),
        ({"to": "U" + "0" * 32, "messages": [_text("😀" * 2501)]}, "messages[0].text"),
    ],
)
async def test_a_push_of_the_wrong_shape_is_400_with_lines_error_body(
    line: FakeLineServer, http: aiohttp.ClientSession, body: dict[str, Any], prop: str
) -> None:
    status, _, answer = await _post(http, line, "/v2/bot/message/push", body)
    assert status == 400
    assert answer["message"].startswith("The request body has")
    assert answer["details"][0]["property"] == prop
    assert line.fake.deliveries == []


async def test_text_length_is_counted_in_utf16_units(
    line: FakeLineServer, http: aiohttp.ClientSession
) -> None:
    user = new_user_id()
    exactly = "😀" * 2500  # 5,000 UTF-16 units, 2,500 characters
    status, _, _ = await _post(
        http, line, "/v2/bot/message/push", {"to": user, "messages": [_text(exactly)]}
    )
    assert status == 200


async def test_a_body_over_2_mb_is_413(line: FakeLineServer, http: aiohttp.ClientSession) -> None:
    body = json.dumps({"to": new_user_id(), "messages": [_text("x" * (2 * 1024 * 1024))]})
    status, _, _ = await _post(http, line, "/v2/bot/message/push", body.encode())
    assert status == 413


async def test_a_reply_token_works_once_and_expires_after_a_minute(
    line: FakeLineServer, http: aiohttp.ClientSession
) -> None:
    user = new_user_id()
    token = line.fake.issue_reply_token(user)
    body = {"replyToken": token, "messages": [_text("こんにちは")]}
    status, _, _ = await _post(http, line, "/v2/bot/message/reply", body)
    assert status == 200
    status, _, answer = await _post(http, line, "/v2/bot/message/reply", body)
    assert (status, answer["message"]) == (400, "Invalid reply token")
    late = line.fake.issue_reply_token(user)
    line.fake.advance(61)
    status, _, _ = await _post(
        http, line, "/v2/bot/message/reply", {"replyToken": late, "messages": [_text("遅い")]}
    )
    assert status == 400
    assert line.fake.texts(user) == ["こんにちは"]
    assert line.fake.consumption == 0  # replies are free


async def test_a_retry_key_is_refused_on_reply_and_must_be_a_uuid(
    line: FakeLineServer, http: aiohttp.ClientSession
) -> None:
    user = new_user_id()
    token = line.fake.issue_reply_token(user)
    status, _, _ = await _post(
        http,
        line,
        "/v2/bot/message/reply",
        {"replyToken": token, "messages": [_text("x")]},
        headers={"X-Line-Retry-Key": str(uuid.uuid4())},
    )
    assert status == 400
    status, _, _ = await _post(
        http,
        line,
        "/v2/bot/message/push",
        {"to": user, "messages": [_text("x")]},
        headers={"X-Line-Retry-Key": uuid.uuid4().hex},  # no dashes: not LINE's UUID format
    )
    assert status == 400
    assert line.fake.received(user) == []


async def test_a_repeated_retry_key_is_409_with_the_accepted_request_id(
    line: FakeLineServer, http: aiohttp.ClientSession
) -> None:
    user = new_user_id()
    key = str(uuid.uuid4())
    body = {"to": user, "messages": [_text("一度だけ")]}
    status, first, _ = await _post(
        http, line, "/v2/bot/message/push", body, headers={"X-Line-Retry-Key": key}
    )
    assert status == 200
    status, second, _ = await _post(
        http, line, "/v2/bot/message/push", body, headers={"X-Line-Retry-Key": key}
    )
    assert status == 409
    assert second["x-line-accepted-request-id"] == first["x-line-request-id"]
    assert second["x-line-request-id"] != first["x-line-request-id"]
    assert line.fake.texts(user) == ["一度だけ"]
    line.fake.advance(24 * 3600 + 1)
    status, _, _ = await _post(
        http, line, "/v2/bot/message/push", body, headers={"X-Line-Retry-Key": key}
    )
    assert status == 200


async def test_a_5xx_before_processing_lets_the_same_retry_key_through(
    line: FakeLineServer, http: aiohttp.ClientSession
) -> None:
    user = new_user_id()
    key = str(uuid.uuid4())
    body = {"to": user, "messages": [_text("x")]}
    line.fake.inject("push", status=500)
    status, _, _ = await _post(
        http, line, "/v2/bot/message/push", body, headers={"X-Line-Retry-Key": key}
    )
    assert status == 500
    assert line.fake.received(user) == []
    status, _, _ = await _post(
        http, line, "/v2/bot/message/push", body, headers={"X-Line-Retry-Key": key}
    )
    assert status == 200


async def test_a_5xx_after_processing_delivers_and_the_retry_is_409(
    line: FakeLineServer, http: aiohttp.ClientSession
) -> None:
    user = new_user_id()
    key = str(uuid.uuid4())
    body = {"to": user, "messages": [_text("x")]}
    line.fake.inject("push", status=503, after_processing=True)
    status, _, _ = await _post(
        http, line, "/v2/bot/message/push", body, headers={"X-Line-Retry-Key": key}
    )
    assert status == 503
    status, _, _ = await _post(
        http, line, "/v2/bot/message/push", body, headers={"X-Line-Retry-Key": key}
    )
    assert status == 409
    assert line.fake.texts(user) == ["x"]


async def test_a_held_answer_comes_after_the_message_is_out_and_its_retry_key_is_409(
    line: FakeLineServer, http: aiohttp.ClientSession
) -> None:
    """A sender that dies while its answer is held never learns the push went out; its retry
    with the same key is 409. Clearing the faults (here through the control API) answers it."""
    user = new_user_id()
    key = str(uuid.uuid4())
    body = {"to": user, "messages": [_text("x")]}
    line.fake.inject("push", status=0, hold=30)
    held = asyncio.create_task(
        _post(http, line, "/v2/bot/message/push", body, headers={"X-Line-Retry-Key": key})
    )
    for _ in range(500):
        if line.fake.held:
            break
        await asyncio.sleep(0.01)
    assert line.fake.held == 1
    assert line.fake.texts(user) == ["x"]
    assert not held.done()
    status, headers, _ = await _post(
        http, line, "/v2/bot/message/push", body, headers={"X-Line-Retry-Key": key}
    )
    assert status == 409
    async with http.delete(line.url + "/fake/v1/faults") as response:
        assert response.status == 200
    status, answered, _ = await asyncio.wait_for(held, 5)
    assert status == 200
    assert headers["x-line-accepted-request-id"] == answered["x-line-request-id"]
    assert line.fake.held == 0
    assert line.fake.texts(user) == ["x"]


async def test_multicast_takes_at_most_500_ids(
    line: FakeLineServer, http: aiohttp.ClientSession
) -> None:
    users = [new_user_id() for _ in range(501)]
    status, _, answer = await _post(
        http, line, "/v2/bot/message/multicast", {"to": users, "messages": [_text("x")]}
    )
    assert status == 400
    assert answer["details"][0]["property"] == "to"
    status, _, _ = await _post(
        http, line, "/v2/bot/message/multicast", {"to": users[:500], "messages": [_text("x")]}
    )
    assert status == 200
    assert len(line.fake.recipients()) == 500
    assert line.fake.consumption == 500


async def test_multicast_over_its_rate_is_429(
    line: FakeLineServer, http: aiohttp.ClientSession
) -> None:
    line.fake.rate_limits["multicast"] = RateLimit(5, burst=5)
    body = {"to": [new_user_id()], "messages": [_text("x")]}
    statuses = [(await _post(http, line, "/v2/bot/message/multicast", body))[0] for _ in range(8)]
    assert statuses[:5] == [200] * 5
    assert 429 in statuses[5:]


def test_a_token_bucket_holds_its_rate_over_time() -> None:
    bucket = RateLimit(200)
    taken = sum(bucket.take(t / 1000) for t in range(0, 2000))  # one try a millisecond, 2 s
    assert 390 <= taken <= 422  # 200/s over 2 s plus the burst of 20


async def test_the_monthly_quota_refuses_what_would_exceed_it(
    line: FakeLineServer, http: aiohttp.ClientSession
) -> None:
    line.fake.quota_limit = 3
    async with http.get(
        line.url + "/v2/bot/message/quota", headers={"Authorization": f"Bearer {TOKEN}"}
    ) as response:
        assert await response.json() == {"type": "limited", "value": 3}
    users = [new_user_id() for _ in range(4)]
    status, _, answer = await _post(
        http, line, "/v2/bot/message/multicast", {"to": users, "messages": [_text("x")]}
    )
    assert (status, answer["message"]) == (429, "You have reached your monthly limit.")
    status, _, _ = await _post(
        http, line, "/v2/bot/message/multicast", {"to": users[:3], "messages": [_text("x")]}
    )
    assert status == 200
    async with http.get(
        line.url + "/v2/bot/message/quota/consumption",
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as response:
        assert await response.json() == {"totalUsage": 3}


async def _consumption(http: aiohttp.ClientSession, line: FakeLineServer) -> int:
    async with http.get(
        line.url + "/v2/bot/message/quota/consumption",
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as response:
        assert response.status == 200
        return int((await response.json())["totalUsage"])


async def test_the_fake_counts_push_but_not_reply_and_answers_429_when_the_month_is_spent(
    line: FakeLineServer, http: aiohttp.ClientSession
) -> None:
    line.fake.quota_limit = 2
    user = new_user_id()
    token = line.fake.issue_reply_token(user)
    body = {"replyToken": token, "messages": [_text("返信")]}
    assert (await _post(http, line, "/v2/bot/message/reply", body))[0] == 200
    assert await _consumption(http, line) == 0
    for text in ("一", "二"):
        push = {"to": user, "messages": [_text(text)]}
        assert (await _post(http, line, "/v2/bot/message/push", push))[0] == 200
    assert await _consumption(http, line) == 2
    status, _, answer = await _post(
        http, line, "/v2/bot/message/push", {"to": user, "messages": [_text("三")]}
    )
    assert (status, answer["message"]) == (429, "You have reached your monthly limit.")
    status, _, answer = await _post(
        http, line, "/v2/bot/message/broadcast", {"messages": [_text("お知らせ")]}
    )
    assert (status, answer["message"]) == (429, "You have reached your monthly limit.")
    late = line.fake.issue_reply_token(user)  # a reply still goes through when the month is spent
    body = {"replyToken": late, "messages": [_text("返信2")]}
    assert (await _post(http, line, "/v2/bot/message/reply", body))[0] == 200
    assert line.fake.texts(user) == ["返信", "一", "二", "返信2"]
    assert await _consumption(http, line) == 2


async def test_the_months_consumption_starts_again_at_zero_in_a_new_month(
    line: FakeLineServer, http: aiohttp.ClientSession
) -> None:
    line.fake.quota_limit = 100
    line.fake.consumption = 100
    assert await _consumption(http, line) == 100
    line.fake.advance(32 * 24 * 3600)
    assert await _consumption(http, line) == 0
    push = {"to": new_user_id(), "messages": [_text("来月")]}
    assert (await _post(http, line, "/v2/bot/message/push", push))[0] == 200
    assert await _consumption(http, line) == 1


async def test_injected_latency_delays_the_answer(
    line: FakeLineServer, http: aiohttp.ClientSession
) -> None:
    line.fake.set_latency(0.3, "push")
    started = time.monotonic()
    status, _, _ = await _post(
        http, line, "/v2/bot/message/push", {"to": new_user_id(), "messages": [_text("x")]}
    )
    assert status == 200
    assert time.monotonic() - started >= 0.3


@contextlib.asynccontextmanager
async def _receiver() -> AsyncIterator[tuple[str, list[tuple[bytes, str]]]]:
    """A webhook endpoint on a free port: its URL and what it received (body, signature)."""
    seen: list[tuple[bytes, str]] = []

    async def receive(request: web.Request) -> web.Response:
        seen.append((await request.read(), request.headers["X-Line-Signature"]))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/webhook", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/webhook", seen
    finally:
        await runner.cleanup()


async def test_the_control_api_names_the_message_it_sent_so_a_later_unsend_can_name_it(
    line: FakeLineServer, http: aiohttp.ClientSession
) -> None:
    user = new_user_id()
    async with _receiver() as (url, seen):
        async with http.post(
            line.url + "/fake/v1/webhook",
            json={"url": url, "events": [{"type": "message", "userId": user, "text": "ごめん"}]},
        ) as response:
            [message_id] = (await response.json())["messageIds"]
        unsend = {"type": "unsend", "userId": user, "messageId": message_id}
        async with http.post(line.url + "/fake/v1/webhook", json={"url": url, "events": [unsend]}):
            pass
    sent, unsent = (json.loads(raw)["events"][0] for raw, _ in seen)
    assert sent["message"]["id"] == message_id
    assert unsent["unsend"]["messageId"] == message_id


async def test_the_webhook_sender_signs_as_line_and_its_reply_token_is_accepted(
    line: FakeLineServer, http: aiohttp.ClientSession
) -> None:
    user = new_user_id()
    async with _receiver() as (url, seen):
        result = await line.webhook.text(user, "たすけて", url=url)
    assert result.status == 200
    raw, sig = seen[0]
    expected = base64.b64encode(hmac.new(SECRET.encode(), raw, hashlib.sha256).digest()).decode()
    assert sig == expected
    body = json.loads(raw)
    assert body["destination"] == line.fake.bot_user_id
    event = body["events"][0]
    assert event["message"]["text"] == "たすけて"
    assert len(event["webhookEventId"]) == 26
    status, _, _ = await _post(
        http,
        line,
        "/v2/bot/message/reply",
        {"replyToken": event["replyToken"], "messages": [_text("受け取りました")]},
    )
    assert status == 200
    assert line.fake.texts(user) == ["受け取りました"]


async def test_a_rich_menu_is_created_given_its_image_and_made_default(
    line: FakeLineServer, http: aiohttp.ClientSession
) -> None:
    from PIL import Image

    menu = {
        "size": {"width": 2500, "height": 843},
        "selected": True,
        "name": "soudan",
        "chatBarText": "メニュー",
        "areas": [
            {
                "bounds": {"x": 0, "y": 0, "width": 2500, "height": 843},
                "action": {"type": "postback", "data": "menu=hours"},
            }
        ],
    }
    status, _, answer = await _post(http, line, "/v2/bot/richmenu", menu)
    assert status == 200
    menu_id = answer["richMenuId"]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with http.post(line.url + f"/v2/bot/user/all/richmenu/{menu_id}", headers=auth) as r:
        assert r.status == 400  # no image yet
    wrong = io.BytesIO()
    Image.new("RGB", (2500, 1686)).save(wrong, "PNG")
    async with http.post(
        line.url + f"/v2/bot/richmenu/{menu_id}/content",
        data=wrong.getvalue(),
        headers={**auth, "Content-Type": "image/png"},
    ) as r:
        assert r.status == 400
    right = io.BytesIO()
    Image.new("RGB", (2500, 843)).save(right, "JPEG")
    async with http.post(
        line.url + f"/v2/bot/richmenu/{menu_id}/content",
        data=right.getvalue(),
        headers={**auth, "Content-Type": "image/jpeg"},
    ) as r:
        assert r.status == 200
    async with http.post(line.url + f"/v2/bot/user/all/richmenu/{menu_id}", headers=auth) as r:
        assert r.status == 200
    assert line.fake.default_rich_menu == menu_id


async def test_the_control_api_shows_what_a_user_received_and_switches_faults(
    line: FakeLineServer, http: aiohttp.ClientSession
) -> None:
    user = new_user_id()
    async with http.post(line.url + "/fake/v1/faults", json={"endpoint": "push", "status": 502}):
        pass
    body = {"to": user, "messages": [_text("x")]}
    assert (await _post(http, line, "/v2/bot/message/push", body))[0] == 502
    assert (await _post(http, line, "/v2/bot/message/push", body))[0] == 200
    async with http.get(line.url + f"/fake/v1/users/{user}/messages") as response:
        answer = await response.json()
    assert [m["text"] for m in answer["messages"]] == ["x"]
    assert answer["messages"][0]["method"] == "push"


async def test_simulate_plays_a_student_and_reports_missing_answers(
    line: FakeLineServer,
) -> None:
    """Against a stand-in stack that answers every event by reply: nothing is missing."""
    async with aiohttp.ClientSession() as client:

        async def answer(request: web.Request) -> web.Response:
            body = await request.json()
            for event in body["events"]:
                if "replyToken" in event:
                    message: dict[str, Any] = _text(f"受け付けました: {event['type']}")
                    if event["type"] == "follow":
                        message["quickReply"] = {
                            "items": [
                                {
                                    "type": "action",
                                    "action": {
                                        "type": "postback",
                                        "label": "高校",
                                        "data": "school_type=public_high",
                                    },
                                }
                            ]
                        }
                    async with client.post(
                        line.url + "/v2/bot/message/reply",
                        json={"replyToken": event["replyToken"], "messages": [message]},
                        headers={"Authorization": f"Bearer {TOKEN}"},
                    ) as response:
                        assert response.status == 200
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post("/webhook", answer)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            code = await asyncio.wait_for(
                simulate(line.url, f"http://127.0.0.1:{port}/webhook", wait=3.0), 25
            )
        finally:
            await runner.cleanup()
    assert code == 0
