"""Documents more than one service reads or writes: users, cases, messages, leases, reply tokens.

Triage writes users, cases and incoming messages; the console reads them, claims and closes
cases and writes counselors' replies; dispatch reads users for broadcasts and records every text
it sends (automatic replies included) with its delivery state (:func:`record_outgoing`). The
shape of these documents is therefore a contract like a bus message, defined here once. A
service's private collections (triage's processed events, the console's staff and sessions,
dispatch's broadcast progress, reporting's ``events``) stay in that service.

Documents are stored with ``model_dump()`` (times stay ``datetime``, UTC) and read back with
``Model.model_validate(doc)``; unknown fields are ignored on read so a newer writer does not
break an older reader.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from soudan_shared.contracts import SendText, UtcDatetime, new_id, utcnow
from soudan_shared.store import IndexSpec

USERS = "users"
CASES = "cases"
MESSAGES = "messages"
LEASES = "leases"
# The month's LINE message budget as dispatch last read it (soudan_dispatch.quota), one document
# {_id: "current", limit|None, used, remaining|None, reserve, read_at}; the console shows it.
LINE_BUDGET = "dispatch_line_budget"
# The reply tokens of students' messages, one document each (see :func:`claim_reply_token`).
REPLY_TOKENS = "reply_tokens"

CaseState = Literal["waiting", "active", "closed"]
Direction = Literal["in", "out"]
Delivery = Literal["sending", "sent", "failed"]


class Record(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    def to_document(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True)


class User(Record):
    """Everyone who ever added the account (第3(2), 第8-2). ``_id`` is the LINE user id."""

    id: str = Field(alias="_id")
    registered: bool = True
    followed_at: UtcDatetime
    unfollowed_at: UtcDatetime | None = None
    school_type: str | None = Field(default=None, description="a key of messages.yaml choices")
    eligible: bool | None = Field(
        default=None, description="None until answered; False marks cases 対象外 (never refused)"
    )
    updated_at: UtcDatetime = Field(default_factory=utcnow)


class RiskFound(Record):
    """A risk triage's risk reader found in a student's message (``risk.yaml``): its category
    (自殺念慮, 方法・手段, 自傷, 暴力・虐待), the lexicon's term and the text that matched."""

    category: str
    term: str
    match: str


class CaseCheckin(Record):
    """The one question a student gets after a counselor closed the case (``messages.yaml`` →
    ``checkin``): ``pending`` (set at the close; triage sends it outside the quiet hours),
    ``sent``, or ``skipped`` with the reason (``emergency``, ``out_of_scope``, ``blocked``,
    ``wrote_again``). The answer is the choice's key (and its label then), the first tap only."""

    state: Literal["pending", "sent", "skipped"]
    skipped: str | None = None
    sent_at: UtcDatetime | None = None
    answer: str | None = None
    answer_label: str | None = None
    answered_at: UtcDatetime | None = None


class CaseDeparture(Record):
    """A student in danger (urgent case, or an emergency open) blocked the account: when, what
    the case was then, and whether the e-mail to ``EMERGENCY_RECIPIENTS`` went out (``pending``
    until the console sends it, again after a refused try until ``mail_after``; ``sending``
    while a console has it, since ``mail_claimed_at``; ``sent``; ``failed`` when every try was
    refused, the last reason in ``mail_detail``; ``not_configured``)."""

    at: UtcDatetime
    event_id: str
    urgent: bool = False
    emergency_ids: list[str] = Field(default_factory=list)
    mail: str = "pending"
    mail_attempts: int = 0
    mail_after: UtcDatetime | None = None
    mail_claimed_at: UtcDatetime | None = None
    mail_detail: str = ""


