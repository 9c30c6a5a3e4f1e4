"""Emergencies (運営要領 第6): raised on a case, announced at once, contacts recorded, closed.

Raising one alerts every supervisor and admin on shift (signed in now) through the live
channel and e-mails ``EMERGENCY_RECIPIENTS``. The e-mail carries no message text and no LINE
user id: only the kind, the time, the counselor and a link to the console.

A student in danger who leaves (blocks the account while their case is urgent or has an
emergency open: triage marks the case's ``departure`` and publishes ``case.student_left``) is
announced the same way: live to the supervisors and admins signed in (:mod:`soudan_console.
live`), and by e-mail (:func:`mail_departures`, on the fact and on every tick, so a console
that was down sends it when it is back; the case's ``departure.mail`` makes it once).

Both mails (:class:`AlarmMail`) are sent by whichever console claims them, at once and on every
tick: a mail the server does not take is tried again later (:data:`MAIL_RETRIES`), and one left
``sending`` by a console that stopped mid-send is taken up again once its claim is old
(:data:`MAIL_LEASE`): an alarm sent twice is better than one never sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from pymongo import ReturnDocument
from soudan_shared import fact_types as F
from soudan_shared.contracts import utcnow
from soudan_shared.records import CASES, Case

from soudan_console.core import Console
from soudan_console.domain import (
    CONTACT_RESULTS,
    EMERGENCIES,
    EMERGENCY_TYPES,
    STAFF,
    SUPERVISING_ROLES,
    Contact,
    Emergency,
    Staff,
)
from soudan_console.mail import MailFailed

log = structlog.get_logger(__name__)
TOKYO = ZoneInfo("Asia/Tokyo")
MAX_SUMMARY = 4000
MAX_MEMO = 1000
#: After an alarm mail (an emergency's, a departure's) the server did not take, itself after a
#: few quick tries, the next try waits so long; after the last, the mail is ``failed`` (about
#: 48 minutes, 6 tries in all).
MAIL_RETRIES = tuple(timedelta(minutes=m) for m in (1, 2, 5, 10, 30))
#: A claim (``sending``) older than this is a console that stopped mid-send: taken up again.
MAIL_LEASE = timedelta(minutes=5)
#: The first line of a mail sent after a refused try, or after a console stopped sending it.
LATE_MAIL = "※ はじめのメールが届かなかったおそれがあるので、あとから送っています。\n\n"


class EmergencyError(Exception):
    """A refusal to show on the form (Japanese)."""

    status = 400


class EmergencyClosed(EmergencyError):
    """The emergency is over: nothing more is recorded on it."""

    status = 409


ALREADY_CLOSED = (
    "この緊急対応はもう終わっています。記録を足したり、まとめを書き直したりはできません。"
    "まだ続けることがあるときは、相談の画面から緊急対応をもう一度始めてください。"
)


def may_see(staff: Staff, emergency: Emergency, case: Case) -> bool:
    """The emergency's page: supervisors and admins, who raised it, who has its case now."""
    return (
        staff.role in SUPERVISING_ROLES
        or emergency.raised_by == staff.id
        or case.claimed_by == staff.id
    )


def may_record(staff: Staff, emergency: Emergency, case: Case) -> bool:
    """Record a contact, close it: whoever sees it, while it is open. The page offers both
    forms exactly when this holds, and the handlers check it."""
    return emergency.state == "open" and may_see(staff, emergency, case)


async def get(console: Console, emergency_id: str) -> Emergency | None:
    doc = await console.db[EMERGENCIES].find_one({"_id": emergency_id})
    return Emergency.model_validate(doc) if doc else None


async def open_emergencies(console: Console) -> list[Emergency]:
    docs = await console.db[EMERGENCIES].find({"state": "open"}).sort("raised_at", -1).to_list()
    return [Emergency.model_validate(d) for d in docs]


