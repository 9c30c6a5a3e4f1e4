"""Sending texts against the fake LINE platform, on the real broker: reply first, push after,
retries that never send twice, and dead letters for what cannot be sent."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import pytest
from aiohttp import web
from soudan_dispatch.line import LineClient, TokenSource, retry_key
from soudan_dispatch.sending import SENT
from soudan_fakeline import FakeLineServer, new_user_id
from soudan_shared.bus import REASON_HEADER, Bus
from soudan_shared.contracts import QuickReplyOption, SendText, utcnow
from soudan_shared.fact_types import LINE_API_ERROR, REPLY_FAILED, REPLY_SENT
from soudan_shared.records import MESSAGES, claim_reply_token
from soudan_shared.testing.proxy import free_port
from soudan_shared.testing.waiting import wait_until
from soudan_shared.topology import SEND_TEXT_QUEUE, Topology

from .conftest import Dispatch, FactLog

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def _send(user: str, *texts: str, token: str | None = None, age: float = 1.0) -> SendText:
    return SendText(
        to=user,
        texts=list(texts) or ["こんにちは"],
        purpose="out_of_hours",
        reply_token=token,
        reply_token_received_at=utcnow() - timedelta(seconds=age) if token else None,
        case_id="case-1",
    )


async def _sent_fact(facts: FactLog, command: SendText) -> Any:
    return await wait_until(
        lambda: next((f for f in facts.of(REPLY_SENT) if f.data["command_id"] == command.id), None),
        timeout=15,
        message="reply.sent",
    )


async def _dead_letters(
    channel: aio_pika.abc.AbstractChannel, topology: Topology
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    queue = await channel.get_queue(topology.dead_letter_queue(SEND_TEXT_QUEUE), ensure=False)
    found = []
    while (message := await queue.get(fail=False, no_ack=True)) is not None:
        found.append(message)
    return found


def test_a_message_id_becomes_a_retry_key_in_lines_uuid_format() -> None:
    message_id = uuid.uuid4().hex
    assert retry_key(message_id) == str(uuid.UUID(hex=message_id))
    assert retry_key("broadcast-1", "3") == retry_key("broadcast-1", "3")
    assert retry_key("broadcast-1", "3") != retry_key("broadcast-1", "4")
    assert str(uuid.UUID(retry_key("not-hex"))) == retry_key("not-hex")


async def test_a_reply_token_within_its_window_is_answered_by_reply(
    dispatch: Dispatch, line: FakeLineServer, publisher: Bus, facts: FactLog
) -> None:
    user = new_user_id()
    token = line.fake.issue_reply_token(user)
    command = _send(user, "一つ目", "二つ目", token=token, age=5)
    await publisher.publish(command)
    fact = await _sent_fact(facts, command)
    assert fact.data["method"] == "reply"
    assert fact.data["purpose"] == "out_of_hours"
    assert fact.data["request_id"] == line.fake.received(user)[0].request_id
    assert fact.data["latency_ms"] >= 0
    assert line.fake.texts(user) == ["一つ目", "二つ目"]
    assert [d.method for d in line.fake.received(user)] == ["reply", "reply"]


async def test_an_old_reply_token_is_not_tried_and_a_push_goes_out_with_the_retry_key(
    dispatch: Dispatch, line: FakeLineServer, publisher: Bus, facts: FactLog
) -> None:
    user = new_user_id()
    token = line.fake.issue_reply_token(user)
    command = _send(user, "遅れてごめんね", token=token, age=120)
    await publisher.publish(command)
    fact = await _sent_fact(facts, command)
    assert fact.data["method"] == "push"
    assert line.fake.requests_to("reply") == []
    [delivery] = line.fake.received(user)
    assert delivery.retry_key == str(uuid.UUID(hex=command.id))


async def test_a_reply_token_line_refuses_falls_back_to_a_push(
    dispatch: Dispatch, line: FakeLineServer, publisher: Bus, facts: FactLog
) -> None:
    user = new_user_id()
    command = _send(user, "x", token="never-issued-token", age=3)
    await publisher.publish(command)
    fact = await _sent_fact(facts, command)
    assert fact.data["method"] == "push"
    assert [r.status for r in line.fake.requests_to("reply")] == [400]
    assert line.fake.texts(user) == ["x"]


async def test_a_push_whose_answer_was_lost_is_retried_and_sent_once(
    dispatch: Dispatch, line: FakeLineServer, publisher: Bus, facts: FactLog
) -> None:
    user = new_user_id()
    line.fake.inject("push", status=500, after_processing=True)
    command = _send(user, "一度だけ届く")
    await publisher.publish(command)
    fact = await _sent_fact(facts, command)
    assert [r.status for r in line.fake.requests_to("push")] == [500, 409]
    assert line.fake.texts(user) == ["一度だけ届く"]
    assert fact.data["request_id"] == line.fake.received(user)[0].request_id
    assert len(facts.of(LINE_API_ERROR)) >= 1


async def test_a_reply_whose_answer_was_lost_is_not_pushed_again(
    dispatch: Dispatch, line: FakeLineServer, publisher: Bus, facts: FactLog
) -> None:
    user = new_user_id()
    token = line.fake.issue_reply_token(user)
    line.fake.inject("reply", status=502, after_processing=True)
    command = _send(user, "返事", token=token, age=2)
    await publisher.publish(command)
    fact = await _sent_fact(facts, command)
    assert fact.data["method"] == "reply"
    assert [r.status for r in line.fake.requests_to("reply")] == [502, 400]
    assert line.fake.requests_to("push") == []
    assert line.fake.texts(user) == ["返事"]


async def test_a_reply_tried_before_a_crash_and_back_too_late_is_pushed_and_flagged(
    dispatch: Dispatch, line: FakeLineServer, publisher: Bus, facts: FactLog, db: Any
) -> None:
    # A dispatch died after trying the reply (its record says so) and the command comes back
    # after the token's window: whether the first try reached the student cannot be known, so
    # the text is pushed (never lost) and reply.sent says it may have arrived twice.
    user = new_user_id()
    token = line.fake.issue_reply_token(user)
    command = _send(user, "おそくなってごめんね", token=token, age=120)
    await db[SENT].insert_one({"_id": command.id, "reply_tried_at": utcnow(), "to": user})
    await publisher.publish(command)
    fact = await _sent_fact(facts, command)
    assert fact.data["method"] == "push"
    assert "twice" in fact.data["note"]
    assert line.fake.texts(user) == ["おそくなってごめんね"]
    # Without an earlier try, the same late command is an ordinary push.
    other = _send(new_user_id(), "ふつうのプッシュ", token=token, age=120)
    await publisher.publish(other)
    assert (await _sent_fact(facts, other)).data["note"] is None


async def test_429_is_retried_with_backoff_until_sent(
    dispatch: Dispatch, line: FakeLineServer, publisher: Bus, facts: FactLog
) -> None:
    user = new_user_id()
    line.fake.inject("push", status=429, times=2)
    command = _send(user, "混んでいても届く")
    await publisher.publish(command)
    await _sent_fact(facts, command)
    pushes = line.fake.requests_to("push")
    assert [r.status for r in pushes] == [429, 429, 200]
    assert pushes[2].at - pushes[0].at >= 0.02  # waited between tries
    assert line.fake.texts(user) == ["混んでいても届く"]


async def test_a_send_that_keeps_failing_is_dead_lettered_after_its_attempts(
    dispatch: Dispatch,
    line: FakeLineServer,
    publisher: Bus,
    facts: FactLog,
    raw_channel: aio_pika.abc.AbstractChannel,
    topology: Topology,
) -> None:
    user = new_user_id()
    line.fake.inject("push", status=503, times=100)
    command = _send(user, "届かない")
    await publisher.publish(command)
    failed = await wait_until(lambda: facts.of(REPLY_FAILED), timeout=15, message="failed")
    assert failed[0].data["attempts"] == dispatch.settings.send_max_attempts
    assert failed[0].data["status"] == 503
    dead = await wait_until(
        lambda: _dead_letters(raw_channel, topology), timeout=10, message="dead letter"
    )
    assert dead[0].message_id == command.id
    assert "503" in dead[0].headers[REASON_HEADER]
    assert len(line.fake.requests_to("push")) == dispatch.settings.send_max_attempts
    assert line.fake.received(user) == []


async def test_a_refusal_other_than_429_or_5xx_is_dead_lettered_at_once(
    dispatch: Dispatch,
    line: FakeLineServer,
    publisher: Bus,
    facts: FactLog,
    raw_channel: aio_pika.abc.AbstractChannel,
    topology: Topology,
) -> None:
    line.fake.inject("push", status=403, times=10)
    command = _send(new_user_id(), "x")
    await publisher.publish(command)
    failed = await wait_until(lambda: facts.of(REPLY_FAILED), timeout=15, message="failed")
    assert failed[0].data["attempts"] == 1
    assert await wait_until(lambda: _dead_letters(raw_channel, topology), timeout=10)
    assert len(line.fake.requests_to("push")) == 1


async def test_a_redelivered_command_is_not_sent_again(
    dispatch: Dispatch, line: FakeLineServer, publisher: Bus, facts: FactLog, db: Any
) -> None:
    user = new_user_id()
    token = line.fake.issue_reply_token(user)
    command = _send(user, "一回", token=token, age=1)
    await publisher.publish(command)
    await _sent_fact(facts, command)
    await publisher.publish(command)  # the broker delivers it again
    later = _send(user, "次")
    await publisher.publish(later)  # same user: handled after the redelivery
    await _sent_fact(facts, later)
    assert line.fake.texts(user) == ["一回", "次"]
    assert len([f for f in facts.of(REPLY_SENT) if f.data["command_id"] == command.id]) == 2
    assert len({f.id for f in facts.of(REPLY_SENT) if f.data["command_id"] == command.id}) == 1
    record = await db[SENT].find_one({"_id": command.id})
    assert record["state"] == "sent"
    assert record["method"] == "reply"


async def test_one_users_messages_go_out_in_order(
    dispatch: Dispatch, line: FakeLineServer, publisher: Bus, facts: FactLog
) -> None:
    user = new_user_id()
    line.fake.inject("push", status=500, times=1)  # the first one needs a retry
    commands = [_send(user, f"{i}") for i in range(5)]
    for command in commands:
        await publisher.publish(command)
    await _sent_fact(facts, commands[-1])
    assert line.fake.texts(user) == ["0", "1", "2", "3", "4"]


async def test_a_quick_reply_rides_on_the_last_text(
    dispatch: Dispatch, line: FakeLineServer, publisher: Bus, facts: FactLog
) -> None:
    user = new_user_id()
    command = SendText(
        to=user,
        texts=["質問", "どれかな？"],
        purpose="school_type_question",
        quick_reply=[QuickReplyOption(label="高校", data="school_type=public_high")],
    )
    await publisher.publish(command)
    await _sent_fact(facts, command)
    first, last = line.fake.received(user)
    assert "quickReply" not in first.message
    item = last.message["quickReply"]["items"][0]
    assert item["action"] == {
        "type": "postback",
        "label": "高校",
        "data": "school_type=public_high",
    }


@pytest.mark.unit
async def test_a_new_token_in_the_token_file_takes_effect_without_a_restart(
    line: FakeLineServer, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first-token\n")
    line.fake.access_tokens = {"first-token"}
    tokens = TokenSource("first-token", token_file, check_every=3600)
    client = LineClient(line.url, line.url, tokens, timeout=2)
    try:
        user = new_user_id()
        await client.push(user, ["一"], key=str(uuid.uuid4()))
        token_file.write_text("second-token\n")
        line.fake.revoke_access_token("first-token")
        line.fake.access_tokens.add("second-token")
        await client.push(user, ["二"], key=str(uuid.uuid4()))  # 401, re-read, retried
    finally:
        await client.close()
    assert line.fake.texts(user) == ["一", "二"]
    assert [r.status for r in line.fake.requests_to("push")] == [200, 401, 200]


async def test_a_push_that_times_out_is_retried_and_the_user_gets_it_once(
    dispatch_settings: Any, line: FakeLineServer, publisher: Bus, facts: FactLog
) -> None:
    from .conftest import running_dispatch

    user = new_user_id()
    line.fake.set_latency(1.5, "push", times=1)  # LINE still delivers it, after we gave up
    async with running_dispatch(dispatch_settings(line_request_timeout=1.0)):
        command = _send(user, "遅い返事")
        await publisher.publish(command)
        fact = await _sent_fact(facts, command)
        await wait_until(lambda: len(line.fake.requests_to("push")) == 2, timeout=5)
    assert fact.data["method"] == "push"
    assert line.fake.texts(user) == ["遅い返事"]
    assert any(f.data["status"] == 0 for f in facts.of(LINE_API_ERROR))


@pytest.mark.unit
async def test_calls_to_line_go_through_the_proxy_named_in_the_environment(
    line: FakeLineServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator whose network reaches LINE only through an egress proxy sets HTTPS_PROXY (here
    HTTP_PROXY, the fake speaking plain HTTP): dispatch's calls go through it."""
    seen: list[str] = []

    async def forward(request: web.Request) -> web.StreamResponse:
        seen.append(f"{request.method} {request.url.path}")
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        async with (
            aiohttp.ClientSession() as session,  # the proxy itself goes direct
            session.request(
                request.method, f"{line.url}{request.rel_url}", headers=headers, data=body
            ) as answer,
        ):
            return web.Response(
                status=answer.status, body=await answer.read(), content_type=answer.content_type
            )

    proxy = web.Application()
    proxy.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(proxy)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    for name in ("no_proxy", "NO_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    client = LineClient(line.url, line.url, TokenSource("test-access-token"), timeout=2)
    try:
        user = new_user_id()
        result = await client.push(user, ["プロキシ経由"], key=str(uuid.uuid4()))
    finally:
        await client.close()
        await runner.cleanup()
    assert result.status == 200
    assert seen == ["POST /v2/bot/message/push"]
    assert line.fake.texts(user) == ["プロキシ経由"]


async def test_a_reply_line_refuses_is_marked_failed_in_the_conversation_and_names_its_author(
    dispatch: Dispatch, line: FakeLineServer, publisher: Bus, facts: FactLog, db: Any
) -> None:
    line.fake.inject("push", status=403, times=10)
    user = new_user_id()
    command = SendText(
        to=user,
        texts=["一つ目", "二つ目"],
        purpose="counselor_reply",
        case_id="case-9",
        staff_id="staff-7",
    )
    await publisher.publish(command)
    failed = await wait_until(lambda: facts.of(REPLY_FAILED), timeout=15, message="failed")
    assert failed[0].data["staff_id"] == "staff-7"
    assert failed[0].data["problem"] == "forbidden"
    stored = await db[MESSAGES].find({"command_id": command.id}).sort("_id", 1).to_list()
    assert [m["text"] for m in stored] == ["一つ目", "二つ目"]
    assert {m["delivery"] for m in stored} == {"failed"}
    assert {m["delivery_problem"] for m in stored} == {"forbidden"}


async def test_an_automatic_reply_is_kept_in_the_conversation_as_sent(
    dispatch: Dispatch, line: FakeLineServer, publisher: Bus, facts: FactLog, db: Any
) -> None:
    user = new_user_id()
    command = _send(user, "いまは受付時間外です。")
    await publisher.publish(command)
    await _sent_fact(facts, command)
    [stored] = await db[MESSAGES].find({"user_id": user}).to_list()
    assert stored["direction"] == "out"
    assert stored["purpose"] == "out_of_hours"
    assert stored["case_id"] == "case-1"
    assert stored["text"] == "いまは受付時間外です。"
    assert stored["delivery"] == "sent"
    assert stored["staff_id"] is None


async def test_of_two_commands_with_the_same_reply_token_only_the_first_replies(
    dispatch: Dispatch, line: FakeLineServer, publisher: Bus, facts: FactLog, db: Any
) -> None:
    # The student's message got an automatic reply and a counselor answered within the
    # token's window with the same token: one reply (free), one push, each text once.
    user = new_user_id()
    token = line.fake.issue_reply_token(user)
    automatic = _send(user, "受け付けました", token=token, age=2)
    counselor = SendText(
        to=user,
        texts=["相談員の佐藤です"],
        purpose="counselor_reply",
        reply_token=token,
        reply_token_received_at=utcnow() - timedelta(seconds=3),
        case_id="case-1",
        staff_id="staff-1",
    )
    await publisher.publish(automatic)
    assert (await _sent_fact(facts, automatic)).data["method"] == "reply"
    await publisher.publish(counselor)
    assert (await _sent_fact(facts, counselor)).data["method"] == "push"
    assert [r.status for r in line.fake.requests_to("reply")] == [200]
    assert line.fake.texts(user) == ["受け付けました", "相談員の佐藤です"]
    assert line.fake.consumption == 1
    stored = await db[MESSAGES].find({"user_id": user}).to_list()
    assert {m["delivery"] for m in stored} == {"sent"}


async def test_a_redelivered_reply_keeps_the_token_it_claimed(
    dispatch: Dispatch, line: FakeLineServer, publisher: Bus, facts: FactLog, db: Any
) -> None:
    user = new_user_id()
    token = line.fake.issue_reply_token(user)
    command = _send(user, "もう一度", token=token, age=2)
    # an earlier delivery of the same command claimed the token and died before replying
    assert await claim_reply_token(db, token, command.id)
    assert not await claim_reply_token(db, token, "another-command")
    await publisher.publish(command)
    assert (await _sent_fact(facts, command)).data["method"] == "reply"
    assert line.fake.texts(user) == ["もう一度"]
