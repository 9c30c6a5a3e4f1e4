"""Triage on the real broker, one LINE event kind at a time: store, commands, facts."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from soudan_shared import fact_types as F
from soudan_shared.bus import Bus
from soudan_shared.config import load_config
from soudan_shared.config_store import save_override
from soudan_shared.contracts import Fact, stable_id
from soudan_shared.http import READINESS, REGISTRY
from soudan_shared.records import (
    CASES,
    MESSAGES,
    REPLY_TOKENS,
    USERS,
    Case,
    StoredMessage,
    User,
    incoming_message_id,
    latest_reply_token,
)
from soudan_shared.runtime import BUS
from soudan_shared.testing.waiting import wait_until
from soudan_shared.topology import Topology
from soudan_triage.store import EVENTS as TRIAGE_EVENTS
from soudan_triage.testing import IN_HOURS, NIGHT, Downstream, Line, RunningTriage, StartTriage

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def _cases(running, user_id: str) -> list[Case]:  # type: ignore[no-untyped-def]
    docs = await running.store.db[CASES].find({"user_id": user_id}).sort("opened_at", 1).to_list()
    return [Case.model_validate(d) for d in docs]


async def _wait_commands(downstream: Downstream, user_id: str, n: int) -> None:
    await wait_until(
        lambda: len(downstream.commands_to(user_id)) >= n, message=f"{n} command(s) to the user"
    )


# -- follow / unfollow / school type ------------------------------------------------------------


async def test_a_follow_registers_the_user_and_greets_with_the_policy_and_the_school_question(
    start_triage: StartTriage, line: Line, downstream: Downstream
) -> None:
    running = await start_triage()
    user = line.user()
    follow = line.follow(user, IN_HOURS)

    await running.send(follow)

    stored = User.model_validate(await running.store.db[USERS].find_one({"_id": user}))
    assert stored.registered
    assert stored.followed_at == IN_HOURS
    assert stored.eligible is None
    await _wait_commands(downstream, user, 1)
    (greeting,) = downstream.commands_to(user)
    assert greeting.purpose == "greeting"
    assert greeting.id == stable_id(follow.webhook_event_id, "greeting")
    assert greeting.reply_token == follow.event["replyToken"]
    assert greeting.reply_token_received_at == follow.received_at
    assert len(greeting.texts) == 4
    assert "運用ポリシー" in greeting.texts[1]
    assert "https://" in greeting.texts[2]
    assert "学校" in greeting.texts[3]
    assert [q.data for q in greeting.quick_reply] == [
        "school_type=public_junior_high",
        "school_type=public_high",
        "school_type=private",
        "school_type=sapporo_city",
        "school_type=other",
    ]
    await wait_until(lambda: downstream.user_facts(F.AUTO_REPLY_DECIDED, user))
    (followed,) = downstream.user_facts(F.LINE_FOLLOWED, user)
    assert followed.data == {"user_id": user, "unblocked": False}


async def test_an_out_of_scope_school_is_answered_kindly_and_its_cases_marked_out_of_scope(
    start_triage: StartTriage, line: Line, downstream: Downstream
) -> None:
    running = await start_triage()
    user = line.user()
    await running.send(line.follow(user, IN_HOURS))
    await running.send(line.postback(user, "school_type=sapporo_city", IN_HOURS))
    await running.send(line.text(user, "はなしをきいてほしい", IN_HOURS + timedelta(minutes=1)))

    stored = User.model_validate(await running.store.db[USERS].find_one({"_id": user}))
    assert (stored.school_type, stored.eligible) == ("sapporo_city", False)
    (case,) = await _cases(running, user)
    assert case.out_of_scope
    assert case.school_type == "sapporo_city"
    assert case.state == "waiting"
    await _wait_commands(downstream, user, 2)
    answer = downstream.commands_to(user)[1]
    assert answer.purpose == "school_type_answer"
    assert "ひとりでかかえこまないで" in answer.texts[0]
    await wait_until(lambda: downstream.user_facts(F.SCHOOL_TYPE_SET, user))
    assert downstream.user_facts(F.SCHOOL_TYPE_SET, user)[0].data["eligible"] is False


async def test_answering_the_school_type_marks_the_open_case(
    start_triage: StartTriage, line: Line
) -> None:
    running = await start_triage()
    user = line.user()
    await running.send(line.text(user, "こんばんは", IN_HOURS))
    await running.send(line.postback(user, "school_type=other", IN_HOURS + timedelta(seconds=5)))

    (case,) = await _cases(running, user)
    assert case.out_of_scope
    assert case.school_type == "other"


async def test_an_unfollow_unregisters_and_an_older_follow_redelivered_later_changes_nothing(
    start_triage: StartTriage, line: Line, downstream: Downstream
) -> None:
    running = await start_triage()
    user = line.user()
    old_follow = line.follow(user, IN_HOURS)
    await running.send(line.follow(user, IN_HOURS - timedelta(days=1)))
    await running.send(line.unfollow(user, IN_HOURS + timedelta(minutes=5)))
    await running.send(old_follow)  # LINE redelivers a follow older than the unfollow

    stored = User.model_validate(await running.store.db[USERS].find_one({"_id": user}))
    assert not stored.registered
    assert stored.unfollowed_at == IN_HOURS + timedelta(minutes=5)
    await wait_until(lambda: downstream.facts_of(F.LINE_EVENT_IGNORED))
    (ignored,) = downstream.facts_of(F.LINE_EVENT_IGNORED)
    assert ignored.data["reason"] == "stale"
    assert ignored.data["webhook_event_id"] == old_follow.webhook_event_id
    assert len(downstream.user_facts(F.LINE_UNFOLLOWED, user)) == 1
    assert all(
        c.id != stable_id(old_follow.webhook_event_id, "greeting") for c in downstream.commands
    )


# -- text messages ------------------------------------------------------------------------------


async def test_a_text_in_hours_opens_a_waiting_case_and_stores_the_message_once(
    start_triage: StartTriage, line: Line, downstream: Downstream
) -> None:
    running = await start_triage()
    user = line.user()
    event = line.text(user, "学校に行きたくない", IN_HOURS)

    await running.send(event)
    await running.publisher.publish(event)  # the same webhook event again
    second = line.text(user, "どうしたらいいかな", IN_HOURS + timedelta(minutes=1))
    await running.send(second)

    (case,) = await _cases(running, user)
    assert case.state == "waiting"
    assert not case.urgent
    assert case.opened_in_hours
    assert case.waiting_since == IN_HOURS
    assert case.last_message_at == IN_HOURS + timedelta(minutes=1)
    messages = await running.store.db[MESSAGES].find({"user_id": user}).sort("at", 1).to_list()
    line_id = event.event["message"]["id"]
    assert [m["_id"] for m in messages] == [
        incoming_message_id(line_id),
        incoming_message_id(second.event["message"]["id"]),
    ]
    assert messages[0]["text"] == "学校に行きたくない"
    assert messages[0]["case_id"] == case.id
    await wait_until(lambda: len(downstream.user_facts(F.MESSAGE_RECEIVED, user)) == 2)
    (opened,) = downstream.user_facts(F.CASE_OPENED, user)
    assert opened.data == {
        "case_id": case.id,
        "user_id": user,
        "in_hours": True,
        "out_of_scope": False,
        "school_type": None,
        "urgent": False,
    }
    assert downstream.commands_to(user) == []  # a counselor answers, not an auto-reply
    assert await running.store.db[USERS].find_one({"_id": user, "registered": True})


async def test_a_message_after_the_case_was_closed_opens_a_new_case(
    start_triage: StartTriage, line: Line
) -> None:
    running = await start_triage()
    user = line.user()
    await running.send(line.text(user, "ありがとう", IN_HOURS))
    (first,) = await _cases(running, user)
    await running.store.db[CASES].update_one(
        {"_id": first.id}, {"$set": {"state": "closed", "closed_at": IN_HOURS}}
    )
    await running.send(line.text(user, "またきいてほしい", IN_HOURS + timedelta(minutes=30)))

    first, second = await _cases(running, user)
    assert first.state == "closed"
    assert second.state == "waiting"
    assert second.id != first.id


async def test_an_older_message_redelivered_late_still_goes_to_the_students_case(
    start_triage: StartTriage, line: Line
) -> None:
    running = await start_triage()
    user = line.user()
    older = line.text(user, "さっきの続き", IN_HOURS)
    await running.send(line.text(user, "いまの", IN_HOURS + timedelta(minutes=2)))
    await running.send(older)

    (case,) = await _cases(running, user)
    messages = await running.store.db[MESSAGES].find({"case_id": case.id}).sort("at", 1).to_list()
    assert [m["text"] for m in messages] == ["さっきの続き", "いまの"]
    assert case.last_message_at == IN_HOURS + timedelta(minutes=2)


async def test_out_of_hours_a_text_gets_one_reply_naming_the_next_opening(
    start_triage: StartTriage, line: Line, downstream: Downstream
) -> None:
    running = await start_triage()
    user = line.user()
    await running.send(
        line.text(user, "ねむれない", NIGHT),
        line.text(user, "だれかいる？", NIGHT + timedelta(minutes=3)),
    )

    (case,) = await _cases(running, user)
    assert case.state == "waiting"
    assert not case.opened_in_hours
    await _wait_commands(downstream, user, 1)
    await wait_until(lambda: len(downstream.user_facts(F.MESSAGE_RECEIVED, user)) == 2)
    (reply,) = downstream.commands_to(user)
    assert reply.purpose == "out_of_hours"
    assert reply.case_id == case.id
    assert "12月25日（金）17:00" in reply.texts[0]
    (decided,) = downstream.user_facts(F.AUTO_REPLY_DECIDED, user)
    assert decided.data["purpose"] == "out_of_hours"


async def test_an_urgent_text_out_of_hours_gets_the_help_lines_and_stays_urgent_for_opening(
    start_triage: StartTriage, line: Line, downstream: Downstream
) -> None:
    running = await start_triage()
    user = line.user()
    await running.send(line.text(user, "もうむり", NIGHT))
    await running.send(line.text(user, "し　に　た　い", NIGHT + timedelta(minutes=1)))

    (case,) = await _cases(running, user)
    assert case.urgent
    assert case.keywords == ["死に"]
    assert case.state == "waiting"
    assert case.flagged_urgent_at == NIGHT + timedelta(minutes=1)
    await _wait_commands(downstream, user, 2)
    plain, urgent = downstream.commands_to(user)
    assert plain.purpose == "out_of_hours"
    assert urgent.purpose == "urgent_out_of_hours"
    assert "0120-0-78310" in urgent.texts[0]
    assert "110" in urgent.texts[0]
    await wait_until(lambda: downstream.user_facts(F.CASE_FLAGGED_URGENT, user))
    (flagged,) = downstream.user_facts(F.CASE_FLAGGED_URGENT, user)
    assert flagged.data == {
        "case_id": case.id,
        "user_id": user,
        "keywords": ["死に"],
        "risks": [],
        "in_hours": False,
    }


async def test_a_risk_phrase_out_of_hours_is_urgent_like_a_keyword_and_gets_the_help_lines(
    start_triage: StartTriage, line: Line, downstream: Downstream
) -> None:
    running = await start_triage()
    user = line.user()
    await running.send(line.text(user, "頭痛薬ぜんぶ飲んだ", NIGHT))

    (case,) = await _cases(running, user)
    assert case.urgent
    assert case.keywords == []
    await _wait_commands(downstream, user, 1)
    (reply,) = downstream.commands_to(user)
    assert reply.purpose == "urgent_out_of_hours"
    assert "0120-0-78310" in reply.texts[0]
    await wait_until(lambda: downstream.user_facts(F.CASE_FLAGGED_URGENT, user))
    (flagged,) = downstream.user_facts(F.CASE_FLAGGED_URGENT, user)
    assert flagged.data["keywords"] == []
    assert flagged.data["risks"] == ["方法・手段"]


async def test_the_case_keeps_the_risk_phrases_that_flagged_it_with_their_category(
    start_triage: StartTriage, line: Line, downstream: Downstream
) -> None:
    running = await start_triage()
    opened_urgent, flagged_later = line.user(), line.user()
    await running.send(line.text(opened_urgent, "腕切っちゃった", IN_HOURS))
    await running.send(line.text(flagged_later, "聞いてほしいことがある", IN_HOURS))
    await running.send(line.text(flagged_later, "父に殴られた", IN_HOURS + timedelta(minutes=1)))

    (first,) = await _cases(running, opened_urgent)
    assert [(r.category, r.match) for r in first.risks] == [("自傷", "腕切っちゃった")]
    assert first.risk_categories == ["自傷"]
    (later,) = await _cases(running, flagged_later)
    assert later.urgent
    assert [(r.category, r.match) for r in later.risks] == [("暴力・虐待", "殴られた")]


async def test_a_keyword_split_over_short_messages_flags_the_case(
    start_triage: StartTriage, line: Line, downstream: Downstream
) -> None:
    running = await start_triage()
    user = line.user()
    parts = ["じ", "さ", "つ"]
    for n, part in enumerate(parts):
        await running.send(line.text(user, part, IN_HOURS + timedelta(seconds=20 * n)))

    (case,) = await _cases(running, user)
    assert case.urgent
    assert case.keywords == ["自殺"]
    await wait_until(lambda: downstream.user_facts(F.CASE_FLAGGED_URGENT, user))


async def test_letters_further_apart_than_the_window_are_not_joined(
    start_triage: StartTriage, line: Line
) -> None:
    running = await start_triage()
    user = line.user()
    await running.send(line.text(user, "じ", IN_HOURS))
    await running.send(line.text(user, "さつ", IN_HOURS + timedelta(minutes=3)))

    (case,) = await _cases(running, user)
    assert not case.urgent


async def test_an_urgent_case_is_served_before_older_normal_cases(
    start_triage: StartTriage, line: Line
) -> None:
    running = await start_triage()
    calm, older_calm, urgent = line.user(), line.user(), line.user()
    await running.send(line.text(older_calm, "相談です", IN_HOURS))
    await running.send(line.text(calm, "聞いてください", IN_HOURS + timedelta(minutes=1)))
    await running.send(line.text(urgent, "いじめられてる", IN_HOURS + timedelta(minutes=2)))

    queue = (
        await running.store.db[CASES]
        .find({"state": "waiting"})
        .sort([("urgent", -1), ("waiting_since", 1)])
        .to_list()
    )
    assert [c["user_id"] for c in queue] == [urgent, older_calm, calm]


@pytest.mark.timeout(200)  # a real (Python) engine handles a few events a second: a cap
async def test_an_urgent_text_behind_a_backlog_is_handled_ahead_of_it(
    start_triage: StartTriage, line: Line, make_bus: Callable[..., Bus]
) -> None:
    """600 other students' texts wait in the queues when triage starts (after an outage); the
    urgent one, sent last, is handled among the first, not after the 600."""
    ingress = make_bus("ingress")
    ingress.start()
    await ingress.wait_started(10)
    calm = [line.text(line.user(), "相談があります", IN_HOURS) for _ in range(600)]
    urgent = line.text(line.user(), "もう死にたい", IN_HOURS + timedelta(seconds=1))
    await asyncio.gather(*(ingress.publish(event) for event in calm))
    await ingress.publish(urgent)

    running = await start_triage()
    events = running.store.db[TRIAGE_EVENTS]

    async def urgent_done() -> dict[str, Any] | None:
        return await events.find_one({"_id": urgent.webhook_event_id, "state": "done"})

    # Waiting for the urgent one only (not for the 600): on a slow engine the backlog takes
    # minutes, and what the student would notice is how many went before them.
    handled = await wait_until(urgent_done, timeout=180, message="the urgent text handled")
    rank = await events.count_documents({"state": "done", "done_at": {"$lt": handled["done_at"]}})
    assert rank < 200, f"the urgent text was handled after {rank} others"
    (case,) = await _cases(running, urgent.user_id or "")
    assert case.urgent


async def test_a_new_case_during_congestion_gets_the_congestion_reply_once(
    start_triage: StartTriage, line: Line, downstream: Downstream, config_dir: Path
) -> None:
    path = config_dir / "congestion.yaml"
    path.write_text(
        path.read_text(encoding="utf-8").replace("max_waiting_cases: 20", "max_waiting_cases: 1"),
        encoding="utf-8",
    )
    running = await start_triage()
    waiting = [line.user(), line.user()]
    for n, user in enumerate(waiting):
        await running.send(line.text(user, "相談です", IN_HOURS + timedelta(minutes=n)))
    late = line.user()
    await running.send(
        line.text(late, "きいて", IN_HOURS + timedelta(minutes=5)),
        line.text(late, "まだかな", IN_HOURS + timedelta(minutes=6)),
    )

    (case,) = await _cases(running, late)
    assert case.congestion_replied
    await _wait_commands(downstream, late, 1)
    await wait_until(lambda: len(downstream.user_facts(F.MESSAGE_RECEIVED, late)) == 2)
    (reply,) = downstream.commands_to(late)
    assert reply.purpose == "congestion"
    assert "混み合って" in reply.texts[0]
    measured = [f for f in downstream.facts_of(F.CONGESTION_MEASURED) if f.data["congested"]]
    assert measured[-1].data["waiting"] == 2
    assert all(downstream.commands_to(u) == [] for u in waiting)


# -- media, unsend, other events ----------------------------------------------------------------


async def test_media_is_refused_with_one_reply_per_ten_minutes_and_nothing_of_it_is_kept(
    start_triage: StartTriage, line: Line, downstream: Downstream
) -> None:
    running = await start_triage()
    user = line.user()
    await running.send(line.text(user, "これみて", IN_HOURS))
    sticker = line.media(user, "sticker", IN_HOURS + timedelta(minutes=1))
    await running.send(
        line.media(user, "image", IN_HOURS + timedelta(seconds=30)),
        sticker,
        line.media(user, "location", IN_HOURS + timedelta(minutes=11)),
    )

    await _wait_commands(downstream, user, 2)
    await wait_until(lambda: len(downstream.user_facts(F.MEDIA_REFUSED, user)) == 3)
    assert [c.purpose for c in downstream.commands_to(user)] == ["media_refused"] * 2
    assert [f.data["replied"] for f in downstream.user_facts(F.MEDIA_REFUSED, user)] == [
        True,
        False,
        True,
    ]
    (case,) = await _cases(running, user)
    recorded = await running.store.db[MESSAGES].find_one(
        {"_id": incoming_message_id(sticker.event["message"]["id"])}
    )
    assert recorded is not None
    assert (recorded["kind"], recorded["text"], recorded["case_id"]) == ("sticker", None, case.id)
    # the record that a sticker came, and nothing of it
    assert set(recorded) == {*(f.alias or name for name, f in StoredMessage.model_fields.items())}


async def test_media_alone_opens_no_case(
    start_triage: StartTriage, line: Line, downstream: Downstream
) -> None:
    running = await start_triage()
    user = line.user()
    await running.send(line.media(user, "video", IN_HOURS))

    assert await _cases(running, user) == []
    await _wait_commands(downstream, user, 1)


async def test_an_unsent_message_loses_its_text_but_the_record_stays(
    start_triage: StartTriage, line: Line, downstream: Downstream
) -> None:
    running = await start_triage()
    user = line.user()
    message = line.text(user, "やっぱりなし", IN_HOURS)
    await running.send(message)
    line_id = message.event["message"]["id"]
    await running.send(line.unsend(user, line_id, IN_HOURS + timedelta(seconds=10)))

    stored = await running.store.db[MESSAGES].find_one({"_id": incoming_message_id(line_id)})
    assert stored is not None
    assert stored["text"] is None
    assert stored["unsent_at"] == IN_HOURS + timedelta(seconds=10)
    await wait_until(lambda: downstream.user_facts(F.MESSAGE_UNSENT, user))
    (fact,) = downstream.user_facts(F.MESSAGE_UNSENT, user)
    assert fact.data["case_id"] == stored["case_id"]


async def test_an_unsend_that_overtakes_its_message_still_erases_it(
    start_triage: StartTriage, line: Line
) -> None:
    running = await start_triage()
    user = line.user()
    message = line.text(user, "まちがえた", IN_HOURS)
    line_id = message.event["message"]["id"]
    await running.send(line.unsend(user, line_id, IN_HOURS + timedelta(seconds=10)))
    await running.send(message)

    stored = await running.store.db[MESSAGES].find_one({"_id": incoming_message_id(line_id)})
    assert stored is not None
    assert stored["text"] is None
    assert stored["unsent_at"] is not None


async def test_other_events_are_recorded_as_ignored_and_acknowledged(
    start_triage: StartTriage, line: Line, downstream: Downstream
) -> None:
    running = await start_triage()
    beacon = line.event(
        "beacon", line.user(), IN_HOURS, beacon={"hwid": "d41d8cd98f", "type": "enter"}
    )
    group = line.event("join", None, IN_HOURS)
    await running.send(beacon, group)

    await wait_until(lambda: len(downstream.facts_of(F.LINE_EVENT_IGNORED)) == 2)
    reasons = {
        f.data["webhook_event_id"]: f.data["reason"]
        for f in downstream.facts_of(F.LINE_EVENT_IGNORED)
    }
    assert reasons == {
        beacon.webhook_event_id: "unhandled_type",
        group.webhook_event_id: "not_one_to_one",
    }


# -- the rich menu ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "purpose", "expected"),
    [
        ("menu=hours", "menu_hours", "毎日 17:00〜21:00"),
        ("menu=policy", "policy", "運用ポリシー"),
        ("menu=inquiry", "menu_inquiry", "https://"),
    ],
)
async def test_the_rich_menu_entries_are_answered(
    start_triage: StartTriage,
    line: Line,
    downstream: Downstream,
    data: str,
    purpose: str,
    expected: str,
) -> None:
    running = await start_triage()
    user = line.user()
    await running.send(line.postback(user, data, NIGHT))

    await _wait_commands(downstream, user, 1)
    (reply,) = downstream.commands_to(user)
    assert reply.purpose == purpose
    assert expected in reply.texts[0]
    if data == "menu=hours":
        assert "次に相談できるのは 12月25日（金）17:00 からです。" in reply.texts[0]
        assert "12月29日〜2027年1月3日 お休み" in reply.texts[0]


async def test_facts_of_an_event_carry_its_time(
    start_triage: StartTriage, line: Line, downstream: Downstream
) -> None:
    running = await start_triage()
    user = line.user()
    at = datetime(2026, 12, 24, 9, 30, 15, 123000, tzinfo=UTC)
    await running.send(line.text(user, "こんばんは", at))

    await wait_until(lambda: downstream.user_facts(F.MESSAGE_RECEIVED, user))
    assert downstream.user_facts(F.MESSAGE_RECEIVED, user)[0].at == at


async def test_an_event_that_cannot_be_decided_is_dead_lettered_and_the_rest_flow(
    start_triage: StartTriage, line: Line, downstream: Downstream
) -> None:
    running = await start_triage()
    user = line.user()
    broken = line.text(user, "こんばんは", IN_HOURS)
    broken = broken.model_copy(update={"timestamp_ms": 10**20})  # no such time
    after = line.text(user, "きこえる？", IN_HOURS + timedelta(minutes=1))
    await running.publisher.publish(broken)
    await running.send(after)

    await wait_until(lambda: downstream.facts_of(F.BUS_DEAD_LETTERED))
    (dead,) = downstream.facts_of(F.BUS_DEAD_LETTERED)
    assert "cannot decide message event" in dead.data["reason"]
    (case,) = await _cases(running, user)
    assert case.last_message_at == IN_HOURS + timedelta(minutes=1)


async def test_a_console_edit_applies_as_soon_as_settings_changed_goes_by(
    start_triage: StartTriage, line: Line, downstream: Downstream
) -> None:
    running = await start_triage()
    user = line.user()
    await running.send(line.postback(user, "menu=policy", IN_HOURS))
    await _wait_commands(downstream, user, 1)
    messages = load_config(Path(os.environ["SOUDAN_CONFIG_DIR"])).messages
    edited = messages.model_copy(
        update={"follow": messages.follow.model_copy(update={"policy": "新しい運用ポリシー"})}
    )
    await save_override(running.store.db, "messages", edited, staff_id="admin")
    await running.publisher.publish(
        Fact(type=F.SETTINGS_CHANGED, service="console", data={"what": "messages"})
    )

    async def answered_with_the_new_policy() -> bool:
        event = line.postback(user, "menu=policy", IN_HOURS)
        await running.send(event)
        command_id = stable_id(event.webhook_event_id, "policy")
        (reply,) = await wait_until(
            lambda: [c for c in downstream.commands_to(user) if c.id == command_id]
        )
        return reply.texts == ["新しい運用ポリシー"]

    # well within the 10 s the configuration is otherwise cached
    await wait_until(answered_with_the_new_policy, timeout=5, interval=0.2)


# -- shards and instances -----------------------------------------------------------------------


def _events_handled(running: RunningTriage) -> float:
    """What this instance's /metrics says it handled (soudan_triage_events_total, all labels)."""
    return sum(
        sample.value
        for metric in running.app[REGISTRY].collect()
        if metric.name == "soudan_triage_events"
        for sample in metric.samples
        if sample.name == "soudan_triage_events_total"
    )


