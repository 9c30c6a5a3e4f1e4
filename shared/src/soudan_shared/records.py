"""Documents more than one service reads or writes: users, cases, messages, leases.

Triage writes users, cases and incoming messages; the console reads them, claims and closes
cases and writes counselors' replies; dispatch reads users for broadcasts. The shape of these
documents is therefore a contract like a bus message, defined here once. A service's private
collections (triage's processed events, the console's staff and sessions, dispatch's broadcast
progress, reporting's ``events``) stay in that service.

Documents are stored with ``model_dump()`` (times stay ``datetime``, UTC) and read back with
``Model.model_validate(doc)``; unknown fields are ignored on read so a newer writer does not
break an older reader.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from soudan_shared.contracts import UtcDatetime, new_id, utcnow
from soudan_shared.store import IndexSpec

USERS = "users"
CASES = "cases"
MESSAGES = "messages"
LEASES = "leases"

CaseState = Literal["waiting", "active", "closed"]
Direction = Literal["in", "out"]


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
    category: str | None = None
    outcome: str | None = None
    congestion_replied: bool = False


class StoredMessage(Record):
    """One message of a case, either way. Incoming ones are keyed by LINE's message id.

    ``text`` is None once erased: unsent by the student (``unsent_at``) or past retention
    (``erased_at``); the record that a message existed stays.
    """

    id: str = Field(alias="_id")
    case_id: str
    user_id: str
    direction: Direction
    kind: str = Field(default="text", description="LINE message type; only text keeps content")
    text: str | None = None
    at: UtcDatetime
    staff_id: str | None = None
    purpose: str | None = None
    unsent_at: UtcDatetime | None = None
    erased_at: UtcDatetime | None = None


def incoming_message_id(line_message_id: str) -> str:
    return f"line:{line_message_id}"


INDEXES = (
    IndexSpec(USERS, (("registered", 1), ("eligible", 1)), name="audience"),
    IndexSpec(CASES, (("state", 1), ("urgent", -1), ("waiting_since", 1)), name="queue"),
    IndexSpec(CASES, (("user_id", 1), ("opened_at", -1)), name="user_cases"),
    IndexSpec(MESSAGES, (("case_id", 1), ("at", 1)), name="conversation"),
    IndexSpec(MESSAGES, (("at", 1),), name="retention"),
    IndexSpec(LEASES, (("expires_at", 1),), name="expiry"),
)


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