class Case(Record):
    """One consultation: waiting → active → closed. A message after closing opens a new case.

    The console's queue is the waiting cases ordered by ``urgent`` (first) and ``waiting_since``
    (oldest first).
    """

    id: str = Field(default_factory=new_id, alias="_id")
    user_id: str
    state: CaseState = "waiting"
    urgent: bool = False
    keywords: list[str] = Field(default_factory=list, description="matched urgency keywords")
    risks: list[RiskFound] = Field(default_factory=list, description="risks read in messages")
    out_of_scope: bool = Field(default=False, description="対象外: outside the target group")
    school_type: str | None = None
    opened_at: UtcDatetime
    opened_in_hours: bool = True
    waiting_since: UtcDatetime
    last_message_at: UtcDatetime
    claimed_by: str | None = None
    claimed_at: UtcDatetime | None = None
    first_reply_at: UtcDatetime | None = None
    flagged_urgent_at: UtcDatetime | None = None
    closed_at: UtcDatetime | None = None
    closed_by: str | None = None
    #: recorded at the close (categories.yaml keys): one or more categories; the student's
    #: grade and gender (None: 不明, not recorded); handed over to a phone line or other service
    categories: list[str] = Field(default_factory=list)
    grade: str | None = None
    gender: str | None = None
    handed_over: bool = False
    outcome: str | None = None
    congestion_replied: bool = False
    #: when triage told the waiting student how long it may take (``wait_notice``), once
    wait_notice_at: UtcDatetime | None = None
    #: the emergencies raised on the case and not closed yet (the console keeps this list)
    open_emergencies: list[str] = Field(default_factory=list)
    #: the check-in after the close (None: none asked for, e.g. a case closed before it existed)
    checkin: CaseCheckin | None = None
    #: the student blocked the account while the case was urgent or had an open emergency
    departure: CaseDeparture | None = None

    @model_validator(mode="before")
    @classmethod
    def _upcast_category(cls, data: Any) -> Any:
        """Cases closed before several categories existed hold one ``category``: the one place
        that reads it, as a list of one."""
        if isinstance(data, dict) and "categories" not in data and data.get("category"):
            data = {**data, "categories": [data["category"]]}
        return data

    @property
    def risk_categories(self) -> list[str]:
        """The categories of :attr:`risks`, each once, first found first."""
        return list(dict.fromkeys(r.category for r in self.risks))

    @property
    def highlights(self) -> list[str]:
        """What the console marks in the student's messages: the keywords and risk matches."""
        return [*self.keywords, *(r.match for r in self.risks)]


class StoredMessage(Record):
    """One message of a case, either way. Incoming ones are keyed by LINE's message id,
    outgoing ones by their command's id and place (:func:`outgoing_message_id`).

    ``text`` is None once erased: unsent by the student (``unsent_at``) or past retention
    (``erased_at``); the record that a message existed stays.

    Outgoing messages carry their delivery state: ``sending`` (the console asked dispatch),
    then ``sent`` or ``failed`` as dispatch found it. ``delivery_problem`` is dispatch's short
    code for a failure (``no_answer``, ``line_unavailable``, ``rate_limited``, ``monthly_limit``,
    ``unauthorized``, ``forbidden``, ``refused``), ``maybe_delivered`` that an earlier try got
    no clear answer. An automatic reply sent before any case (the greeting) has no ``case_id``.
    """

    id: str = Field(alias="_id")
    case_id: str | None
    user_id: str
    direction: Direction
    kind: str = Field(default="text", description="LINE message type; only text keeps content")
    text: str | None = None
    at: UtcDatetime
    staff_id: str | None = None
    purpose: str | None = None
    unsent_at: UtcDatetime | None = None
    erased_at: UtcDatetime | None = None
    command_id: str | None = None
    delivery: Delivery | None = None
    delivery_at: UtcDatetime | None = None
    delivery_problem: str | None = None
    delivery_status: int | None = None
    maybe_delivered: bool = False


def incoming_message_id(line_message_id: str) -> str:
    return f"line:{line_message_id}"


def outgoing_message_id(command_id: str, index: int) -> str:
    return f"out:{command_id}:{index}"


