"""Cases as counselors work them: the queue, claiming, replying, notes, release, transfer, close.

Claims are atomic: ``find_one_and_update({"_id": id, "state": "waiting"}, …)`` matches for one
counselor only, so two counselors clicking together never get the same case.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pymongo import ReturnDocument
from soudan_shared import fact_types as F
from soudan_shared.bus import PublishFailed
from soudan_shared.config import CategoriesConfig
from soudan_shared.contracts import MAX_MESSAGES_PER_REQUEST, SendText, new_id, utcnow
from soudan_shared.records import (
    CASES,
    MESSAGES,
    USERS,
    Case,
    CaseCheckin,
    StoredMessage,
    User,
    latest_reply_token,
    record_outgoing,
)

from soudan_console.core import Console
from soudan_console.domain import (
    CASE_ROLES,
    EMERGENCIES,
    NOTES,
    OUTCOMES,
    REPLY_FORMS,
    Emergency,
    Note,
    Staff,
)

QUEUE_LIMIT = 200
HISTORY_CASES = 10
MESSAGES_PER_CASE = 500
MAX_NOTE_LENGTH = 2000
TRANSFER_ROLES = frozenset({"counselor", "supervisor"})
FORM_SENDING_HOLD = timedelta(seconds=30)  # a reply form being sent is not sent again meanwhile


class CaseError(Exception):
    """A refusal to show to the counselor (Japanese)."""

    status = 400


class ReplyFormRefused(CaseError):
    """The reply form's id is not one this server issued for this case and staff member."""

    status = 409


AUTO_REPLY_LABELS = {
    "greeting": "あいさつ",
    "policy": "運営方針のお知らせ",
    "school_type_question": "学校の種類の質問",
    "school_type_answer": "学校の種類への返事",
    "out_of_hours": "受付時間外のお知らせ",
    "urgent_out_of_hours": "受付時間外（24時間の相談窓口のお知らせ）",
    "congestion": "混雑のお知らせ",
    "media_refused": "文字以外のメッセージへのお知らせ",
    "emergency": "緊急のお知らせ",
    "menu_hours": "受付時間の案内",
    "menu_inquiry": "問い合わせ先の案内",
    "wait_notice": "待ち時間のお知らせ",
    "checkin": "終わったあとの問いかけ",
    "checkin_thanks": "問いかけへの返事のお礼",
    "other": "お知らせ",
}

MONTHLY_LIMIT = "monthly_limit"  # LINE's 429 for the month's messages (dispatch's problem code)

DELIVERY_PROBLEMS = {
    "no_answer": "LINEから返事がありませんでした（通信の問題）。",
    "line_unavailable": "LINEのサーバーが一時的に使えませんでした。",
    "rate_limited": "LINEに送る数が一時的に多すぎました。",
    "monthly_limit": "今月にLINEで送れるメッセージの数が上限に達したため、送れませんでした。"
    "相談者から次にメッセージが届いたら、1分以内に「もう一度送る」を押すか返信してください"
    "（その返信は上限に数えられず届きます）。",
    "unauthorized": "LINEとの接続設定（アクセストークン）に問題があります。"
    "管理者に知らせてください。",
    "forbidden": "LINEに送信を断られました（送る権限がありません）。管理者に知らせてください。",
    "refused": "LINEがこのメッセージを受け付けませんでした。",
    "no_result": "しばらく待っても、送れたかどうかの知らせが来ていません"
    "（送信の仕組みが止まっているかもしれません）。管理者に知らせてください。",
}


def delivery_problem(message: StoredMessage) -> str:
    """Why an outgoing message did not reach the student, in plain Japanese for staff."""
    text = DELIVERY_PROBLEMS.get(message.delivery_problem or "", "送れなかった理由はわかりません。")
    if message.maybe_delivered:
        text += "届いている可能性もあります。再送しても二重には届きません。"
    return text