async def recent(console: Console, limit: int = 50) -> list[Emergency]:
    docs = await console.db[EMERGENCIES].find({}).sort("raised_at", -1).limit(limit).to_list()
    return [Emergency.model_validate(d) for d in docs]


async def raise_emergency(
    console: Console, case: Case, staff: Staff, kind: str
) -> tuple[Emergency, asyncio.Task[None]]:
    """Record the emergency and announce it; the e-mail goes out in the background (returned
    task), so the counselor is not kept waiting on a slow mail server."""
    if kind not in EMERGENCY_TYPES:
        raise EmergencyError("緊急の種類を選んでください。")
    emergency = Emergency(case_id=case.id, user_id=case.user_id, type=kind, raised_by=staff.id)
    if not console.mailer.configured or not console.settings.emergency_recipient_list:
        emergency.email = "not_configured"
    await console.db[EMERGENCIES].insert_one(emergency.to_document())
    # on the case too, where triage looks when the student blocks the account (a departure)
    await console.db[CASES].update_one(
        {"_id": case.id}, {"$addToSet": {"open_emergencies": emergency.id}}
    )
    await console.emit(
        F.EMERGENCY_RAISED,
        {"emergency_id": emergency.id, "case_id": case.id, "type": kind, "staff_id": staff.id},
    )
    online = await console.sessions.online_staff()
    on_shift = await console.db[STAFF].count_documents(
        {"_id": {"$in": list(online)}, "role": {"$in": sorted(SUPERVISING_ROLES)}}
    )
    await console.emit(
        F.EMERGENCY_NOTIFIED,
        {"emergency_id": emergency.id, "channel": "live", "recipients": on_shift},
    )
    task = asyncio.create_task(_mail_emergencies(console), name=f"mail-{emergency.id}")
    return emergency, task


def _jst(at: datetime) -> str:
    return at.astimezone(TOKYO).strftime("%Y年%m月%d日 %H:%M")


async def _mail_emergencies(console: Console) -> None:
    try:
        await mail_emergencies(console)
    except Exception:  # never let the background task die silently; the tick tries again
        log.exception("emergency_mail_crashed")


async def mail_emergencies(console: Console, *, now: datetime | None = None) -> int:
    """E-mail ``EMERGENCY_RECIPIENTS`` for each emergency due its mail (at its start, and again
    after a refusal, on every tick); how many were mailed."""

    async def mail(doc: dict[str, Any]) -> tuple[str, str]:
        emergency = Emergency.model_validate(doc)
        staff = await console.db[STAFF].find_one({"_id": emergency.raised_by}, {"name": 1})
        label = EMERGENCY_TYPES[emergency.type]
        base = console.settings.console_base_url.rstrip("/")
        link = f"{base}/emergencies/{emergency.id}" if base else f"/emergencies/{emergency.id}"
        body = (
            "LINE相談で緊急対応が始まりました。\n\n"
            f"種類: {label}\n"
            f"時刻: {_jst(emergency.raised_at)}\n"
            f"相談員: {staff['name'] if staff else '（不明）'}\n"
            f"緊急対応の番号: {emergency.id[:8]}\n\n"
            f"コンソールで内容を確認してください: {link}\n\n"
            "このメールには相談の内容は書いていません。\n"
        )
        return f"【LINE相談・緊急】{label}", body

    return await _mail_due(
        console,
        EMERGENCY_MAIL,
        mail,
        now or utcnow(),
    )