async def record_outgoing(
    store_db: Any, command: SendText, *, at: datetime, delivery: dict[str, Any]
) -> None:
    """Keep the texts of ``command`` in the conversation, one message per text.

    What the message says is written only by whoever records it first (console or dispatch, in
    either order); ``delivery`` (``{"delivery": "sent", …}``) is written on every call, except
    that ``{"delivery": "sending"}`` alone never overwrites a state already recorded.
    """
    initial_only = set(delivery) == {"delivery"} and delivery["delivery"] == "sending"
    for index, text in enumerate(command.texts):
        message = StoredMessage(
            id=outgoing_message_id(command.id, index),
            case_id=command.case_id,
            user_id=command.to,
            direction="out",
            text=text,
            at=at,
            staff_id=command.staff_id,
            purpose=command.purpose,
            command_id=command.id,
        )
        doc = message.to_document()
        message_id = doc.pop("_id")
        update: dict[str, Any]
        if initial_only:
            update = {"$setOnInsert": {**doc, **delivery}}
        else:
            update = {
                "$setOnInsert": {k: v for k, v in doc.items() if k not in delivery},
                "$set": delivery,
            }
        try:
            await store_db[MESSAGES].update_one({"_id": message_id}, update, upsert=True)
        except DuplicateKeyError:  # a concurrent upsert of the other writer inserted it first
            await store_db[MESSAGES].update_one({"_id": message_id}, update, upsert=True)


INDEXES = (
    IndexSpec(USERS, (("registered", 1), ("eligible", 1)), name="audience"),
    IndexSpec(CASES, (("state", 1), ("urgent", -1), ("waiting_since", 1)), name="queue"),
    IndexSpec(CASES, (("user_id", 1), ("opened_at", -1)), name="user_cases"),
    IndexSpec(MESSAGES, (("case_id", 1), ("at", 1)), name="conversation"),
    IndexSpec(MESSAGES, (("at", 1),), name="retention"),
    IndexSpec(LEASES, (("expires_at", 1),), name="expiry"),
    IndexSpec(REPLY_TOKENS, (("user_id", 1), ("received_at", -1)), name="user_latest"),
)


# -- reply tokens: "one reply per token, whoever sends it" ---------------------------------------
#
# A reply token answers one event once, for free (replies do not count against the month's
# messages), within about a minute. Triage records the token of each student message
# (:func:`record_reply_token`); a counselor's reply takes the student's latest unclaimed one
# (:func:`latest_reply_token`); and dispatch, before it tries any reply (automatic or counselor's),
# claims the token for that command (:func:`claim_reply_token`). The claim is one write on the
# token's unique ``_id``, so of two commands carrying the same token exactly one replies and the
# other pushes. A claimed document keeps only the token's hash.


def reply_token_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def record_reply_token(
    store_db: Any, token: str, *, user_id: str, received_at: datetime, message_id: str
) -> None:
    """Keep a student message's reply token, unclaimed (a repeat changes nothing)."""
    doc = {
        "user_id": user_id,
        "token": token,
        "received_at": received_at,
        "message_id": message_id,
        "claimed_by": None,
    }
    await store_db[REPLY_TOKENS].update_one(
        {"_id": reply_token_key(token)}, {"$setOnInsert": doc}, upsert=True
    )


async def latest_reply_token(store_db: Any, user_id: str) -> tuple[str, datetime] | None:
    """The reply token of the user's latest message that no command has claimed, and when it
    was received; None if there is none. Whether it is still young enough is dispatch's call."""
    docs = (
        await store_db[REPLY_TOKENS]
        .find({"user_id": user_id, "claimed_by": None})
        .sort("received_at", -1)
        .limit(1)
        .to_list()
    )
    if not docs or not docs[0].get("token"):
        return None
    return str(docs[0]["token"]), docs[0]["received_at"]


async def claim_reply_token(
    store_db: Any, token: str, command_id: str, *, now: datetime | None = None
) -> bool:
    """Claim ``token`` for ``command_id``: True if it is this command's (now or from an earlier
    delivery of the same command), False if another command claimed it first."""
    try:
        await store_db[REPLY_TOKENS].update_one(
            {"_id": reply_token_key(token), "claimed_by": {"$in": [None, command_id]}},
            {
                "$set": {"claimed_by": command_id, "claimed_at": now or utcnow()},
                "$unset": {"token": ""},
            },
            upsert=True,
        )
    except DuplicateKeyError:
        return False
    return True


