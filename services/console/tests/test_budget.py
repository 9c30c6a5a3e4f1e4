"""The month's LINE messages in the console: the admins' mail at the thresholds, the alert when
the month is spent, and what the case page says can still be done (issue 20)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from soudan_console import budget, cases
from soudan_console.testing import Browserless, RunningConsole, seed_case
from soudan_shared import fact_types as F
from soudan_shared.bus import Bus
from soudan_shared.contracts import Fact, SendText, new_id, utcnow
from soudan_shared.records import LINE_BUDGET, record_outgoing
from soudan_shared.testing.smtp import Inbox
from soudan_shared.testing.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
def console_overrides(smtp_server: tuple[Inbox, int]) -> dict[str, Any]:
    _, port = smtp_server
    return {"smtp_host": "127.0.0.1", "smtp_port": port, "smtp_starttls": False}


def _to(inbox: Inbox) -> list[tuple[str, set[str]]]:
    return [(str(m["Subject"]), set(str(m["To"]).split(", "))) for m in inbox.messages]


async def test_crossing_80_and_95_percent_mails_the_admins_once_for_each_threshold(
    running: RunningConsole, smtp_server: tuple[Inbox, int]
) -> None:
    inbox, _ = smtp_server
    admin = await running.add_staff("admin")
    await running.add_staff("counselor")
    reading = {"limit": 1000, "used": 790, "remaining": 210, "reserve": 100, "read_at": utcnow()}
    await running.store.db[LINE_BUDGET].insert_one({"_id": "current", **reading})
    assert await budget.check_thresholds(running.console) == []
    await running.store.db[LINE_BUDGET].update_one(
        {"_id": "current"}, {"$set": {"used": 810, "remaining": 190}}
    )
    await wait_until(lambda: len(inbox.messages) >= 1, message="the 80 % mail")
    assert _to(inbox) == [("【相談窓口】今月のLINEの通数を80%使いました", {admin.email})]
    assert "1000通のうち、810通" in inbox.messages[0].get_content()
    await running.store.db[LINE_BUDGET].update_one(
        {"_id": "current"}, {"$set": {"used": 960, "remaining": 40}}
    )
    await wait_until(lambda: len(inbox.messages) >= 2, message="the 95 % mail")
    assert _to(inbox)[1] == ("【相談窓口】今月のLINEの通数を95%使いました", {admin.email})
    # each threshold once this month, however often the console looks again
    assert await budget.check_thresholds(running.console) == []
    assert len(inbox.messages) == 2


async def _failed_for_the_month(running: RunningConsole, case_id: str, user_id: str) -> SendText:
    command = SendText(
        to=user_id,
        texts=["返事がおそくなってごめんね。"],
        purpose="counselor_reply",
        case_id=case_id,
        staff_id="staff-1",
    )
    now = utcnow()
    delivery = {
        "delivery": "failed",
        "delivery_at": now,
        "delivery_problem": "monthly_limit",
        "delivery_status": 429,
        "maybe_delivered": False,
    }
    await record_outgoing(running.store.db, command, at=now, delivery=delivery)
    return command


async def test_the_month_spent_alerts_supervisors_once_and_the_case_page_says_what_can_be_done(
    running: RunningConsole,
    smtp_server: tuple[Inbox, int],
    fact_bus: Bus,
    client: Callable[[], Browserless],
) -> None:
    inbox, _ = smtp_server
    supervisor = await running.add_staff("supervisor")
    admin = await running.add_staff("admin")
    counselor = await running.add_staff("counselor")
    case = await seed_case(running.store, state="active", claimed_by=counselor.id)
    c = client()
    await c.login(counselor.email)
    _, _, page = await c.get(f"/cases/{case.id}")
    assert "今月のLINEの通数がなくなりました" not in page

    for _ in range(3):  # three replies refused for the month's limit
        command = await _failed_for_the_month(running, case.id, case.user_id)
        data = {"case_id": case.id, "problem": "monthly_limit", "command_id": command.id}
        await fact_bus.publish(Fact(type=F.REPLY_FAILED, service="dispatch", data=data))
    await wait_until(lambda: len(inbox.messages) >= 1, message="the supervisors' mail")
    assert _to(inbox) == [
        ("【相談窓口】今月のLINEの通数がなくなりました", {supervisor.email, admin.email})
    ]
    # the other two refusals alert nobody again this month
    other = {"case_id": case.id, "problem": "monthly_limit", "command_id": new_id()}
    assert not await budget.on_reply_failed(running.console, other, utcnow())
    assert len(inbox.messages) == 1

    # nor does the alert for replies left undelivered: it is for the other refusals
    assert await cases.failed_replies(running.console, utcnow()) == []

    _, _, page = await c.get(f"/cases/{case.id}")
    assert "今月のLINEの通数がなくなりました" in page
    assert "1分以内の返信は、上限に数えられないので届きます" in page
    assert "0120-0-78310" in page  # 24時間子供SOSダイヤル, to give the student
    assert "今月にLINEで送れるメッセージの数が上限に達したため、送れませんでした。" in page
