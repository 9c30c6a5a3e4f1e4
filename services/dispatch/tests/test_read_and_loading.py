"""Read marks (既読) and the loading animation ("入力中…") against the fake LINE platform, on the
real broker: marked once, dropped (never dead-lettered) when LINE keeps failing, a stale or
overtaken animation never shown, and neither counted against the month's messages."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import aio_pika
import pytest
from soudan_dispatch.chat import RecentSends, seconds_left
from soudan_fakeline import FakeLineServer, new_user_id
from soudan_shared.bus import Bus
from soudan_shared.contracts import MarkRead, SendText, StartLoading, mark_read_id, utcnow
from soudan_shared.fact_types import (
    LINE_API_ERROR,
    LINE_LOADING_STARTED,
    LINE_READ_MARK_DROPPED,
    LINE_READ_MARKED,
    REPLY_SENT,
)
from soudan_shared.records import MESSAGES, READ_TOKEN, incoming_message_id, newest_unread
from soudan_shared.testing.waiting import wait_until
from soudan_shared.topology import LOADING_QUEUE, MARK_READ_QUEUE, Topology

from .conftest import Dispatch, FactLog

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

CASE = "case-read"


async def _student_wrote(db: Any, line: FakeLineServer, user: str, *texts: str) -> list[str]:
    """The student's messages as triage keeps them (with their read tokens); their ids."""
    ids = []
    start = utcnow() - timedelta(minutes=5)
    for n, text in enumerate(texts):
        event = line.webhook.message_event(user, text)
        message_id = incoming_message_id(event["message"]["id"])
        await db[MESSAGES].insert_one(
            {
                "_id": message_id,
                "case_id": CASE,
                "user_id": user,
                "direction": "in",
                "kind": "text",
                "text": text,
                "at": start + timedelta(seconds=n),
                READ_TOKEN: event["message"]["markAsReadToken"],
            }
        )
        ids.append(message_id)
    return ids


async def _mark_newest(db: Any, user: str) -> MarkRead:
    newest = await newest_unread(db, CASE)
    assert newest is not None
    message_id, user_id, token = newest
    assert user_id == user
    return MarkRead(
        id=mark_read_id(message_id),
        user_id=user,
        message_id=message_id,
        token=token,
        case_id=CASE,
        staff_id="staff-1",
    )


async def _dead_letters(
    channel: aio_pika.abc.AbstractChannel, topology: Topology, name: str
) -> int:
    queue = await channel.get_queue(topology.dead_letter_queue(name), ensure=False)
    found = 0
    while await queue.get(fail=False, no_ack=True) is not None:
        found += 1
    return found


async def test_a_mark_read_shows_read_on_the_students_messages_and_is_recorded_once(
    dispatch: Dispatch, line: FakeLineServer, publisher: Bus, facts: FactLog, db: Any
) -> None:
    user = new_user_id()
    first, second = await _student_wrote(db, line, user, "きいて", "つらいです")
    command = await _mark_newest(db, user)
    assert command.message_id == second
    assert command.token not in repr(command)  # the token stays out of repr (and so of logs)

    await publisher.publish(command)
    fact = await wait_until(lambda: next(iter(facts.of(LINE_READ_MARKED)), None), timeout=15)

    assert [m.read_at is not None for m in line.fake.sent_by(user)] == [True, True]
    assert fact.data["message_id"] == second
    assert fact.data["staff_id"] == "staff-1"
    assert fact.data["marked"] == 2
    assert fact.data["request_id"] == line.fake.requests_to("mark_as_read")[0].request_id
    assert command.token not in str(fact.data)
    for message_id in (first, second):
        doc = await db[MESSAGES].find_one({"_id": message_id})
        assert doc["read_at"] is not None
        assert READ_TOKEN not in doc  # no token kept once it was used
    assert await newest_unread(db, CASE) is None

    await publisher.publish(command)  # the same mark again (a second look, a redelivery)
    await wait_until(lambda: len(facts.of(LINE_READ_MARKED)) == 2, timeout=15)
    assert len(line.fake.requests_to("mark_as_read")) == 1
    assert {f.id for f in facts.of(LINE_READ_MARKED)} == {fact.id}  # one fact for reporting