async def forget_reply_tokens(store_db: Any, before: datetime) -> int:
    """Drop the tokens received (or, for those triage did not record, claimed) before
    ``before``: long expired."""
    result = await store_db[REPLY_TOKENS].delete_many(
        {"$or": [{"received_at": {"$lt": before}}, {"claimed_at": {"$lt": before}}]}
    )
    return int(result.deleted_count)


# -- leases: "once, even with several replicas" -------------------------------------------------


async def acquire_lease(
    store_db: Any, name: str, holder: str, ttl: timedelta, *, now: datetime | None = None
) -> bool:
    """Take (or renew) the lease ``name`` for ``holder`` if it is free or expired.

    Used for work that must run once across replicas (a scheduled broadcast, the monthly
    report). The lease document's ``_id`` is ``name``; two replicas racing for a free lease
    both try to insert it and the store's unique ``_id`` lets only one win.
    """
    now = now or utcnow()
    leases = store_db[LEASES]
    taken = await leases.find_one_and_update(
        {"_id": name, "$or": [{"holder": holder}, {"expires_at": {"$lte": now}}]},
        {"$set": {"holder": holder, "expires_at": now + ttl, "acquired_at": now}},
        return_document=ReturnDocument.AFTER,
    )
    if taken is not None:
        return True
    try:
        await leases.insert_one(
            {"_id": name, "holder": holder, "expires_at": now + ttl, "acquired_at": now}
        )
    except DuplicateKeyError:
        return False
    return True


async def release_lease(store_db: Any, name: str, holder: str) -> None:
    await store_db[LEASES].delete_one({"_id": name, "holder": holder})


# -- read marks: "既読 when, and only when, a counselor has read it" ----------------------------
#
# Each student message carries LINE's ``markAsReadToken`` (no expiry; marking one marks it and
# every earlier message of the chat as read). Triage keeps it on the message document under
# :data:`READ_TOKEN` (not a field of ``StoredMessage``, so no page, log or fact ever shows it).
# When a counselor has the conversation in front of them, the console takes the case's newest
# message still carrying one (:func:`newest_unread`) for a ``MarkRead``; dispatch, once LINE took
# the mark, stamps ``read_at`` on that message and on every earlier one of the student and drops
# their tokens (:func:`record_read`). A message without a token is read (or came before tokens).

READ_TOKEN = "read_token"  # noqa: S105 - a field name, not a secret


async def newest_unread(store_db: Any, case_id: str) -> tuple[str, str, str] | None:
    """(message id, user id, read token) of the case's newest message not marked read yet."""
    docs = (
        await store_db[MESSAGES]
        .find({"case_id": case_id, "direction": "in", READ_TOKEN: {"$type": "string"}})
        .sort("at", -1)
        .limit(1)
        .to_list()
    )
    if not docs:
        return None
    doc = docs[0]
    return str(doc["_id"]), str(doc["user_id"]), str(doc[READ_TOKEN])


async def read_by(store_db: Any, message_id: str) -> str | None:
    """The command whose read mark covered ``message_id`` (``""`` when it is read but no
    command is named); None while it is not marked read."""
    doc = await store_db[MESSAGES].find_one({"_id": message_id}, {"read_at": 1, "read_by": 1})
    if doc is None or doc.get("read_at") is None:
        return None
    return str(doc.get("read_by") or "")


async def record_read(store_db: Any, message_id: str, *, at: datetime, command_id: str) -> int:
    """LINE marked ``message_id`` read, for ``command_id``: so are the student's earlier
    messages. How many of the student's messages this newly marks (0 when already recorded)."""
    doc = await store_db[MESSAGES].find_one({"_id": message_id}, {"user_id": 1, "at": 1})
    if doc is None:
        return 0
    result = await store_db[MESSAGES].update_many(
        {
            "user_id": doc["user_id"],
            "direction": "in",
            "at": {"$lte": doc["at"]},
            READ_TOKEN: {"$type": "string"},
        },
        {"$set": {"read_at": at, "read_by": command_id}, "$unset": {READ_TOKEN: ""}},
    )
    return int(result.modified_count)


async def forget_read_token(store_db: Any, message_id: str) -> None:
    """LINE refused the message's read token for good: never try it again."""
    await store_db[MESSAGES].update_one({"_id": message_id}, {"$unset": {READ_TOKEN: ""}})
