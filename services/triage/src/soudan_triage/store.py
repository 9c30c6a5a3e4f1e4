"""Triage's store adapter: the shared users, cases and messages, and triage's own collections.

Triage's own collections:

``triage_events``
    One document per ``webhookEventId`` (the unique ``_id``): ``planned`` with the event's
    :class:`~soudan_triage.plan.Plan` once decided, ``done`` once applied and published (the plan
    is then dropped: it may hold a message text). The daily job forgets them after
    :data:`KEEP_EVENTS`, far longer than LINE redelivers an event.
``triage_users``
    Per-user state the shared ``User`` does not carry: the timestamps of the
    last follow/unfollow and school-type answer (so an older redelivered one cannot override a
    newer one), when the media reply was last sent, which next opening the last out-of-hours
    replies named, and the unsends that arrived before their message (``unsent``: LINE may
    deliver out of order; the message is then stored already erased).
``triage_runs``
    One document per daily job run (``retention:<Tokyo date>``).
"""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta
from typing import Any, Final

from pymongo.errors import DuplicateKeyError
from soudan_shared.contracts import utcnow
from soudan_shared.records import CASES, MESSAGES, USERS, record_reply_token
from soudan_shared.store import IndexSpec

from soudan_triage.plan import Plan

EVENTS: Final = "triage_events"
USER_STATE: Final = "triage_users"
RUNS: Final = "triage_runs"

KEEP_EVENTS = timedelta(days=30)
KEEP_UNSENT = 20  # early unsends remembered per user

INDEXES = (
    IndexSpec(EVENTS, (("created_at", 1),), name="age"),
    # a user's recent messages (the multi-message keyword window)
    IndexSpec(MESSAGES, (("user_id", 1), ("at", -1)), name="triage_user_recent"),
    # recently closed cases (the congestion estimate)
    IndexSpec(CASES, (("state", 1), ("closed_at", -1)), name="triage_recently_closed"),
)

OPEN_STATES: Final = ("waiting", "active")


