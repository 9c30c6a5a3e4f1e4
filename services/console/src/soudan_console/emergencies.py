"""Emergencies (運営要領 第6): raised on a case, announced at once, contacts recorded, closed.

Raising one alerts every supervisor and admin on shift (signed in now) through the live
channel and e-mails ``EMERGENCY_RECIPIENTS``. The e-mail carries no message text and no LINE
user id: only the kind, the time, the counselor and a link to the console.

A student in danger who leaves (blocks the account while their case is urgent or has an
emergency open: triage marks the case's ``departure`` and publishes ``case.student_left``) is
announced the same way: live to the supervisors and admins signed in (:mod:`soudan_console.
live`), and by e-mail (:func:`mail_departures`, on the fact and on every tick, so a console
that was down sends it when it is back; the case's ``departure.mail`` makes it once). A mail
the server does not take is tried again later (:data:`DEPARTURE_MAIL_RETRIES`), and one left
``sending`` by a console that stopped mid-send is taken up again once its claim is old
(:data:`DEPARTURE_MAIL_LEASE`): an alarm sent twice is better than one never sent.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
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
#: After a departure mail the server did not take (itself after a few quick tries), the next
#: try waits so long; after the last, the mail is ``failed`` (about 48 minutes, 6 tries in all).
DEPARTURE_MAIL_RETRIES = tuple(timedelta(minutes=m) for m in (1, 2, 5, 10, 30))
#: A claim (``sending``) older than this is a console that stopped mid-send: taken up again.
DEPARTURE_MAIL_LEASE = timedelta(minutes=5)


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
    task = asyncio.create_task(_mail(console, emergency, staff), name=f"mail-{emergency.id}")
    return emergency, task


def _jst(at: datetime) -> str:
    return at.astimezone(TOKYO).strftime("%Y年%m月%d日 %H:%M")


async def _mail(console: Console, emergency: Emergency, staff: Staff) -> None:
    recipients = console.settings.emergency_recipient_list
    if emergency.email == "not_configured":
        return
    label = EMERGENCY_TYPES[emergency.type]
    base = console.settings.console_base_url.rstrip("/")
    link = f"{base}/emergencies/{emergency.id}" if base else f"/emergencies/{emergency.id}"
    body = (
        "LINE相談で緊急対応が始まりました。\n\n"
        f"種類: {label}\n"
        f"時刻: {_jst(emergency.raised_at)}\n"
        f"相談員: {staff.name}\n"
        f"緊急対応の番号: {emergency.id[:8]}\n\n"
        f"コンソールで内容を確認してください: {link}\n\n"
        "このメールには相談の内容は書いていません。\n"
    )
    try:
        await console.mailer.send(recipients, f"【LINE相談・緊急】{label}", body)
    except MailFailed as exc:
        await console.db[EMERGENCIES].update_one(
            {"_id": emergency.id}, {"$set": {"email": "failed", "email_detail": exc.reason}}
        )
        await console.emit(
            F.EMERGENCY_NOTIFICATION_FAILED,
            {
                "emergency_id": emergency.id,
                "channel": "email",
                "reason": exc.reason,
                "attempts": exc.attempts,
            },
        )
        return
    except Exception as exc:  # never let the background task die silently
        log.exception("emergency_mail_crashed")
        await console.db[EMERGENCIES].update_one(
            {"_id": emergency.id}, {"$set": {"email": "failed", "email_detail": repr(exc)[:200]}}
        )
        return
    await console.db[EMERGENCIES].update_one({"_id": emergency.id}, {"$set": {"email": "sent"}})
    await console.emit(
        F.EMERGENCY_NOTIFIED,
        {"emergency_id": emergency.id, "channel": "email", "recipients": len(recipients)},
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
    """E-mail ``EMERGENCY_RECIPIENTS`` for each departure due a mail; how many were mailed.

    Each is claimed first (``departure.mail`` pending → sending, the claim's time kept, the
    attempt counted), so several console replicas, or the fact and the tick together, send it
    once. A refused mail is ``pending`` again with the time of its next try, and a fact says so,
    until the tries are spent (``failed``)."""
    now = now or utcnow()
    mailed = 0
    recipients = console.settings.emergency_recipient_list
    configured = console.mailer.configured and bool(recipients)
    due = {
        "$or": [
            {
                "departure.mail": "pending",
                "$or": [
                    {"departure.mail_after": None},
                    {"departure.mail_after": {"$lte": now}},
                ],
            },
            {
                "departure.mail": "sending",
                "$or": [
                    {"departure.mail_claimed_at": None},  # claimed by a console before retries
                    {"departure.mail_claimed_at": {"$lt": now - DEPARTURE_MAIL_LEASE}},
                ],
            },
        ]
    }
    for _ in range(20):
        doc = await console.db[CASES].find_one_and_update(
            due,
            {
                "$set": {
                    "departure.mail": "sending" if configured else "not_configured",
                    "departure.mail_claimed_at": now,
                },
                "$inc": {"departure.mail_attempts": 1},
            },
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            break
        if not configured:
            continue
        case = Case.model_validate(doc)
        if await _mail_departure(console, case, recipients, now):
            mailed += 1
    return mailed


async def _mail_departure(
    console: Console, case: Case, recipients: list[str], now: datetime
) -> bool:
    departure = case.departure
    assert departure is not None  # the claim matched on it
    try:
        await console.mailer.send(
            recipients,
            "【LINE相談・緊急】相談者がブロックしました",
            _departure_body(console, case),
        )
    except Exception as exc:  # recorded on the case and tried again; the live alert went out
        reason = exc.reason if isinstance(exc, MailFailed) else type(exc).__name__
        tries = departure.mail_attempts
        retry_at = (
            now + DEPARTURE_MAIL_RETRIES[tries - 1]
            if tries <= len(DEPARTURE_MAIL_RETRIES)
            else None
        )
        log.warning(
            "departure_mail_failed",
            case_id=case.id,
            reason=reason,
            attempts=tries,
            retry_at=retry_at.isoformat() if retry_at else None,
        )
        await console.db[CASES].update_one(
            {"_id": case.id, "departure.mail": "sending"},
            {
                "$set": {
                    "departure.mail": "pending" if retry_at else "failed",
                    "departure.mail_after": retry_at,
                    "departure.mail_detail": reason[:200],
                }
            },
        )
        await console.emit(
            F.CASE_STUDENT_LEFT_NOTIFICATION_FAILED,
            {
                "case_id": case.id,
                "channel": "email",
                "reason": reason[:200],
                "attempts": tries,
                "retry_at": retry_at.isoformat() if retry_at else None,
            },
            cause=f"departure-mail:{case.id}:{departure.event_id}:{tries}",
        )
        return False
    await console.db[CASES].update_one(
        {"_id": case.id}, {"$set": {"departure.mail": "sent", "departure.mail_detail": ""}}
    )
    await console.emit(
        F.CASE_STUDENT_LEFT_NOTIFIED,
        {"case_id": case.id, "channel": "email", "recipients": len(recipients)},
        cause=f"departure-mail:{case.id}:{departure.event_id}",
    )
    return True


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