async def record_contact(
    console: Console,
    emergency: Emergency,
    staff: Staff,
    *,
    agency: str,
    result: str,
    memo: str,
    contacted_at: datetime | None,
) -> Contact:
    agency = agency.strip()
    if not agency or len(agency) > 100:
        raise EmergencyError("連絡した先を選ぶか、入れてください。")
    if result not in CONTACT_RESULTS:
        raise EmergencyError("結果を選んでください。")
    if len(memo) > MAX_MEMO:
        raise EmergencyError(f"メモは{MAX_MEMO}文字までです。")
    now = utcnow()
    when = contacted_at or now
    if when > now:
        raise EmergencyError("連絡した時刻が、いまより後になっています。")
    contact = Contact(
        agency=agency, result=result, memo=memo.strip(), staff_id=staff.id, contacted_at=when
    )
    recorded = await console.db[EMERGENCIES].update_one(
        {"_id": emergency.id, "state": "open"}, {"$push": {"contacts": contact.model_dump()}}
    )
    if recorded.matched_count == 0:  # closed meanwhile
        raise EmergencyClosed(ALREADY_CLOSED)
    await console.emit(
        F.EMERGENCY_CONTACT,
        {
            "emergency_id": emergency.id,
            "case_id": emergency.case_id,
            "agency": agency,
            "result": result,
            "staff_id": staff.id,
            "contacted_at": when.isoformat(),
        },
        cause=contact.id,
    )
    return contact


async def close_emergency(
    console: Console, emergency: Emergency, staff: Staff, summary: str
) -> bool:
    summary = summary.strip()
    if not summary:
        raise EmergencyError("どう対応したかのまとめを書いてください。")
    if len(summary) > MAX_SUMMARY:
        raise EmergencyError(f"まとめは{MAX_SUMMARY}文字までです。")
    doc = await console.db[EMERGENCIES].find_one_and_update(
        {"_id": emergency.id, "state": "open"},
        {
            "$set": {
                "state": "closed",
                "summary": summary,
                "closed_by": staff.id,
                "closed_at": utcnow(),
            }
        },
        return_document=ReturnDocument.AFTER,
    )
    if doc is None:  # closed already (by someone else meanwhile)
        raise EmergencyClosed(ALREADY_CLOSED)
    await console.db[CASES].update_one(
        {"_id": emergency.case_id}, {"$pull": {"open_emergencies": emergency.id}}
    )
    await console.emit(
        F.EMERGENCY_CLOSED,
        {"emergency_id": emergency.id, "case_id": emergency.case_id, "staff_id": staff.id},
    )
    return True


async def mail_departures(console: Console, *, now: datetime | None = None) -> int:
    """E-mail ``EMERGENCY_RECIPIENTS`` for each departure due its mail; how many were mailed."""

    async def mail(doc: dict[str, Any]) -> tuple[str, str]:
        case = Case.model_validate(doc)
        return "【LINE相談・緊急】相談者がブロックしました", _departure_body(console, case)

    return await _mail_due(
        console,
        DEPARTURE_MAIL,
        mail,
        now or utcnow(),
    )


@dataclass(frozen=True)
class AlarmMail:
    """Where an alarm mail's state lives: ``state`` (a field path) is ``pending`` until a console
    sends it (and again after a refused try, until ``<state>_after``), ``sending`` while one
    has it (since ``<state>_claimed_at``), then ``sent``, or ``failed`` once every try was
    refused (the last reason in ``<state>_detail``); ``<state>_attempts`` counts the tries.
    Its facts say ``<subject>_id`` (the document's id), ``channel`` and more."""

    collection: str
    state: str
    subject: str
    sent_fact: str
    failed_fact: str

    def field(self, name: str) -> str:
        return f"{self.state}_{name}"