@dataclass
class QueueRow:
    case: Case
    preview: str | None
    messages: int = 0
    left: bool = False  # the student blocked the account (line.unfollowed) since writing


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
    left = await _users_who_left(console, [c.user_id for c in cases])
    rows = []
    for c in cases:
        preview, messages = previews.get(c.id, (None, 0))
        rows.append(QueueRow(c, preview, messages, left=c.user_id in left))
    return rows


async def _users_who_left(console: Console, user_ids: list[str]) -> set[str]:
    """The users among ``user_ids`` who blocked the account (a reply can no longer reach them)."""
    if not user_ids:
        return set()
    docs = (
        await console.db[USERS]
        .find({"_id": {"$in": user_ids}, "registered": False}, {"_id": 1})
        .to_list()
    )
    return {d["_id"] for d in docs}


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


def may_note(staff: Staff, case: Case) -> bool:
    """Notes: whoever may work the case, and supervisors and admins on a closed one.

    The case page shows the note form exactly when this holds, and ``POST /notes`` checks it.
    """
    return may_work(staff, case) or (
        case.state == "closed" and staff.role in ("supervisor", "admin")
    )


def may_claim(staff: Staff, case: Case) -> bool:
    """Claim: a waiting case, by anyone who works cases."""
    return case.state == "waiting" and staff.role in CASE_ROLES


def may_raise_emergency(staff: Staff, case: Case) -> bool:
    """An emergency: on a waiting case (raising it claims the case) or one the person may work."""
    return may_claim(staff, case) or may_work(staff, case)


def may_retry(staff: Staff, case: Case, message: StoredMessage) -> bool:
    """Send again: a counselor's reply of this case that failed, by whoever may work the case."""
    return (
        may_work(staff, case)
        and message.case_id == case.id
        and message.direction == "out"
        and message.purpose == "counselor_reply"
        and bool(message.command_id)
        and message.delivery == "failed"
    )


def may_take_over(to: Staff, case: Case) -> bool:
    """Who a case may be handed to: an enabled counselor or supervisor who does not hold it."""
    return not to.disabled and to.role in TRANSFER_ROLES and to.id != case.claimed_by


def transfer_targets(people: list[Staff], case: Case) -> list[Staff]:
    return [s for s in people if may_take_over(s, case)]


# One rule per action on a case, used by the case page (``can``) to offer the action's form and
# by the action's handler to take it: the page never shows what the server refuses, nor the
# other way round. The key is the last part of the action's path (``POST /cases/<id>/<key>``).
CASE_ACTIONS: dict[str, Callable[[Staff, Case], bool]] = {
    "claim": may_claim,
    "reply": may_work,
    "notes": may_note,
    "release": may_work,
    "transfer": may_work,
    "close": may_work,
    "emergency": may_raise_emergency,
}


def allowed_actions(staff: Staff, case: Case) -> dict[str, bool]:
    """What ``staff`` may do on ``case`` now, action by action (see :data:`CASE_ACTIONS`)."""
    return {action: rule(staff, case) for action, rule in CASE_ACTIONS.items()}


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
    if to.id == case.claimed_by:
        raise CaseError("すでにこの人が担当しています。")
    if not may_take_over(to, case):
        raise CaseError("この人には引き継げません。")
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


async def _checkin_at_close(console: Console, case: Case) -> CaseCheckin | None:
    """The check-in the close asks triage for (``messages.yaml`` → ``checkin``): ``pending``,
    or ``skipped`` after an emergency and for 対象外 (unless configured); None when switched
    off. Triage sends a pending one outside the students' quiet hours."""
    checkin = (await console.config.get()).messages.checkin
    if not checkin.enabled:
        return None
    if await console.db[EMERGENCIES].count_documents({"case_id": case.id}, limit=1):
        return CaseCheckin(state="skipped", skipped="emergency")
    if case.out_of_scope and not checkin.out_of_scope:
        return CaseCheckin(state="skipped", skipped="out_of_scope")
    return CaseCheckin(state="pending")


@dataclass(frozen=True)
class CloseRecord:
    """What the counselor records at the close, every key one of ``categories.yaml``'s:
    one or more categories, the outcome, and the student's grade and gender (None: 不明) and
    whether the counselor put the student in touch with a phone line or another service."""

    categories: tuple[str, ...]
    outcome: str
    grade: str | None = None
    gender: str | None = None
    handed_over: bool = False


