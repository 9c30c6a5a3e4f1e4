"""Cases as counselors work them: the queue, claiming, replying, notes, release, transfer, close.

Claims are atomic: ``find_one_and_update({"_id": id, "state": "waiting"}, …)`` matches for one
counselor only, so two counselors clicking together never get the same case.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from pymongo import ReturnDocument
from soudan_shared import fact_types as F
from soudan_shared.bus import PublishFailed
from soudan_shared.contracts import MAX_MESSAGES_PER_REQUEST, SendText, new_id, utcnow
from soudan_shared.records import CASES, MESSAGES, USERS, Case, StoredMessage, User

from soudan_console.core import Console
from soudan_console.domain import EMERGENCIES, NOTES, Emergency, Note, Staff

QUEUE_LIMIT = 200
HISTORY_CASES = 10
MESSAGES_PER_CASE = 500
MAX_NOTE_LENGTH = 2000


class CaseError(Exception):
    """A refusal to show to the counselor (Japanese)."""


@dataclass
class QueueRow:
    case: Case
    preview: str | None
    messages: int = 0


async def waiting_queue(console: Console) -> list[QueueRow]:
    """Waiting cases, urgent first, then the longest wait."""
    docs = (
        await console.db[CASES]
        .find({"state": "waiting"})
        .sort([("urgent", -1), ("waiting_since", 1)])
        .limit(QUEUE_LIMIT)
        .to_list()
    )
    cases = [Case.model_validate(d) for d in docs]
    previews = await _latest_incoming(console, [c.id for c in cases])
    return [QueueRow(c, *previews.get(c.id, (None, 0))) for c in cases]


async def _latest_incoming(console: Console, case_ids: list[str]) -> dict[str, tuple[str, int]]:
    if not case_ids:
        return {}
    cursor = await console.db[MESSAGES].aggregate(
        [
            {"$match": {"case_id": {"$in": case_ids}, "direction": "in"}},
            {"$sort": {"at": -1}},
            {
                "$group": {
                    "_id": "$case_id",
                    "text": {"$first": "$text"},
                    "kind": {"$first": "$kind"},
                    "count": {"$sum": 1},
                }
            },
        ]
    )
    out: dict[str, tuple[str, int]] = {}
    async for doc in cursor:
        text = doc.get("text")
        if text is None:
            text = "（文字以外のメッセージ）" if doc.get("kind") != "text" else "（消去済み）"
        out[doc["_id"]] = (text, int(doc.get("count", 0)))
    return out


async def cases_of(console: Console, staff_id: str) -> list[Case]:
    docs = (
        await console.db[CASES]
        .find({"state": "active", "claimed_by": staff_id})
        .sort("last_message_at", -1)
        .to_list()
    )
    return [Case.model_validate(d) for d in docs]


async def active_cases(console: Console) -> list[Case]:
    docs = (
        await console.db[CASES]
        .find({"state": "active"})
        .sort([("urgent", -1), ("claimed_at", 1)])
        .to_list()
    )
    return [Case.model_validate(d) for d in docs]


async def get_case(console: Console, case_id: str) -> Case | None:
    doc = await console.db[CASES].find_one({"_id": case_id})
    return Case.model_validate(doc) if doc else None


def may_see(staff: Staff, case: Case) -> bool:
    """Counselors see waiting cases and their own; supervisors and admins see every case."""
    if staff.role in ("supervisor", "admin"):
        return True
    return staff.role == "counselor" and (case.state == "waiting" or case.claimed_by == staff.id)


def may_work(staff: Staff, case: Case) -> bool:
    """Reply, note, release, close: the counselor who has it, or a supervisor or admin."""
    return case.state == "active" and (
        case.claimed_by == staff.id or staff.role in ("supervisor", "admin")
    )


async def claim(console: Console, case_id: str, staff: Staff) -> Case | None:
    now = utcnow()
    doc = await console.db[CASES].find_one_and_update(
        {"_id": case_id, "state": "waiting"},
        {"$set": {"state": "active", "claimed_by": staff.id, "claimed_at": now}},
        return_document=ReturnDocument.AFTER,
    )
    if doc is None:
        return None
    case = Case.model_validate(doc)
    waited = max(0, int((now - case.waiting_since).total_seconds()))
    await console.emit(
        F.CASE_CLAIMED, {"case_id": case.id, "staff_id": staff.id, "waited_seconds": waited}
    )
    return case


async def claim_next(console: Console, staff: Staff) -> Case | None:
    """The first waiting case of the queue this counselor can still get."""
    for _ in range(5):
        rows = (
            await console.db[CASES]
            .find({"state": "waiting"}, {"_id": 1})
            .sort([("urgent", -1), ("waiting_since", 1)])
            .limit(20)
            .to_list()
        )
        if not rows:
            return None
        for row in rows:
            case = await claim(console, row["_id"], staff)
            if case is not None:
                return case
    return None


async def release(console: Console, case: Case, staff: Staff) -> bool:
    """Back to the queue, in its old place (``waiting_since`` is kept)."""
    doc = await console.db[CASES].find_one_and_update(
        {"_id": case.id, "state": "active", "claimed_by": case.claimed_by},
        {"$set": {"state": "waiting", "claimed_by": None, "claimed_at": None}},
    )
    if doc is None:
        return False
    await console.emit(F.CASE_RELEASED, {"case_id": case.id, "staff_id": staff.id})
    return True


async def transfer(console: Console, case: Case, to: Staff, by: Staff) -> bool:
    if to.disabled or to.role not in ("counselor", "supervisor", "admin"):
        raise CaseError("この人には引き継げません。")
    if to.id == case.claimed_by:
        raise CaseError("すでにこの人が担当しています。")
    doc = await console.db[CASES].find_one_and_update(
        {"_id": case.id, "state": "active", "claimed_by": case.claimed_by},
        {"$set": {"claimed_by": to.id, "claimed_at": utcnow()}},
    )
    if doc is None:
        return False
    await console.emit(
        F.CASE_TRANSFERRED,
        {
            "case_id": case.id,
            "from_staff_id": case.claimed_by,
            "to_staff_id": to.id,
            "by": by.id,
        },
    )
    return True


async def close(console: Console, case: Case, staff: Staff, *, category: str, outcome: str) -> bool:
    now = utcnow()
    doc = await console.db[CASES].find_one_and_update(
        {"_id": case.id, "state": "active"},
        {
            "$set": {
                "state": "closed",
                "closed_at": now,
                "closed_by": staff.id,
                "category": category,
                "outcome": outcome,
            }
        },
        return_document=ReturnDocument.AFTER,
    )
    if doc is None:
        return False
    closed = Case.model_validate(doc)
    await console.emit(
        F.CASE_CLOSED,
        {
            "case_id": closed.id,
            "staff_id": staff.id,
            "category": category,
            "outcome": outcome,
            "opened_at": closed.opened_at.isoformat(),
            "duration_seconds": max(0, int((now - closed.opened_at).total_seconds())),
            "urgent": closed.urgent,
            "out_of_scope": closed.out_of_scope,
        },
    )
    return True


def clean_texts(texts: list[str]) -> list[str]:
    """The non-empty bubbles of the reply box, at most five, line ends normalised."""
    out = [t.replace("\r\n", "\n").strip("\n") for t in texts]
    out = [t for t in out if t.strip()]
    if not out:
        raise CaseError("送る文を入れてください。")
    if len(out) > MAX_MESSAGES_PER_REQUEST:
        raise CaseError(f"一度に送れるのは{MAX_MESSAGES_PER_REQUEST}つまでです。")
    for text in out:
        if len(text.encode("utf-16-le")) // 2 > 5000:
            raise CaseError("1つの吹き出しは5000文字までです。")
    return out


async def reply(
    console: Console, case: Case, staff: Staff, texts: list[str], command_id: str
) -> None:
    """Ask dispatch to send, then keep what was sent in the conversation.

    ``command_id`` comes from the form, so sending the same form twice (a double click, a
    resend after a timeout) publishes the same command and stores the same messages once.
    """
    texts = clean_texts(texts)
    command = SendText(
        id=command_id,
        to=case.user_id,
        texts=texts,
        purpose="counselor_reply",
        case_id=case.id,
        staff_id=staff.id,
    )
    try:
        await console.bus.publish(command)
    except PublishFailed as exc:
        raise CaseError(
            "いま返信を送れませんでした（しくみの一部が止まっています）。"
            "少し待ってから、もう一度「送る」を押してください。"
        ) from exc
    now = utcnow()
    for i, text in enumerate(texts):
        message = StoredMessage.model_validate(
            {
                "_id": f"out:{command_id}:{i}",
                "case_id": case.id,
                "user_id": case.user_id,
                "direction": "out",
                "kind": "text",
                "text": text,
                "at": now,
                "staff_id": staff.id,
                "purpose": "counselor_reply",
            }
        )
        await console.db[MESSAGES].replace_one(
            {"_id": message.id}, message.to_document(), upsert=True
        )
    await console.db[CASES].update_one(
        {"_id": case.id, "first_reply_at": None}, {"$set": {"first_reply_at": now}}
    )
    await console.emit(
        F.REPLY_REQUESTED,
        {
            "case_id": case.id,
            "staff_id": staff.id,
            "command_id": command_id,
            "messages": len(texts),
        },
        cause=command_id,
    )


async def add_note(console: Console, case: Case, staff: Staff, text: str) -> None:
    text = text.strip()
    if not text:
        raise CaseError("メモを入れてください。")
    if len(text) > MAX_NOTE_LENGTH:
        raise CaseError(f"メモは{MAX_NOTE_LENGTH}文字までです。")
    note = Note(case_id=case.id, user_id=case.user_id, staff_id=staff.id, text=text)
    await console.db[NOTES].insert_one(note.to_document())
    await console.emit(F.CASE_NOTE_ADDED, {"case_id": case.id, "staff_id": staff.id})


@dataclass
class Conversation:
    case: Case
    user: User | None
    messages: list[StoredMessage]
    notes: list[Note]
    emergencies: list[Emergency]
    earlier: list[tuple[Case, list[StoredMessage]]] = field(default_factory=list)


async def messages_of(console: Console, case_id: str) -> list[StoredMessage]:
    docs = (
        await console.db[MESSAGES]
        .find({"case_id": case_id})
        .sort("at", 1)
        .limit(MESSAGES_PER_CASE)
        .to_list()
    )
    return [StoredMessage.model_validate(d) for d in docs]


async def conversation(console: Console, case: Case) -> Conversation:
    user_doc = await console.db[USERS].find_one({"_id": case.user_id})
    notes = await console.db[NOTES].find({"user_id": case.user_id}).sort("at", 1).to_list()
    emergencies = await console.db[EMERGENCIES].find({"case_id": case.id}).to_list()
    earlier_docs = (
        await console.db[CASES]
        .find({"user_id": case.user_id, "_id": {"$ne": case.id}})
        .sort("opened_at", -1)
        .limit(HISTORY_CASES)
        .to_list()
    )
    earlier = []
    for doc in earlier_docs:
        other = Case.model_validate(doc)
        if other.opened_at < case.opened_at:
            earlier.append((other, await messages_of(console, other.id)))
    return Conversation(
        case=case,
        user=User.model_validate(user_doc) if user_doc else None,
        messages=await messages_of(console, case.id),
        notes=[Note.model_validate(n) for n in notes],
        emergencies=[Emergency.model_validate(e) for e in emergencies],
        earlier=earlier,
    )


async def view(console: Console, case: Case, staff: Staff) -> None:
    await console.emit(F.CASE_VIEWED, {"case_id": case.id, "staff_id": staff.id})


def wait_seconds(case: Case, now: datetime | None = None) -> int:
    return max(0, int(((now or utcnow()) - case.waiting_since).total_seconds()))


async def urgent_unclaimed(console: Console, older_than: datetime) -> list[Case]:
    """Urgent cases nobody has taken since ``older_than`` (counted from when they became
    urgent)."""
    docs = (
        await console.db[CASES]
        .find({"state": "waiting", "urgent": True})
        .sort("waiting_since", 1)
        .to_list()
    )
    cases = [Case.model_validate(d) for d in docs]
    return [c for c in cases if urgent_since(c) <= older_than]


def urgent_since(case: Case) -> datetime:
    if case.flagged_urgent_at is not None and case.flagged_urgent_at > case.waiting_since:
        return case.flagged_urgent_at
    return case.waiting_since


def new_command_id() -> str:
    return new_id()