def _one_user_per_shard(line: Line, topology: Topology) -> list[str]:
    users: dict[int, str] = {}
    while len(users) < topology.line_event_shards:
        user = line.user()
        users.setdefault(topology.shard(user), user)
    return [users[shard] for shard in sorted(users)]


async def test_triage_set_to_six_shards_handles_the_users_of_every_one_of_the_six_queues(
    start_triage: StartTriage, line: Line, downstream: Downstream
) -> None:
    running = await start_triage(shards=6)
    topology = running.app[BUS].topology
    users = _one_user_per_shard(line, topology)
    assert len(users) == 6

    await running.send(*(line.follow(user, IN_HOURS) for user in users))

    for user in users:
        stored = await running.store.db[USERS].find_one({"_id": user})
        assert stored is not None, f"the user of shard {topology.shard(user)} was not handled"
    assert _events_handled(running) == 6


async def test_a_second_triage_is_a_hot_standby_that_takes_every_shard_over_when_the_first_stops(
    start_triage: StartTriage, line: Line, downstream: Downstream
) -> None:
    first = await start_triage()
    second = await start_triage()
    users = _one_user_per_shard(line, first.app[BUS].topology)

    await first.send(*(line.follow(user, IN_HOURS) for user in users))
    # One active consumer per shard queue: the instance that came first has them all. (An event
    # is counted just after it is marked done, which is what send() waits for.)
    await wait_until(lambda: _events_handled(first) == len(users), message="first counted all")
    assert _events_handled(second) == 0

    await first.app[BUS].close()
    later = [line.text(user, "まだいますか", IN_HOURS + timedelta(minutes=1)) for user in users]
    await second.send(*later)

    await wait_until(lambda: _events_handled(second) == len(users), message="second counted all")
    assert _events_handled(first) == len(users)


