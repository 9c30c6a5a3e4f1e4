"""Honest waits: the congestion reply and the wait notice say how many wait and about how long;
an urgent student is never told to wait. And the check-in's answer, kept with its case."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from soudan_shared import fact_types as F
from soudan_shared.records import CASES, Case
from soudan_shared.testing.waiting import wait_until
from soudan_triage.app import TIMERS
from soudan_triage.congestion import wait_phrase
from soudan_triage.decide import checkin_postback
from soudan_triage.testing import IN_HOURS, Downstream, Line, StartTriage

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture(autouse=True)
def sweeps_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The background sweep runs once at start, then not again within a test."""
    monkeypatch.setenv("TRIAGE_TIMERS_INTERVAL", "3600")


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _congested_at_two(config_dir: Path) -> None:
    path = config_dir / "congestion.yaml"
    path.write_text(
        path.read_text(encoding="utf-8").replace("max_waiting_cases: 20", "max_waiting_cases: 1"),
        encoding="utf-8",
    )


async def _case(running, user_id: str) -> Case:  # type: ignore[no-untyped-def]
    doc = await running.store.db[CASES].find_one({"user_id": user_id})
    assert doc is not None
    return Case.model_validate(doc)


def test_the_estimated_wait_is_rounded_up_never_down() -> None:
    assert wait_phrase(1) == "5分ほど"
    assert wait_phrase(20 * 60) == "20分ほど"
    assert wait_phrase(20 * 60 + 1) == "25分ほど"
    assert wait_phrase(41 * 60) == "50分ほど"
    assert wait_phrase(60 * 60) == "1時間ほど"
    assert wait_phrase(61 * 60) == "1時間30分ほど"
    assert wait_phrase(200 * 60) == "3時間以上"


async def test_the_congestion_reply_says_how_many_wait_before_and_about_how_long(
    start_triage: StartTriage, line: Line, downstream: Downstream, config_dir: Path
) -> None:
    _congested_at_two(config_dir)
    running = await start_triage()
    for n in range(2):
        await running.send(line.text(line.user(), "相談です", IN_HOURS + timedelta(minutes=n)))
    late = line.user()
    await running.send(line.text(late, "きいてほしい", IN_HOURS + timedelta(minutes=5)))

    await wait_until(lambda: downstream.commands_to(late), message="the congestion reply")
    (reply,) = downstream.commands_to(late)
    assert reply.purpose == "congestion"
    # 2 waiting × 40 minutes a case (shipped estimate) ÷ 4 counselors = 20 minutes
    assert "あなたの前に2人が待っています" in reply.texts[0]
    assert "20分ほどかかるかもしれません" in reply.texts[0]


async def test_an_urgent_student_is_never_told_to_wait_even_when_it_is_congested(
    start_triage: StartTriage, line: Line, downstream: Downstream, config_dir: Path
) -> None:
    _congested_at_two(config_dir)
    running = await start_triage()
    for n in range(2):
        await running.send(line.text(line.user(), "相談です", IN_HOURS + timedelta(minutes=n)))
    urgent = line.user()
    await running.send(line.text(urgent, "もう死にたい", IN_HOURS + timedelta(minutes=5)))

    await wait_until(
        lambda: downstream.user_facts(F.CASE_FLAGGED_URGENT, urgent), message="flagged urgent"
    )
    await wait_until(lambda: downstream.facts_of(F.CONGESTION_MEASURED)[2:], message="measured")
    assert downstream.facts_of(F.CONGESTION_MEASURED)[-1].data["congested"]
    case = await _case(running, urgent)
    assert case.urgent
    assert not case.congestion_replied
    await running.app[TIMERS].run_once()
    assert downstream.commands_to(urgent) == []


