"""What triage sends when time passes, not when an event comes: the wait notice and the check-in.

Both are decided from the store with the stack's clock and the one calendar
(:mod:`soudan_shared.hours`), every ``TRIAGE_TIMERS_INTERVAL`` seconds, by one replica at a
time (the lease ``triage:timers``). Each send is a ``SendText`` whose id is derived from the
case, published *before* the case records it: a sweep cut short sends the same command again,
and dispatch sends a command id once.

**Wait notice** (``messages.yaml`` → ``auto_reply.wait_notice``). A case opened in hours, not
urgent, that nobody has taken ``wait_notice_after_minutes`` after it opened (and less than
:data:`NOTICE_HORIZON` ago), gets one kind
message saying how many wait before the student and about how long (the congestion estimate for
that place in the queue, rounded up: :func:`soudan_triage.congestion.wait_phrase`), while the
service is still open. Never to an urgent case (it goes first; its student is never told to
wait), nor to a case that got the congestion reply (it carried the same estimate already), nor
twice (``Case.wait_notice_at``), nor to a student who blocked the account.

**Check-in** (``messages.yaml`` → ``checkin``). The console marks a closed case's check-in
``pending`` (or ``skipped``: emergency, 対象外). It is sent with the choices as quick replies
(postback ``checkin=<case id>&answer=<key>``) as soon as the sweep sees it outside the quiet
hours. A case closed in the quiet hours waits until they end; it is then skipped if the student
wrote again meanwhile (a newer case of theirs opened: the check-in would answer the wrong
conversation) or blocked the account. So: at most once per case, never in the quiet hours,
never to a student who blocked the account.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, time, timedelta
from typing import Any

import structlog
from soudan_shared import fact_types as F
from soudan_shared.config import HoursConfig, QuietHours, SoudanConfig
from soudan_shared.config_store import ConfigSource
from soudan_shared.contracts import QuickReplyOption, SendText, stable_id
from soudan_shared.facts import Facts, Publisher
from soudan_shared.records import CASES, USERS, acquire_lease, release_lease

from soudan_triage import congestion
from soudan_triage.decide import checkin_postback
from soudan_triage.hours import Hours

log = structlog.get_logger(__name__)

LEASE = "triage:timers"
LEASE_TTL = timedelta(minutes=2)
BATCH = 100
NOTICE_HORIZON = timedelta(hours=6)


def in_quiet_hours(local: time, quiet: QuietHours) -> bool:
    """Whether the local time of day ``local`` is in the quiet hours."""
    if quiet.start == quiet.end:
        return False
    if quiet.start < quiet.end:
        return quiet.start <= local < quiet.end
    return local >= quiet.start or local < quiet.end


class Timers:
    def __init__(
        self,
        db: Any,
        config: ConfigSource,
        facts: Facts,
        publisher: Publisher,
        *,
        hours: Callable[[HoursConfig], Hours],
        clock: Callable[[], datetime],
        holder: str,
    ) -> None:
        self.db = db
        self.config = config
        self.facts = facts
        self.publisher = publisher
        self.hours = hours
        self.clock = clock
        self.holder = holder

    async def run_forever(self, interval: float, ready: Callable[[], bool]) -> None:
        """Sweep every ``interval`` seconds, for ever (cancel the task to stop)."""
        while True:
            if ready():
                try:
                    await self.run_once()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the next sweep tries again
                    log.warning("timers_failed", error=repr(exc)[:300])
            await asyncio.sleep(interval)

    async def run_once(self) -> list[str] | None:
        """One sweep; the purposes of the commands it published (for tests and logs), or None
        when another sweep holds the lease."""
        if not await acquire_lease(self.db, LEASE, self.holder, LEASE_TTL):
            return None
        try:
            config = await self.config.get()
            now = self.clock()
            return [*await self._wait_notices(config, now), *await self._checkins(config, now)]
        finally:
            await release_lease(self.db, LEASE, self.holder)

    # -- the wait notice -------------------------------------------------------------------

    async def _wait_notices(self, config: SoudanConfig, now: datetime) -> list[str]:
        replies = config.messages.auto_reply
        if replies.wait_notice_after_minutes is None:
            return []
        if not self.hours(config.hours).status(now).open:
            return []  # closed meanwhile: nobody is about to answer
        cases = self.db[CASES]
        due = (
            await cases.find(
                {
                    "state": "waiting",
                    "urgent": {"$ne": True},
                    "opened_in_hours": True,
                    "congestion_replied": {"$ne": True},
                    "wait_notice_at": None,
                    "first_reply_at": None,
                    "opened_at": {
                        "$lte": now - timedelta(minutes=replies.wait_notice_after_minutes),
                        # not to cases left waiting from long ago (e.g. before an upgrade)
                        "$gte": now - NOTICE_HORIZON,
                    },
                }
            )
            .sort("opened_at", 1)
            .limit(BATCH)
            .to_list()
        )
        if not due:
            return []
        pace = await congestion.measure(self.db, config.congestion, now)
        sent = []
        for case in due:
            if await self._blocked(case["user_id"]):
                await self._mark_wait_notice(case["_id"], now)
                continue
            ahead = await congestion.ahead_of(self.db, case)
            seconds = pace.wait_for(ahead)
            if ahead:
                text = congestion.wait_text(replies.wait_notice, ahead=ahead, seconds=seconds)
            else:
                text = replies.wait_notice_first
            command = SendText(
                id=stable_id("wait_notice", case["_id"]),
                to=case["user_id"],
                texts=[text],
                purpose="wait_notice",
                case_id=case["_id"],
            )
            await self.publisher.publish(command)
            await self.facts.publish(
                F.AUTO_REPLY_DECIDED,
                {
                    "user_id": case["user_id"],
                    "case_id": case["_id"],
                    "purpose": "wait_notice",
                    "command_id": command.id,
                    "ahead": ahead,
                    "estimated_wait_seconds": seconds if ahead else 0,
                },
                cause=command.id,
                at=now,
            )
            await self._mark_wait_notice(case["_id"], now)
            sent.append("wait_notice")
        return sent

    async def _mark_wait_notice(self, case_id: str, now: datetime) -> None:
        await self.db[CASES].update_one(
            {"_id": case_id, "wait_notice_at": None}, {"$set": {"wait_notice_at": now}}
        )

    # -- the check-in ------------------------------------------------------------------------

    async def _checkins(self, config: SoudanConfig, now: datetime) -> list[str]:
        checkin = config.messages.checkin
        pending = (
            await self.db[CASES]
            .find({"state": "closed", "checkin.state": "pending"})
            .sort("closed_at", 1)
            .limit(BATCH)
            .to_list()
        )
        if not pending:
            return []
        local = now.astimezone(self.hours(config.hours).tz).time()
        quiet = in_quiet_hours(local, checkin.quiet_hours)
        sent = []
        for case in pending:
            case_id, user_id = case["_id"], case["user_id"]
            if await self._blocked(user_id):
                await self._skip(case, "blocked", now)
            elif await self._wrote_again(case):
                await self._skip(case, "wrote_again", now)
            elif not checkin.enabled:
                await self._skip(case, "disabled", now)
            elif not quiet:
                command = SendText(
                    id=stable_id("checkin", case_id),
                    to=user_id,
                    texts=[checkin.question],
                    purpose="checkin",
                    case_id=case_id,
                    quick_reply=[
                        QuickReplyOption(
                            label=choice.label,
                            data=checkin_postback(case_id, choice.key),
                            display_text=choice.label,
                        )
                        for choice in checkin.choices
                    ],
                )
                await self.publisher.publish(command)
                await self.facts.publish(
                    F.CHECKIN_SENT,
                    {"case_id": case_id, "user_id": user_id, "command_id": command.id},
                    cause=command.id,
                    at=now,
                )
                await self.db[CASES].update_one(
                    {"_id": case_id, "checkin.state": "pending"},
                    {"$set": {"checkin.state": "sent", "checkin.sent_at": now}},
                )
                sent.append("checkin")
        return sent

    async def _skip(self, case: dict[str, Any], reason: str, now: datetime) -> None:
        changed = await self.db[CASES].update_one(
            {"_id": case["_id"], "checkin.state": "pending"},
            {"$set": {"checkin.state": "skipped", "checkin.skipped": reason}},
        )
        if changed.modified_count:
            await self.facts.publish(
                F.CHECKIN_SKIPPED,
                {"case_id": case["_id"], "user_id": case["user_id"], "reason": reason},
                cause=f"checkin:{case['_id']}",
                at=now,
            )

    async def _blocked(self, user_id: str) -> bool:
        user = await self.db[USERS].find_one({"_id": user_id}, {"registered": 1})
        return user is not None and user.get("registered") is False

    async def _wrote_again(self, case: dict[str, Any]) -> bool:
        """A newer case of the same student: every message after a close opens one."""
        newer = await self.db[CASES].find_one(
            {
                "user_id": case["user_id"],
                "_id": {"$ne": case["_id"]},
                "opened_at": {"$gt": case["opened_at"]},
            },
            {"_id": 1},
        )
        return newer is not None