async def test_two_triage_instances_given_two_shards_each_share_the_students_between_them(
    start_triage: StartTriage, line: Line, downstream: Downstream
) -> None:
    first = await start_triage(triage_shards="0-1", triage_preferred_shards="0,1")
    second = await start_triage(triage_shards="2,3")
    topology = first.app[BUS].topology
    users = _one_user_per_shard(line, topology)

    await first.send(*(line.follow(user, IN_HOURS) for user in users))

    await wait_until(
        lambda: _events_handled(first) + _events_handled(second) == len(users),
        message="every shard's student handled",
    )
    assert (_events_handled(first), _events_handled(second)) == (2, 2)
    for user in users:
        assert await first.store.db[USERS].find_one({"_id": user}) is not None


async def test_triage_stops_when_the_broker_has_shard_queues_beyond_its_own_count(
    start_triage: StartTriage, downstream: Downstream
) -> None:
    """The test topology (four shards, as the other services here are set) is declared; a
    triage set to two would leave shards 2 and 3 unconsumed."""
    reasons: list[str] = []
    running = await start_triage(shards=2, stop=reasons.append)
    await wait_until(lambda: reasons, message="triage refused the shard count")
    (reason,) = reasons
    queue = running.app[BUS].topology.queue("triage.line-events.2")
    assert reason.startswith(f"LINE_EVENT_SHARDS=2, but the broker has the shard queue {queue}")
    assert "Set the same LINE_EVENT_SHARDS in every service" in reason
    assert running.app[READINESS]["line_event_shards"]() is False  # /readyz names it meanwhile


async def test_a_students_message_keeps_its_reply_token_for_a_counselors_answer_once(
    start_triage: StartTriage, line: Line
) -> None:
    running = await start_triage()
    user = line.user()
    first = line.text(user, "きいてほしいことがあります", IN_HOURS)
    later = line.text(user, "いまいいですか", IN_HOURS + timedelta(seconds=30))
    await running.send(first)
    await running.send(later)
    await running.send(later)  # LINE delivers it again: still one token kept for it

    tokens = await running.store.db[REPLY_TOKENS].find({"user_id": user}).to_list()
    assert len(tokens) == 2
    assert await latest_reply_token(running.store.db, user) == (
        later.event["replyToken"],
        later.received_at,
    )
