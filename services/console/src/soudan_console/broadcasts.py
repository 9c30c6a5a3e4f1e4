"""Broadcasts of the section's fixed announcements (運営要領 第5(3)): compose, count, schedule.

Only the templates of ``messages.yaml`` (in force, with the console's edits) can be sent. A
broadcast due now or later is stored as ``scheduled``; a periodic task turns each due one into a
``StartBroadcast`` for dispatch, taking it with a conditional update so that one console replica
sends it, once. Progress comes back as dispatch's ``broadcast.*`` facts.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import structlog
from soudan_shared import fact_types as F
from soudan_shared.bus import PublishFailed
from soudan_shared.contracts import StartBroadcast, utcnow
from soudan_shared.records import USERS

from soudan_console.core import Console
from soudan_console.domain import BROADCASTS, Broadcast, Staff

log = structlog.get_logger(__name__)

TEMPLATES = {"period_notice": "相談期間・相談時間のお知らせ", "open_now": "相談開始のお知らせ"}
AUDIENCES = {
    "registered": "友だち登録しているすべての人",
    "target_group": "対象の学校の生徒だけ（対象外の人には送らない）",
}


class BroadcastError(Exception):
    """A refusal to show on the form (Japanese)."""


def audience_query(audience: str) -> dict[str, Any]:
    query: dict[str, Any] = {"registered": True}
    if audience == "target_group":
        query["eligible"] = {"$ne": False}
    return query


async def count_audience(console: Console, audience: str) -> int:
    return int(await console.db[USERS].count_documents(audience_query(audience)))


async def compose(console: Console, template: str, period: str) -> str:
    texts = (await console.config.get()).messages.broadcast
    if template == "period_notice":
        if not period.strip():
            raise BroadcastError("お知らせする期間と時間を入れてください。")
        return texts.period_notice.replace("{period}", period.strip())
    if template == "open_now":
        return texts.open_now
    raise BroadcastError("お知らせの種類を選んでください。")


async def request(
    console: Console,
    staff: Staff,
    *,
    template: str,
    period: str,
    audience: str,
    due_at: datetime | None,
) -> Broadcast:
    if audience not in AUDIENCES:
        raise BroadcastError("送る相手を選んでください。")
    text = await compose(console, template, period)
    if len(text) > 5000:
        raise BroadcastError("お知らせが5000文字をこえています。")
    now = utcnow()
    if due_at is not None and due_at < now:
        raise BroadcastError("予約の日時が過ぎています。")
    broadcast = Broadcast(
        template=template,
        texts=[text],
        audience=audience,
        requested_by=staff.id,
        due_at=due_at or now,
    )
    await console.db[BROADCASTS].insert_one(broadcast.to_document())
    await console.emit(
        F.BROADCAST_REQUESTED,
        {"broadcast_id": broadcast.id, "staff_id": staff.id, "audience": audience},
        cause=broadcast.id,
    )
    if due_at is None:
        await send_due(console)
    return broadcast


async def cancel(console: Console, broadcast_id: str, staff: Staff) -> bool:
    result = await console.db[BROADCASTS].update_one(
        {"_id": broadcast_id, "state": "scheduled"},
        {"$set": {"state": "cancelled", "detail": f"cancelled by {staff.id}"}},
    )
    if result.modified_count:
        await console.emit(
            F.SETTINGS_CHANGED,
            {
                "what": f"broadcast.{broadcast_id}.state",
                "before": "scheduled",
                "after": "cancelled",
                "staff_id": staff.id,
            },
        )
    return bool(result.modified_count)


async def send_due(console: Console) -> int:
    """Hand every due broadcast to dispatch, each once."""
    sent = 0
    while True:
        doc = await console.db[BROADCASTS].find_one_and_update(
            {"state": "scheduled", "due_at": {"$lte": utcnow()}},
            {"$set": {"state": "requested"}},
        )
        if doc is None:
            return sent
        broadcast = Broadcast.model_validate(doc)
        command = StartBroadcast(
            id=broadcast.id,
            broadcast_id=broadcast.id,
            texts=broadcast.texts,
            audience=broadcast.audience,
            requested_by=broadcast.requested_by,
        )
        try:
            await console.bus.publish(command)
        except PublishFailed as exc:
            log.warning("broadcast_publish_failed", broadcast_id=broadcast.id, error=str(exc))
            await console.db[BROADCASTS].update_one(
                {"_id": broadcast.id, "state": "requested"}, {"$set": {"state": "scheduled"}}
            )
            return sent
        sent += 1


async def on_progress(console: Console, fact_type: str, data: dict[str, Any]) -> None:
    """Keep a broadcast's progress from dispatch's facts (idempotent: a repeat sets the same)."""
    broadcast_id = data.get("broadcast_id")
    if not broadcast_id:
        return
    update: dict[str, Any] = {}
    if fact_type == F.BROADCAST_STARTED:
        update = {"state": "started", "planned": data.get("planned")}
    elif fact_type == F.BROADCAST_CHUNK_SENT:
        update = {f"chunks.{data.get('chunk')}": int(data.get("recipients") or 0)}
    elif fact_type == F.BROADCAST_FINISHED:
        update = {
            "state": "finished",
            "recipients": int(data.get("recipients") or 0),
            "failures": int(data.get("failures") or 0),
        }
    elif fact_type == F.BROADCAST_REFUSED:
        update = {"state": "refused", "detail": str(data.get("reason") or "")[:300]}
    if update:
        await console.db[BROADCASTS].update_one({"_id": broadcast_id}, {"$set": update})


async def recent(console: Console, limit: int = 30) -> list[dict[str, Any]]:
    docs = await console.db[BROADCASTS].find({}).sort("requested_at", -1).limit(limit).to_list()
    out = []
    for doc in docs:
        b = Broadcast.model_validate(doc)
        chunks = doc.get("chunks") or {}
        sent_so_far = b.recipients if b.state == "finished" else sum(chunks.values())
        out.append({"b": b, "sent": sent_so_far})
    return out
