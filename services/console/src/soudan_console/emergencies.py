"""Emergencies (運営要領 第6): raised on a case, announced at once, contacts recorded, closed.

Raising one alerts every supervisor and admin on shift (signed in now) through the live
channel and e-mails ``EMERGENCY_RECIPIENTS``. The e-mail carries no message text and no LINE
user id: only the kind, the time, the counselor and a link to the console.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from zoneinfo import ZoneInfo

import structlog
from pymongo import ReturnDocument
from soudan_shared import fact_types as F
from soudan_shared.contracts import utcnow
from soudan_shared.records import Case

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


class EmergencyError(Exception):
    """A refusal to show on the form (Japanese)."""


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
    await console.db[EMERGENCIES].update_one(
        {"_id": emergency.id}, {"$push": {"contacts": contact.model_dump()}}
    )
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
    if doc is None:
        return False
    await console.emit(
        F.EMERGENCY_CLOSED,
        {"emergency_id": emergency.id, "case_id": emergency.case_id, "staff_id": staff.id},
    )
    return True
