"""The mail about a student in danger who left is never dropped: a mail the server refuses is
tried again later, and one a console stopped sending mid-way is taken up again."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from soudan_console import emergencies
from soudan_console.testing import Browserless, RunningConsole, seed_case
from soudan_shared import fact_types as F
from soudan_shared.contracts import utcnow
from soudan_shared.records import CASES, Case

pytestmark = pytest.mark.integration


class FlakyMailer:
    """An SMTP server that refuses the first ``refusals`` mails."""

    configured = True

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.sent: list[tuple[list[str], str]] = []
        self.bodies: list[str] = []

    async def send(self, recipients: list[str], subject: str, body: str) -> None:
        if self.refusals:
            self.refusals -= 1
            raise emergencies.MailFailed("SMTPRecipientsRefused", 3)
        self.sent.append((recipients, subject))
        self.bodies.append(body)


@pytest.fixture
def console_overrides() -> dict[str, Any]:
    return {"emergency_recipients": "section@example.jp"}


async def _departed(running: RunningConsole, **mail: Any) -> Case:
    departure = {"at": utcnow(), "event_id": "ev-1", "urgent": True, "mail": "pending", **mail}
    # mail_departures runs on the tick too: the mailer is swapped in before the case exists
    return await seed_case(running.store, urgent=True, state="closed", departure=departure)


async def _departure(running: RunningConsole, case: Case) -> dict[str, Any]:
    doc = await running.store.db[CASES].find_one({"_id": case.id})
    assert doc is not None
    departure: dict[str, Any] = doc["departure"]
    return departure


async def test_a_refused_departure_mail_is_tried_again_later_until_it_goes_out(
    running: RunningConsole,
) -> None:
    mailer = FlakyMailer(refusals=2)
    running.console.mailer = mailer
    case = await _departed(running)
    start = utcnow()

    failed = await running.wait_fact(F.CASE_STUDENT_LEFT_NOTIFICATION_FAILED, case_id=case.id)
    assert failed.data["attempts"] == 1
    assert failed.data["reason"] == "SMTPRecipientsRefused"
    departure = await _departure(running, case)
    assert departure["mail"] == "pending"
    retry_at = datetime.fromisoformat(failed.data["retry_at"])
    assert start + timedelta(seconds=55) < retry_at < utcnow() + timedelta(seconds=65)
    # not before its time, whoever looks
    assert await emergencies.mail_departures(running.console) == 0
    assert mailer.sent == []

    assert await emergencies.mail_departures(running.console, now=retry_at) == 0  # refused again
    departure = await _departure(running, case)
    assert (departure["mail"], departure["mail_attempts"]) == ("pending", 2)
    later = departure["mail_after"]
    assert later.replace(tzinfo=retry_at.tzinfo) == retry_at + timedelta(minutes=2)

    assert (
        await emergencies.mail_departures(running.console, now=retry_at + timedelta(minutes=2)) == 1
    )
    assert mailer.sent == [(["section@example.jp"], "【LINE相談・緊急】相談者がブロックしました")]
    assert mailer.bodies[0].startswith(emergencies.LATE_MAIL)
    assert (await _departure(running, case))["mail"] == "sent"
    await running.wait_fact(F.CASE_STUDENT_LEFT_NOTIFIED, case_id=case.id, channel="email")
    # sent once: nothing more to do, however late
    assert await emergencies.mail_departures(running.console, now=utcnow() + timedelta(days=1)) == 0
    assert len(mailer.sent) == 1


async def test_after_the_last_refusal_the_departure_mail_is_failed_and_the_case_says_so(
    running: RunningConsole,
) -> None:
    mailer = FlakyMailer(refusals=100)
    running.console.mailer = mailer
    case = await _departed(running)
    await running.wait_fact(F.CASE_STUDENT_LEFT_NOTIFICATION_FAILED, case_id=case.id)
    at = utcnow()
    for _ in emergencies.MAIL_RETRIES:
        at += timedelta(hours=1)
        await emergencies.mail_departures(running.console, now=at)
    departure = await _departure(running, case)
    assert (departure["mail"], departure["mail_attempts"]) == ("failed", 6)
    await running.wait_fact(
        F.CASE_STUDENT_LEFT_NOTIFICATION_FAILED, case_id=case.id, attempts=6, retry_at=None
    )
    assert await emergencies.mail_departures(running.console, now=at + timedelta(days=1)) == 0
    assert mailer.sent == []
    supervisor = Browserless(running.url)
    try:
        await supervisor.login((await running.add_staff("supervisor")).email)
        status, _, page = await supervisor.get(f"/cases/{case.id}")
    finally:
        await supervisor.close()
    assert status == 200
    assert "メールは送れませんでした" in page


async def test_a_departure_mail_left_sending_by_a_console_that_stopped_is_sent_later(
    running: RunningConsole,
) -> None:
    mailer = FlakyMailer(refusals=0)
    running.console.mailer = mailer
    claimed = utcnow() - timedelta(minutes=1)
    case = await _departed(running, mail="sending", mail_claimed_at=claimed, mail_attempts=1)
    # another console may still be sending it: left alone for a while
    assert await emergencies.mail_departures(running.console) == 0
    stale = claimed + emergencies.MAIL_LEASE + timedelta(seconds=1)
    assert await emergencies.mail_departures(running.console, now=stale) == 1
    assert mailer.bodies[0].startswith(emergencies.LATE_MAIL)  # it may have gone out already
    assert (await _departure(running, case))["mail"] == "sent"
    assert len(mailer.sent) == 1


async def test_a_refused_emergency_mail_is_tried_again_and_its_page_says_so_meanwhile(
    running: RunningConsole,
) -> None:
    mailer = FlakyMailer(refusals=1)
    running.console.mailer = mailer
    counselor = await running.add_staff("counselor", name="山田")
    case = await seed_case(running.store, urgent=True, state="active", claimed_by=counselor.id)
    emergency, task = await emergencies.raise_emergency(
        running.console, case, counselor, "suicide_notice"
    )
    await task
    failed = await running.wait_fact(F.EMERGENCY_NOTIFICATION_FAILED, emergency_id=emergency.id)
    assert (failed.data["attempts"], failed.data["channel"]) == (1, "email")
    shown = await emergencies.get(running.console, emergency.id)
    assert shown is not None
    assert (shown.email, shown.email_attempts) == ("pending", 1)
    retry_at = datetime.fromisoformat(failed.data["retry_at"])
    supervisor = Browserless(running.url)
    try:
        await supervisor.login((await running.add_staff("supervisor")).email)
        status, _, page = await supervisor.get(f"/emergencies/{emergency.id}")
    finally:
        await supervisor.close()
    assert status == 200
    assert "まだ送れていません" in page
    assert "電話でも課に知らせてください" in page

    assert await emergencies.mail_emergencies(running.console, now=retry_at) == 1
    [(recipients, subject)] = mailer.sent
    assert recipients == ["section@example.jp"]
    assert "自殺予告" in subject
    assert mailer.bodies[0].startswith(emergencies.LATE_MAIL)
    assert "緊急対応が始まりました" in mailer.bodies[0]
    shown = await emergencies.get(running.console, emergency.id)
    assert shown is not None
    assert shown.email == "sent"
    await running.wait_fact(F.EMERGENCY_NOTIFIED, emergency_id=emergency.id, channel="email")