class TriageStore:
    def __init__(self, db: Any) -> None:
        self.db = db

    # -- the event log ---------------------------------------------------------------------

    async def processed(self, event_id: str) -> dict[str, Any] | None:
        doc: dict[str, Any] | None = await self.db[EVENTS].find_one({"_id": event_id})
        return doc

    async def save_plan(self, event_id: str, event_type: str, plan: Plan) -> bool:
        """Store ``plan`` for ``event_id``; False if the event already has one."""
        try:
            await self.db[EVENTS].insert_one(
                {
                    "_id": event_id,
                    "state": "planned",
                    "event_type": event_type,
                    "outcome": plan.outcome,
                    "plan": plan.to_document(),
                    "created_at": utcnow(),
                }
            )
        except DuplicateKeyError:
            return False
        return True

    async def drop_plan(self, event_id: str) -> None:
        await self.db[EVENTS].delete_one({"_id": event_id, "state": "planned"})

    async def mark_done(self, event_id: str) -> None:
        await self.db[EVENTS].update_one(
            {"_id": event_id},
            {"$set": {"state": "done", "done_at": utcnow()}, "$unset": {"plan": ""}},
        )

    # -- reads for deciding ------------------------------------------------------------------

    async def user(self, user_id: str) -> dict[str, Any] | None:
        doc: dict[str, Any] | None = await self.db[USERS].find_one({"_id": user_id})
        return doc

    async def user_state(self, user_id: str) -> dict[str, Any]:
        doc: dict[str, Any] | None = await self.db[USER_STATE].find_one({"_id": user_id})
        return doc or {}

    async def open_case(self, user_id: str) -> dict[str, Any] | None:
        docs = (
            await self.db[CASES]
            .find({"user_id": user_id, "state": {"$in": list(OPEN_STATES)}})
            .sort("opened_at", -1)
            .limit(1)
            .to_list()
        )
        return docs[0] if docs else None

    async def case(self, case_id: str) -> dict[str, Any] | None:
        doc: dict[str, Any] | None = await self.db[CASES].find_one({"_id": case_id})
        return doc

    async def cases_in_danger(self, user_id: str) -> list[dict[str, Any]]:
        """The user's cases that are open and urgent, or have an emergency open."""
        docs: list[dict[str, Any]] = (
            await self.db[CASES]
            .find(
                {
                    "user_id": user_id,
                    "$or": [
                        {"state": {"$in": list(OPEN_STATES)}, "urgent": True},
                        {"open_emergencies.0": {"$exists": True}},
                    ],
                }
            )
            .sort("opened_at", -1)
            .limit(20)
            .to_list()
        )
        return docs

    async def recent_texts(
        self, user_id: str, *, until: datetime, since: datetime, limit: int, exclude: str
    ) -> list[str]:
        """The user's last ``limit`` texts sent in ``[since, until]``, oldest first."""
        if limit <= 0:
            return []
        docs = (
            await self.db[MESSAGES]
            .find(
                {
                    "user_id": user_id,
                    "direction": "in",
                    "at": {"$gte": since, "$lte": until},
                    "_id": {"$ne": exclude},
                },
                {"text": 1, "kind": 1},
            )
            .sort("at", -1)
            .limit(limit)
            .to_list()
        )
        return [d["text"] for d in reversed(docs) if d.get("kind") == "text" and d.get("text")]

    async def message(self, message_id: str) -> dict[str, Any] | None:
        doc: dict[str, Any] | None = await self.db[MESSAGES].find_one({"_id": message_id})
        return doc

    async def forget_events(self, before: datetime) -> int:
        result = await self.db[EVENTS].delete_many({"created_at": {"$lt": before}})
        return int(result.deleted_count)

    # -- applying a plan -----------------------------------------------------------------------

    async def apply(self, plan: Plan, *, guard_case: bool = True) -> bool:
        """Apply ``plan`` (idempotent).

        With ``guard_case``, returns False, having changed nothing but the user, when the case
        the plan appends to was closed in the meantime (the caller decides again). Without it
        (replaying a plan that may have been applied in part) the case is updated whatever its
        state."""
        if plan.user_id and (plan.user_set or plan.user_insert):
            update: dict[str, Any] = {}
            if plan.user_set:
                update["$set"] = plan.user_set
            if plan.user_insert:
                update["$setOnInsert"] = plan.user_insert
            await self.db[USERS].update_one({"_id": plan.user_id}, update, upsert=True)
        if plan.case_insert is not None:
            await _insert_once(self.db[CASES], plan.case_insert)
        elif plan.case_id and (plan.case_set or plan.case_keywords or plan.case_risks):
            case_update: dict[str, Any] = {}
            if plan.case_set:
                case_update["$set"] = plan.case_set
            added: dict[str, Any] = {}
            if plan.case_keywords:
                added["keywords"] = {"$each": plan.case_keywords}
            if plan.case_risks:
                added["risks"] = {"$each": plan.case_risks}
            if added:
                case_update["$addToSet"] = added
            query: dict[str, Any] = {"_id": plan.case_id}
            if guard_case:
                query["state"] = {"$ne": "closed"}
            result = await self.db[CASES].update_one(query, case_update)
            if result.matched_count == 0 and guard_case:
                return False
        if plan.message_insert is not None:
            await _insert_once(self.db[MESSAGES], plan.message_insert)
        if plan.message_unsend is not None:
            await self.db[MESSAGES].update_one(
                {"_id": plan.message_unsend["_id"]},
                {"$set": {"text": None, "unsent_at": plan.message_unsend["unsent_at"]}},
            )
        if plan.checkin_answer is not None:
            answer = plan.checkin_answer
            await self.db[CASES].update_one(
                {"_id": answer["case_id"], "checkin.state": "sent", "checkin.answer": None},
                {
                    "$set": {
                        "checkin.answer": answer["answer"],
                        "checkin.answer_label": answer["answer_label"],
                        "checkin.answered_at": answer["at"],
                    }
                },
            )
        for left in plan.departures:
            departure = left["departure"]
            await self.db[CASES].update_one(
                {"_id": left["case_id"], "departure.event_id": {"$ne": departure["event_id"]}},
                {"$set": {"departure": departure}},
            )
        if plan.user_id and plan.reply_token is not None:
            await record_reply_token(self.db, user_id=plan.user_id, **plan.reply_token)
        if plan.user_id and (plan.state_set or plan.state_max):
            state_update: dict[str, Any] = {}
            if plan.state_set:
                state_update["$set"] = plan.state_set
            if plan.state_max:
                state_update["$max"] = plan.state_max
            await self.db[USER_STATE].update_one({"_id": plan.user_id}, state_update, upsert=True)
        return True


async def _insert_once(collection: Any, document: dict[str, Any]) -> None:
    with contextlib.suppress(DuplicateKeyError):
        await collection.insert_one(dict(document))