async def test_a_case_nobody_takes_in_time_gets_one_wait_notice_with_its_place_in_line(
    start_triage: StartTriage, line: Line, downstream: Downstream
) -> None:
    clock = Clock(IN_HOURS)
    running = await start_triage(clock=clock)
    timers = running.app[TIMERS]
    first, second, third, urgent, taken = (line.user() for _ in range(5))
    for n, user in enumerate((first, second, third, taken)):
        await running.send(line.text(user, "相談です", IN_HOURS + timedelta(minutes=n)))
    await running.send(line.text(urgent, "たすけて", IN_HOURS + timedelta(minutes=4)))
    await running.store.db[CASES].update_one(
        {"user_id": taken}, {"$set": {"state": "active", "claimed_by": "s1"}}
    )

    clock.now = IN_HOURS + timedelta(minutes=9)  # not ten minutes yet for anyone
    assert await timers.run_once() == []
    clock.now = IN_HOURS + timedelta(minutes=16)
    assert await timers.run_once() == ["wait_notice"] * 3
    assert await timers.run_once() == []  # once per case

    await wait_until(lambda: downstream.commands_to(third), message="the third's notice")
    (to_first,) = downstream.commands_to(first)
    (to_second,) = downstream.commands_to(second)
    (to_third,) = downstream.commands_to(third)
    assert {c.purpose for c in (to_first, to_second, to_third)} == {"wait_notice"}
    # the urgent case goes first; each case ahead takes 40 minutes (the shipped estimate) for
    # the one counselor seen holding a case: 40, 80 and 120 minutes, rounded up
    assert "あなたの前に1人" in to_first.texts[0]
    assert "40分ほど" in to_first.texts[0]
    assert "あなたの前に2人" in to_second.texts[0]
    assert "1時間30分ほど" in to_second.texts[0]
    assert "あなたの前に3人" in to_third.texts[0]
    assert "2時間ほど" in to_third.texts[0]
    assert downstream.commands_to(urgent) == []
    assert downstream.commands_to(taken) == []
    assert (await _case(running, first)).wait_notice_at == IN_HOURS + timedelta(minutes=16)


async def test_a_checkin_answer_is_kept_with_the_case_it_was_asked_about_once(
    start_triage: StartTriage, line: Line, downstream: Downstream
) -> None:
    clock = Clock(IN_HOURS)
    running = await start_triage(clock=clock)
    user = line.user()
    await running.send(line.text(user, "相談です", IN_HOURS))
    asked = await _case(running, user)
    await running.store.db[CASES].update_one(
        {"_id": asked.id},
        {"$set": {"state": "closed", "closed_at": IN_HOURS, "checkin": {"state": "pending"}}},
    )
    assert await running.app[TIMERS].run_once() == ["checkin"]
    await wait_until(lambda: downstream.commands_to(user), message="the check-in")
    (question,) = downstream.commands_to(user)
    assert question.purpose == "checkin"
    assert [o.label for o in question.quick_reply] == ["話してよかった", "ふつう", "よくなかった"]
    assert question.quick_reply[0].data == checkin_postback(asked.id, "good")

    later = IN_HOURS + timedelta(minutes=20)
    await running.send(line.text(user, "また相談したい", later))  # a new case opens
    await running.send(
        line.postback(user, checkin_postback(asked.id, "good"), later + timedelta(minutes=1)),
        line.postback(user, checkin_postback(asked.id, "bad"), later + timedelta(minutes=2)),
        line.postback(user, f"checkin={asked.id}&answer=../../x", later + timedelta(minutes=3)),
    )

    answered = Case.model_validate(await running.store.db[CASES].find_one({"_id": asked.id}))
    assert answered.checkin is not None
    assert (answered.checkin.answer, answered.checkin.answer_label) == ("good", "話してよかった")
    newer = await running.store.db[CASES].find_one({"user_id": user, "_id": {"$ne": asked.id}})
    assert newer is not None
    assert newer.get("checkin") is None
    await wait_until(lambda: downstream.user_facts(F.CHECKIN_ANSWERED, user), message="answer")
    await wait_until(
        lambda: len(downstream.facts_of(F.LINE_EVENT_IGNORED)) >= 2, message="the other taps"
    )
    assert [f.data["choice"] for f in downstream.user_facts(F.CHECKIN_ANSWERED, user)] == ["good"]
    reasons = sorted(f.data["reason"] for f in downstream.facts_of(F.LINE_EVENT_IGNORED))
    assert reasons == ["checkin_already_answered", "malformed_checkin"]
    thanks = [c for c in downstream.commands_to(user) if c.purpose == "checkin_thanks"]
    assert len(thanks) == 1