def close_record(
    config: CategoriesConfig,
    *,
    categories: list[str],
    outcome: str,
    grade: str = "",
    gender: str = "",
    handed_over: bool = False,
) -> CloseRecord:
    """The close form's choices checked against the configuration (CaseError in Japanese for
    a missing or unknown one); the categories in the configuration's order, each once."""
    known = [c.key for c in config.categories]
    reload = "ページを読み込み直して、選び直してください。"
    if not categories:
        raise CaseError("分類を1つ以上選んでから終了してください。")
    if any(key not in known for key in categories):
        raise CaseError(f"設定にない分類が送られました。{reload}")
    if outcome not in OUTCOMES:
        raise CaseError("結果を選んでから終了してください。")
    if grade and grade not in {c.key for c in config.grades}:
        raise CaseError(f"設定にない学年が送られました。{reload}")
    if gender and gender not in {c.key for c in config.genders}:
        raise CaseError(f"設定にない性別が送られました。{reload}")
    return CloseRecord(
        categories=tuple(key for key in known if key in categories),
        outcome=outcome,
        grade=grade or None,
        gender=gender or None,
        handed_over=handed_over,
    )


async def close(console: Console, case: Case, staff: Staff, record: CloseRecord) -> bool:
    now = utcnow()
    checkin = await _checkin_at_close(console, case)
    doc = await console.db[CASES].find_one_and_update(
        {"_id": case.id, "state": "active"},
        {
            "$set": {
                "state": "closed",
                "closed_at": now,
                "closed_by": staff.id,
                "categories": list(record.categories),
                "grade": record.grade,
                "gender": record.gender,
                "handed_over": record.handed_over,
                "outcome": record.outcome,
                "checkin": checkin.to_document() if checkin else None,
            }
        },
        return_document=ReturnDocument.AFTER,
    )
    if doc is None:
        return False
    closed = Case.model_validate(doc)
    if checkin is not None and checkin.skipped:
        await console.emit(
            F.CHECKIN_SKIPPED,
            {"case_id": closed.id, "user_id": closed.user_id, "reason": checkin.skipped},
            cause=f"checkin:{closed.id}",
        )
    await console.emit(
        F.CASE_CLOSED,
        {
            "case_id": closed.id,
            "staff_id": staff.id,
            "categories": list(record.categories),
            "category": record.categories[0],  # for readers of the facts before 2026-12
            "grade": record.grade,
            "gender": record.gender,
            "handed_over": record.handed_over,
            "outcome": record.outcome,
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


async def issue_reply_form(console: Console, case: Case, staff: Staff) -> str:
    """A reply form's id, bound on the server to this case and this staff member.

    It becomes the reply's command id: the same form sent twice (a double click, a resend after
    a timeout) is one send; the id posted for another case, or by someone else, is refused.
    """
    form_id = new_id()
    await console.db[REPLY_FORMS].insert_one(
        {"_id": form_id, "case_id": case.id, "staff_id": staff.id, "issued_at": utcnow()}
    )
    return form_id


async def reply(console: Console, case: Case, staff: Staff, texts: list[str], form_id: str) -> str:
    """Ask dispatch to send, and keep the texts in the conversation as 送信中 (sending).

    Dispatch records ``sent`` or ``failed`` on the same messages when LINE answers. Returns the
    command id.
    """
    texts = clean_texts(texts)
    form = await console.db[REPLY_FORMS].find_one({"_id": form_id}) if form_id else None
    if form is None:
        raise CaseError(
            "この返信欄は古くなっていたため、送りませんでした。"
            "書いた文はそのまま残しています。もう一度「送る」を押してください。"
        )
    if form["case_id"] != case.id or form["staff_id"] != staff.id:
        raise ReplyFormRefused(
            "この返信欄は別の相談（または別の人）のためのものなので、送りませんでした。"
            "書いた文はそのまま残しています。送り先がこの相談でよければ、もう一度「送る」を押してください。"
        )
    if form.get("published_at") is not None:
        return form_id  # the same form again: it was sent once already
    # Taken for sending atomically: the same form posted again while it is being sent (a
    # double click, a browser's resend) finds it taken and is the same send, not a second one.
    # A send interrupted before it was published (the process stopped) is free again later.
    now = utcnow()
    taken = await console.db[REPLY_FORMS].find_one_and_update(
        {
            "_id": form_id,
            "published_at": None,
            "$or": [{"sending_at": None}, {"sending_at": {"$lt": now - FORM_SENDING_HOLD}}],
        },
        {"$set": {"sending_at": now}},
    )
    if taken is None:
        return form_id
    command = SendText(
        id=form_id,
        to=case.user_id,
        texts=texts,
        purpose="counselor_reply",
        case_id=case.id,
        staff_id=staff.id,
        **await _reply_token(console, case),
    )
    try:
        await _publish(console, command)
    except CaseError:
        await console.db[REPLY_FORMS].update_one({"_id": form_id}, {"$set": {"sending_at": None}})
        raise
    now = utcnow()
    await console.db[REPLY_FORMS].update_one({"_id": form_id}, {"$set": {"published_at": now}})
    await record_outgoing(console.db, command, at=now, delivery={"delivery": "sending"})
    await console.db[CASES].update_one(
        {"_id": case.id, "first_reply_at": None}, {"$set": {"first_reply_at": now}}
    )
    await console.emit(
        F.REPLY_REQUESTED,
        {
            "case_id": case.id,
            "staff_id": staff.id,
            "command_id": form_id,
            "messages": len(texts),
        },
        cause=form_id,
    )
    return form_id


async def _reply_token(console: Console, case: Case) -> dict[str, Any]:
    """The student's latest unclaimed reply token, for the command: dispatch replies with it
    (free) if it is still young enough and no other command claimed it, and pushes otherwise."""
    latest = await latest_reply_token(console.db, case.user_id)
    if latest is None:
        return {}
    token, received_at = latest
    return {"reply_token": token, "reply_token_received_at": received_at}


async def _publish(console: Console, command: SendText) -> None:
    try:
        await console.bus.publish(command)
    except PublishFailed as exc:
        raise CaseError(
            "いま返信を送れませんでした（しくみの一部が止まっています）。"
            "少し待ってから、もう一度「送る」を押してください。"
        ) from exc


async def retry_reply(console: Console, case: Case, staff: Staff, command_id: str) -> bool:
    """Send a failed reply again under the same command id (so the same LINE retry key).

    Only messages still ``failed`` flip back to ``sending``, so a second click does nothing;
    and dispatch never sends a command it already sent. False: nothing to send again.
    """
    if not may_work(staff, case):
        return False
    flipped = await console.db[MESSAGES].update_many(
        {
            "command_id": command_id,
            "case_id": case.id,
            "direction": "out",
            "purpose": "counselor_reply",
            "delivery": "failed",
        },
        {"$set": {"delivery": "sending", "delivery_at": utcnow()}},
    )
    if flipped.modified_count == 0:
        return False
    docs = (
        await console.db[MESSAGES]
        .find({"command_id": command_id, "case_id": case.id, "direction": "out"})
        .sort("_id", 1)
        .to_list()
    )
    messages = [StoredMessage.model_validate(d) for d in docs]
    texts = [m.text for m in messages if m.text]
    if not texts or messages[0].purpose != "counselor_reply":
        return False
    # Refused for the month's limit, it never reached the student: the student's fresh reply
    # token (if they wrote since) carries it free. Otherwise the same push and retry key again,
    # so LINE drops it if an earlier try went out after all.
    spent = all(m.delivery_problem == MONTHLY_LIMIT and not m.maybe_delivered for m in messages)
    command = SendText(
        id=command_id,
        to=case.user_id,
        texts=texts,
        purpose="counselor_reply",
        case_id=case.id,
        staff_id=messages[0].staff_id or staff.id,
        **(await _reply_token(console, case) if spent else {}),
    )
    try:
        await _publish(console, command)
    except CaseError:
        await console.db[MESSAGES].update_many(
            {"command_id": command_id, "delivery": "sending"}, {"$set": {"delivery": "failed"}}
        )
        raise
    await console.emit(
        F.REPLY_RETRIED, {"case_id": case.id, "staff_id": staff.id, "command_id": command_id}
    )
    return True


def _one_per_reply(docs: list[dict[str, Any]]) -> list[StoredMessage]:
    """The first message of each reply (a reply of several texts is several messages)."""
    firsts: dict[str, StoredMessage] = {}
    for doc in docs:
        message = StoredMessage.model_validate(doc)
        firsts.setdefault(message.command_id or message.id, message)
    return list(firsts.values())


async def give_up_waiting(console: Console, older_than: datetime) -> list[StoredMessage]:
    """Counselors' replies still 送信中 since before ``older_than``: dispatch never said how
    they went (it is down, or could not read the command). They turn to 送れませんでした with
    that reason, as possibly delivered (a retry is the same command: it cannot arrive twice),
    so the counselor and, with :func:`failed_replies`, the supervisors are told. Should dispatch
    send them after all, its answer overwrites this. Returns one message per reply."""
    since = {"$lte": older_than}
    query = {
        "direction": "out",
        "purpose": "counselor_reply",
        "delivery": "sending",
        "$or": [{"delivery_at": since}, {"delivery_at": None, "at": since}],
    }
    docs = await console.db[MESSAGES].find(query).limit(QUEUE_LIMIT).to_list()
    for doc in docs:  # failed since it was asked for: the supervisors' delay has run out too
        await console.db[MESSAGES].update_one(
            {"_id": doc["_id"], "delivery": "sending"},
            {
                "$set": {
                    "delivery": "failed",
                    "delivery_at": doc.get("delivery_at") or doc["at"],
                    "delivery_problem": "no_result",
                    "maybe_delivered": True,
                }
            },
        )
    return _one_per_reply(docs)


async def failed_replies(console: Console, older_than: datetime) -> list[StoredMessage]:
    """Counselors' replies that failed before ``older_than`` and were not sent again since.

    Not those refused for the month's limit: the supervisors hear of that once a month
    (:mod:`soudan_console.budget`), not once for each reply."""
    docs = (
        await console.db[MESSAGES]
        .find(
            {
                "direction": "out",
                "purpose": "counselor_reply",
                "delivery": "failed",
                "delivery_at": {"$lte": older_than},
                "delivery_problem": {"$ne": MONTHLY_LIMIT},
            }
        )
        .sort("delivery_at", 1)
        .limit(QUEUE_LIMIT)
        .to_list()
    )
    return _one_per_reply(docs)


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


async def messages_of(
    console: Console, case: Case, after: datetime | None = None
) -> list[StoredMessage]:
    """The case's messages, and the automatic replies sent to its student outside any case
    (the greeting, …) since the case before it (``after``) until this one closed."""
    window: dict[str, datetime] = {}
    if after is not None:
        window["$gt"] = after
    if case.closed_at is not None:
        window["$lte"] = case.closed_at
    unattached: dict[str, object] = {"user_id": case.user_id, "case_id": None}
    if window:
        unattached["at"] = window
    docs = (
        await console.db[MESSAGES]
        .find({"$or": [{"case_id": case.id}, unattached]})
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
    before = [
        other
        for other in (Case.model_validate(d) for d in earlier_docs)
        if other.opened_at < case.opened_at
    ]
    earlier = []
    for i, other in enumerate(before):
        earlier.append((other, await messages_of(console, other, _end_of(before, i + 1))))
    return Conversation(
        case=case,
        user=User.model_validate(user_doc) if user_doc else None,
        messages=await messages_of(console, case, _end_of(before, 0)),
        notes=[Note.model_validate(n) for n in notes],
        emergencies=[Emergency.model_validate(e) for e in emergencies],
        earlier=earlier,
    )


def _end_of(cases: list[Case], index: int) -> datetime | None:
    if index >= len(cases):
        return None
    return cases[index].closed_at or cases[index].opened_at


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