async def _mail_due(
    console: Console,
    alarm: AlarmMail,
    compose: Callable[[dict[str, Any]], Awaitable[tuple[str, str]]],
    now: datetime,
) -> int:
    """Send each mail ``alarm`` has due; how many went out.

    Each is claimed first (pending → sending, the claim's time kept, the try counted), so
    several console replicas, or the fact and the tick together, send it once. A claim older
    than :data:`MAIL_LEASE` is a console that stopped mid-send: taken up again (sent
    twice at worst, never not at all). A refusal makes it ``pending`` again with the time of its
    next try (:data:`MAIL_RETRIES`), and a fact says so."""
    recipients = console.settings.emergency_recipient_list
    configured = console.mailer.configured and bool(recipients)
    state, after, claimed = alarm.state, alarm.field("after"), alarm.field("claimed_at")
    due = {
        "$or": [
            {state: "pending", "$or": [{after: None}, {after: {"$lte": now}}]},
            # (None: claimed by a console from before the claims carried their time)
            {state: "sending", "$or": [{claimed: None}, {claimed: {"$lt": now - MAIL_LEASE}}]},
        ]
    }
    mailed = 0
    for _ in range(20):
        doc = await console.db[alarm.collection].find_one_and_update(
            due,
            {
                "$set": {state: "sending" if configured else "not_configured", claimed: now},
                "$inc": {alarm.field("attempts"): 1},
            },
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            break
        if not configured:
            continue
        ids = {f"{alarm.subject}_id": doc["_id"], "channel": "email"}
        tries = int(_at_path(doc, alarm.field("attempts")))  # counted by the claim
        cause = f"{alarm.collection}-mail:{doc['_id']}"
        try:
            subject, body = await compose(doc)
            if tries > 1:  # what it says happened a while ago
                body = LATE_MAIL + body
            await console.mailer.send(recipients, subject, body)
        except Exception as exc:  # recorded and tried again; the live alert went out regardless
            reason = (exc.reason if isinstance(exc, MailFailed) else type(exc).__name__)[:200]
            retry_at = now + MAIL_RETRIES[tries - 1] if tries <= len(MAIL_RETRIES) else None
            log.warning(
                "alarm_mail_failed",
                collection=alarm.collection,
                id=doc["_id"],
                reason=reason,
                attempts=tries,
                retry_at=retry_at.isoformat() if retry_at else None,
            )
            await console.db[alarm.collection].update_one(
                {"_id": doc["_id"], state: "sending"},
                {
                    "$set": {
                        state: "pending" if retry_at else "failed",
                        after: retry_at,
                        alarm.field("detail"): reason,
                    }
                },
            )
            await console.emit(
                alarm.failed_fact,
                {
                    **ids,
                    "reason": reason,
                    "attempts": tries,
                    "retry_at": retry_at.isoformat() if retry_at else None,
                },
                cause=f"{cause}:{tries}",
            )
            continue
        await console.db[alarm.collection].update_one(
            {"_id": doc["_id"]}, {"$set": {state: "sent", alarm.field("detail"): ""}}
        )
        await console.emit(alarm.sent_fact, {**ids, "recipients": len(recipients)}, cause=cause)
        mailed += 1
    return mailed


EMERGENCY_MAIL = AlarmMail(
    EMERGENCIES, "email", "emergency", F.EMERGENCY_NOTIFIED, F.EMERGENCY_NOTIFICATION_FAILED
)
DEPARTURE_MAIL = AlarmMail(
    CASES,
    "departure.mail",
    "case",
    F.CASE_STUDENT_LEFT_NOTIFIED,
    F.CASE_STUDENT_LEFT_NOTIFICATION_FAILED,
)


def _at_path(doc: dict[str, Any], path: str) -> Any:
    value: Any = doc
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _departure_body(console: Console, case: Case) -> str:
    departure = case.departure
    base = console.settings.console_base_url.rstrip("/")
    link = f"{base}/cases/{case.id}" if base else f"/cases/{case.id}"
    why = []
    if departure and departure.urgent:
        why.append("緊急の相談")
    if departure and departure.emergency_ids:
        why.append(f"緊急対応が {len(departure.emergency_ids)}件 対応中")
    return (
        "LINE相談で、危険がありそうな相談者がLINEをブロック（友だち解除）しました。\n"
        "このあと、相談員の返信は相談者に届きません。\n\n"
        f"相談の番号: {case.id[:8]}\n"
        f"ブロックした時刻: {_jst(departure.at) if departure else ''}\n"
        f"相談のようす: {'・'.join(why) or '緊急'}\n\n"
        f"コンソールで相談を確認してください: {link}\n\n"
        "このメールには相談の内容は書いていません。\n"
    )