async def test_a_mark_read_line_keeps_failing_is_tried_a_few_times_then_dropped_with_a_fact(
    dispatch: Dispatch,
    line: FakeLineServer,
    publisher: Bus,
    facts: FactLog,
    db: Any,
    topology: Topology,
    raw_channel: aio_pika.abc.AbstractChannel,
) -> None:
    user = new_user_id()
    (only,) = await _student_wrote(db, line, user, "きいて")
    line.fake.inject("mark_as_read", status=503, times=50)
    command = await _mark_newest(db, user)
    await publisher.publish(command)

    fact = await wait_until(lambda: next(iter(facts.of(LINE_READ_MARK_DROPPED)), None), timeout=15)
    assert fact.data["status"] == 503
    assert fact.data["attempts"] == 3
    assert [r.status for r in line.fake.requests_to("mark_as_read")] == [503, 503, 503]
    assert line.fake.read(user) == []
    assert await _dead_letters(raw_channel, topology, MARK_READ_QUEUE) == 0
    doc = await db[MESSAGES].find_one({"_id": only})
    assert doc.get("read_at") is None
    assert doc[READ_TOKEN] == command.token  # the counselor's next look tries again

    line.fake.clear_faults()
    await publisher.publish(command)
    await wait_until(lambda: facts.of(LINE_READ_MARKED), timeout=15)
    assert line.fake.read(user) == [only.removeprefix("line:")]


async def test_a_read_token_line_refuses_is_dropped_at_once_and_not_tried_again(
    dispatch: Dispatch, line: FakeLineServer, publisher: Bus, facts: FactLog, db: Any
) -> None:
    user = new_user_id()
    (only,) = await _student_wrote(db, line, user, "きいて")
    await db[MESSAGES].update_one({"_id": only}, {"$set": {READ_TOKEN: "not-lines"}})
    await publisher.publish(await _mark_newest(db, user))

    fact = await wait_until(lambda: next(iter(facts.of(LINE_READ_MARK_DROPPED)), None), timeout=15)
    assert (fact.data["status"], fact.data["attempts"]) == (400, 1)
    assert "not-lines" not in str(fact.data)
    assert await newest_unread(db, CASE) is None


def _loading(user: str, *, seconds: int = 10, age: float = 0.0) -> StartLoading:
    return StartLoading(
        user_id=user,
        seconds=seconds,
        requested_at=utcnow() - timedelta(seconds=age),
        case_id=CASE,
        staff_id="staff-1",
    )


async def test_a_loading_start_shows_the_animation_for_what_is_left_of_its_seconds(
    dispatch: Dispatch, line: FakeLineServer, publisher: Bus, facts: FactLog
) -> None:
    fresh, older = new_user_id(), new_user_id()
    await publisher.publish(_loading(fresh, seconds=10))
    await publisher.publish(_loading(older, seconds=15, age=6))

    await wait_until(lambda: len(facts.of(LINE_LOADING_STARTED)) == 2, timeout=15)
    assert [x.seconds for x in line.fake.loadings_of(fresh)] == [10]
    assert [x.seconds for x in line.fake.loadings_of(older)] == [10]
    assert line.fake.loading_shown(fresh)
    by_user = {f.data["user_id"]: f.data for f in facts.of(LINE_LOADING_STARTED)}
    assert by_user[older]["seconds"] == 10
    assert by_user[fresh]["staff_id"] == "staff-1"


async def test_a_stale_loading_start_is_dropped_without_asking_line(
    dispatch: Dispatch, line: FakeLineServer, publisher: Bus, facts: FactLog
) -> None:
    stale, fresh = new_user_id(), new_user_id()
    await publisher.publish(_loading(stale, seconds=10, age=9))
    await publisher.publish(_loading(fresh, seconds=5))  # the same queue, after it
    await wait_until(lambda: facts.of(LINE_LOADING_STARTED), timeout=15)
    assert line.fake.loadings_of(stale) == []
    assert [f.data["user_id"] for f in facts.of(LINE_LOADING_STARTED)] == [fresh]


