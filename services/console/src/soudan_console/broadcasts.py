"""Broadcasts of the section's fixed announcements (運営要領 第5(3)): compose, confirm, schedule.

Only the templates of ``messages.yaml`` (in force, with the console's edits) can be sent, and
only exactly as the admin confirmed them:

1. **Preview** (:func:`preview`): the choices (announcement, period text, audience, when) are
   composed into the text and counted, and stored as a single-use preview in
   :data:`PREVIEWS` under a random token, for that admin, for :data:`PREVIEW_TTL`. The page
   shows that text, the audience and the number of recipients, and the send button carries the
   token.
2. **Send** (:func:`send`): the form's choices *as shown* come back with the token. The text is
   composed and the audience counted again; if anything differs from the preview (another
   choice on screen, a text edited since, a different number of recipients for a send now), or
   the token is unknown, used or expired, nothing is sent and the page previews again
   (:class:`PreviewMismatch`). A repeat of an announcement (the same exact text, automatic
   broadcasts included) within ``CONSOLE_BROADCAST_REPEAT_WINDOW_HOURS`` of an earlier one
   needs the explicit second confirmation ``repeat_confirmed``. One that would leave less of the
   month's LINE messages than the reserve kept for conversations (dispatch's last reading,
   :func:`budget`) is refused with the reason unless the admin confirms ``budget_confirmed``:
   ``broadcast.requested`` then records ``budget_override`` and dispatch gets ``force``. The
   token is consumed
   atomically and the broadcast id derived from it, so a double submit sends once.

A broadcast due now or later is stored as ``scheduled``; a periodic task turns each due one into
a ``StartBroadcast`` for dispatch, taking it with a conditional update so that one console
replica sends it, once. Progress comes back as dispatch's ``broadcast.*`` facts, which also put
dispatch's automatic (scheduled) broadcasts in the list.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from soudan_shared import fact_types as F
from soudan_shared.bus import PublishFailed
from soudan_shared.contracts import StartBroadcast, stable_id, texts_digest, utcnow
from soudan_shared.records import LINE_BUDGET, USERS

from soudan_console.core import Console
from soudan_console.domain import BROADCAST_PREVIEWS as PREVIEWS
from soudan_console.domain import BROADCASTS, Broadcast, Staff
from soudan_console.web import TOKYO as _TOKYO

log = structlog.get_logger(__name__)

PREVIEW_TTL = timedelta(minutes=30)
TEMPLATES = {"period_notice": "相談期間・相談時間のお知らせ", "open_now": "相談開始のお知らせ"}
AUDIENCES = {
    "registered": "友だち登録しているすべての人",
    "target_group": "対象の学校の生徒だけ（対象外の人には送らない）",
}
SCHEDULE = "schedule"
"""``requested_by`` of dispatch's automatic broadcasts."""


class BroadcastError(Exception):
    """A refusal to show on the form (Japanese)."""


@dataclass(frozen=True)
class Choices:
    """What the admin chose on the form."""

    template: str
    period: str
    audience: str
    due_at: datetime | None  # None: now


@dataclass(frozen=True)
class Preview:
    """A composed announcement as the confirmation shows it."""

    token: str
    choices: Choices
    texts: list[str]
    recipients: int
    repeats: list[dict[str, Any]] = field(default_factory=list)
    short: str | None = None  # why it would eat the reserve kept for conversations (Japanese)

    @property
    def digest(self) -> str:
        return texts_digest(self.texts)

    def confirmation(self) -> str:
        """The browser's confirmation question: which announcement, to whom, how many, when."""
        when = (
            "今すぐ"
            if self.choices.due_at is None
            else f"{self.choices.due_at.astimezone(_TOKYO):%Y年%m月%d日 %H:%M}に"
        )
        count = f"{self.recipients}人"
        if self.choices.due_at is not None:
            count = "いまは" + count
        question = (
            f"「{TEMPLATES[self.choices.template]}」を、{AUDIENCES[self.choices.audience]}"
            f"（{count}）に{when}送ります。"
        )
        if self.repeats:
            question += "同じお知らせを最近も送っています。"
        return question + "よろしいですか？"