async def test_a_loading_start_asked_before_a_message_that_already_went_out_is_dropped(
    dispatch: Dispatch, line: FakeLineServer, publisher: Bus, facts: FactLog
) -> None:
    user, other = new_user_id(), new_user_id()
    asked = _loading(user, seconds=10, age=1)
    reply = SendText(to=user, texts=["おまたせしました"], purpose="counselor_reply", case_id=CASE)
    await publisher.publish(reply)
    await wait_until(lambda: facts.of(REPLY_SENT), timeout=15)
    await publisher.publish(asked)
    await publisher.publish(_loading(user, seconds=10))  # typing again after the reply: shown
    await publisher.publish(_loading(other, seconds=5))
    await wait_until(lambda: len(facts.of(LINE_LOADING_STARTED)) == 2, timeout=15)
    assert [x.seconds for x in line.fake.loadings_of(user)] == [10]
    assert line.fake.loadings_of(user)[0].at >= line.fake.received(user)[0].at
    assert {f.data["command_id"] for f in facts.of(LINE_LOADING_STARTED)} != {asked.id}


async def test_read_marks_and_the_animation_still_work_when_the_months_messages_are_spent(
    dispatch: Dispatch, line: FakeLineServer, publisher: Bus, facts: FactLog, db: Any
) -> None:
    user = new_user_id()
    await _student_wrote(db, line, user, "きいて")
    line.fake.quota_limit = 0  # a push now gets LINE's 429 "monthly limit"
    await publisher.publish(await _mark_newest(db, user))
    await publisher.publish(_loading(user))

    await wait_until(lambda: facts.of(LINE_READ_MARKED), timeout=15)
    await wait_until(lambda: facts.of(LINE_LOADING_STARTED), timeout=15)
    assert line.fake.read(user)
    assert line.fake.loading_shown(user)
    assert line.fake.consumption == 0
    assert not facts.of(REPLY_SENT)


async def test_a_loading_start_line_keeps_refusing_is_dropped_not_dead_lettered(
    dispatch: Dispatch,
    line: FakeLineServer,
    publisher: Bus,
    facts: FactLog,
    topology: Topology,
    raw_channel: aio_pika.abc.AbstractChannel,
) -> None:
    user, after = new_user_id(), new_user_id()
    line.fake.inject("loading", status=500, times=5)
    await publisher.publish(_loading(user))
    await wait_until(lambda: len(facts.of(LINE_API_ERROR)) == 2, timeout=15)
    line.fake.clear_faults()
    await publisher.publish(_loading(after))
    await wait_until(lambda: facts.of(LINE_LOADING_STARTED), timeout=15)
    assert [r.status for r in line.fake.requests_to("loading")] == [500, 500, 202]
    assert line.fake.loadings_of(user) == []
    assert [f.data["user_id"] for f in facts.of(LINE_LOADING_STARTED)] == [after]
    assert await _dead_letters(raw_channel, topology, LOADING_QUEUE) == 0


@pytest.mark.parametrize(
    ("seconds", "age", "shown"),
    [
        (10, 0, 10),
        (10, -30, 10),
        (10, 2.4, 10),
        (10, 2.6, 5),
        (10, 7.4, 5),
        (10, 7.6, 0),
        (60, 31, 30),
    ],
)
def test_a_loading_request_shows_what_is_left_of_its_seconds_in_lines_steps_of_5(
    seconds: int, age: float, shown: int
) -> None:
    now = utcnow()
    command = StartLoading(user_id="U1", seconds=seconds, requested_at=now - timedelta(seconds=age))
    assert seconds_left(command, now) == shown


def test_dispatch_remembers_recent_sends_within_a_bound() -> None:
    moments = iter(utcnow() + timedelta(seconds=n) for n in range(1000))
    recent = RecentSends(lambda: next(moments), keep_most=3)
    for user in ("U1", "U2", "U3", "U4"):
        recent.note(user)
    assert not recent.since("U1", utcnow() - timedelta(days=1))  # the oldest, forgotten
    assert recent.since("U4", utcnow())
    assert not recent.since("U4", utcnow() + timedelta(seconds=100))