class PreviewMismatch(BroadcastError):
    """Not sent: what would be sent differs from what was confirmed. ``preview`` is the fresh
    preview of the choices as sent, to confirm again."""

    def __init__(self, message: str, preview: Preview | None) -> None:
        super().__init__(message)
        self.preview = preview


def audience_query(audience: str) -> dict[str, Any]:
    query: dict[str, Any] = {"registered": True}
    if audience == "target_group":
        query["eligible"] = {"$ne": False}
    return query


@dataclass(frozen=True)
class Budget:
    """The month's LINE messages as dispatch last read them (:data:`LINE_BUDGET`)."""

    limit: int
    used: int
    remaining: int
    reserve: int
    read_at: datetime | None
    level: str  # "" | "warn" (CONSOLE_BUDGET_WARN_PERCENT) | "alert" (…_ALERT_PERCENT)

    @property
    def percent(self) -> int:
        return min(100, self.used * 100 // self.limit) if self.limit else 0


async def budget(console: Console) -> Budget | None:
    """The last reading; None before dispatch read one, or when LINE sets no monthly limit."""
    doc = await console.db[LINE_BUDGET].find_one({"_id": "current"})
    if doc is None or doc.get("limit") is None:
        return None
    limit, used = int(doc["limit"]), int(doc.get("used", 0))
    share = used * 100 / limit if limit else 100.0
    settings = console.settings
    level = (
        "alert"
        if share >= settings.console_budget_alert_percent
        else "warn"
        if share >= settings.console_budget_warn_percent
        else ""
    )
    return Budget(
        limit=limit,
        used=used,
        remaining=max(0, limit - used),
        reserve=int(doc.get("reserve", 0)),
        read_at=doc.get("read_at"),
        level=level,
    )


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


async def _compose_choices(console: Console, choices: Choices, token: str) -> Preview:
    if choices.audience not in AUDIENCES:
        raise BroadcastError("送る相手を選んでください。")
    text = await compose(console, choices.template, choices.period)
    if len(text) > 5000:
        raise BroadcastError("お知らせが5000文字をこえています。")
    if choices.due_at is not None and choices.due_at < utcnow():
        raise BroadcastError("予約の日時が過ぎています。")
    recipients = await count_audience(console, choices.audience)
    repeats = await _repeats(console, [text], choices.due_at or utcnow())
    short = budget_shortfall(await budget(console), recipients)
    return Preview(token, choices, [text], recipients, repeats, short)


def budget_shortfall(current: Budget | None, recipients: int) -> str | None:
    """Why sending to ``recipients`` would leave less than the reserve (None if it would not)."""
    if current is None:
        return None
    free = max(0, current.remaining - current.reserve)
    if recipients <= free:
        return None
    return (
        f"このお知らせは{recipients}人に送るため、今月の残り{current.remaining}通のうち、"
        f"相談員の返信や急ぎの自動返信のために残している{current.reserve}通に食い込みます"
        f"（一斉送信に使えるのはあと{free}通です）。このままでは送れません。"
        "どうしても送るときは、管理者が「残しておく分を使って送る」にチェックを入れてください。"
    )


async def _repeats(console: Console, texts: list[str], at: datetime) -> list[dict[str, Any]]:
    """Earlier broadcasts of the same exact text within the repeat window around ``at``."""
    hours = console.settings.console_broadcast_repeat_window_hours
    if hours <= 0:
        return []
    window = timedelta(hours=hours)
    docs = await (
        console.db[BROADCASTS]
        .find(
            {
                "$or": [{"texts_digest": texts_digest(texts)}, {"texts": texts}],
                "state": {"$nin": ["cancelled", "refused"]},
                "due_at": {"$gte": at - window, "$lte": at + window},
            }
        )
        .sort("due_at", -1)
        .to_list()
    )
    return [{"at": d["due_at"], "audience": d.get("audience")} for d in docs]


async def preview(console: Console, staff: Staff, choices: Choices) -> Preview:
    """Compose and count ``choices`` and keep them as a single-use preview for ``staff``."""
    shown = await _compose_choices(console, choices, secrets.token_urlsafe(24))
    now = utcnow()
    await console.db[PREVIEWS].insert_one(
        {
            "_id": shown.token,
            "staff_id": staff.id,
            "template": choices.template,
            "period": choices.period.strip(),
            "audience": choices.audience,
            "due_at": choices.due_at,
            "texts": shown.texts,
            "texts_digest": shown.digest,
            "recipients": shown.recipients,
            "created_at": now,
            "expires_at": now + PREVIEW_TTL,
            "used_at": None,
        }
    )
    return shown


async def send(
    console: Console,
    staff: Staff,
    token: str,
    choices: Choices,
    *,
    repeat_confirmed: bool,
    budget_confirmed: bool = False,
) -> Broadcast:
    """Send (or schedule) exactly the previewed announcement; see the module docstring."""
    stored = await console.db[PREVIEWS].find_one({"_id": token[:64], "staff_id": staff.id})
    broadcast_id = "bc-" + stable_id("console-broadcast", token[:64])
    if stored is not None and stored.get("used_at") is not None:
        existing = await console.db[BROADCASTS].find_one({"_id": broadcast_id})
        if existing is not None:  # the same confirmation submitted twice: sent once
            return Broadcast.model_validate(existing)

    async def again(message: str) -> PreviewMismatch:
        try:
            return PreviewMismatch(message, await preview(console, staff, choices))
        except BroadcastError as exc:
            return PreviewMismatch(str(exc), None)

    if stored is None or stored["expires_at"] < utcnow() or stored.get("used_at") is not None:
        raise await again(
            "確かめた内容の期限が切れています。送る前に、もう一度内容を確かめてください。"
        )
    confirmed = (stored["template"], stored["period"], stored["audience"], stored["due_at"])
    if confirmed != (choices.template, choices.period.strip(), choices.audience, choices.due_at):
        raise await again(
            "画面の選択が、確かめたときと変わっています。送っていません。"
            "下に表示した内容を確かめてから、もう一度「送る」を押してください。"
        )
    fresh = await _compose_choices(console, choices, token)
    if fresh.digest != stored["texts_digest"]:
        raise await again(
            "確かめたあとで文面が変わりました。送っていません。新しい文面を確かめてください。"
        )
    if choices.due_at is None and fresh.recipients != stored["recipients"]:
        raise await again(
            f"確かめたあとで送る相手の人数が変わりました（{stored['recipients']}人→"
            f"{fresh.recipients}人）。送っていません。もう一度確かめてください。"
        )
    if fresh.repeats and not repeat_confirmed:
        raise await again(
            "同じお知らせを最近も送っています。もう一度送るときは、"
            "「同じお知らせをもう一度送る」にチェックを入れてください。"
        )
    if fresh.short and not budget_confirmed:
        raise await again(fresh.short)
    taken = await console.db[PREVIEWS].find_one_and_update(
        {"_id": token[:64], "used_at": None}, {"$set": {"used_at": utcnow()}}
    )
    if taken is None:
        raise await again(
            "この内容はもう送りました。もう一度送るときは、内容を確かめ直してください。"
        )
    now = utcnow()
    broadcast = Broadcast(
        id=broadcast_id,
        template=choices.template,
        texts=fresh.texts,
        texts_digest=fresh.digest,
        audience=choices.audience,
        requested_by=staff.id,
        due_at=choices.due_at or now,
        confirmed_recipients=fresh.recipients,
        repeat_confirmed=bool(fresh.repeats),
        budget_override=bool(fresh.short),
    )
    await console.db[BROADCASTS].insert_one(broadcast.to_document())
    await console.emit(
        F.BROADCAST_REQUESTED,
        {
            "broadcast_id": broadcast.id,
            "staff_id": staff.id,
            "audience": choices.audience,
            "template": choices.template,
            "recipients": fresh.recipients,
            "repeat_confirmed": bool(fresh.repeats),
            "budget_override": bool(fresh.short),
        },
        cause=broadcast.id,
    )
    if choices.due_at is None:
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
            template=broadcast.template,
            force=broadcast.budget_override,
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


ENDED_STATES = ("finished", "refused")
PROGRESS_FACTS = (
    F.BROADCAST_STARTED,
    F.BROADCAST_CHUNK_SENT,
    F.BROADCAST_FINISHED,
    F.BROADCAST_REFUSED,
)
DESCRIBING_FACTS = (F.BROADCAST_STARTED, F.BROADCAST_REFUSED)  # the ones that say what it was


async def on_progress(console: Console, fact_type: str, data: dict[str, Any]) -> None:
    """Keep a broadcast's progress from dispatch's facts (idempotent: a repeat sets the same).

    The console handles facts concurrently, so any of them may be applied first: each lists a
    broadcast the console did not request, and one that has ended never goes back to sending.
    """
    broadcast_id = data.get("broadcast_id")
    if not broadcast_id or fact_type not in PROGRESS_FACTS:
        return
    await _list_unknown(console, broadcast_id, data, describing=fact_type in DESCRIBING_FACTS)
    update: dict[str, Any] = {}
    if fact_type == F.BROADCAST_STARTED:
        planned = {"planned": data.get("planned")}
        started = await console.db[BROADCASTS].update_one(
            {"_id": broadcast_id, "state": {"$nin": list(ENDED_STATES)}},
            {"$set": {"state": "started", **planned}},
        )
        if started.matched_count:
            return
        update = planned  # it has ended already: only the count it planned
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
    await console.db[BROADCASTS].update_one({"_id": broadcast_id}, {"$set": update})


async def _list_unknown(
    console: Console, broadcast_id: str, data: dict[str, Any], *, describing: bool
) -> None:
    """A broadcast the console did not request (dispatch's schedule) joins the list, from
    whichever of its facts comes first; one listed by a fact that does not describe it (a chunk,
    its end) takes its template and audience from the first that does."""
    now = utcnow()
    audience = data.get("audience")
    listed = Broadcast(
        id=broadcast_id,
        template=str(data.get("template") or ""),
        texts=[],
        texts_digest=data.get("texts_digest"),
        audience=audience if audience in AUDIENCES else "registered",
        requested_by=str(data.get("requested_by") or SCHEDULE),
        requested_at=now,
        due_at=now,
        state="requested",
    )
    document = listed.to_document()
    del document["_id"]  # taken from the filter on insert; never set on an update
    inserted = await console.db[BROADCASTS].update_one(
        {"_id": broadcast_id}, {"$setOnInsert": document}, upsert=True
    )
    if describing and inserted.upserted_id is None and listed.template:
        described = {k: document[k] for k in ("template", "texts_digest", "audience")}
        await console.db[BROADCASTS].update_one(
            {"_id": broadcast_id, "requested_by": SCHEDULE, "template": ""}, {"$set": described}
        )


async def recent(console: Console, limit: int = 30) -> list[dict[str, Any]]:
    docs = await console.db[BROADCASTS].find({}).sort("requested_at", -1).limit(limit).to_list()
    out = []
    for doc in docs:
        b = Broadcast.model_validate(doc)
        chunks = doc.get("chunks") or {}
        sent_so_far = b.recipients if b.state == "finished" else sum(chunks.values())
        out.append({"b": b, "sent": sent_so_far})
    return out
