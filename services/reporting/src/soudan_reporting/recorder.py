"""The recorder: every fact published by any service, stored once in MongoDB ``events``.

The monthly report is built from this log alone, so each fact is stored with its Tokyo month,
day, weekday and hour: reports group by them without date arithmetic in the database.
"""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from pymongo.errors import DuplicateKeyError
from soudan_shared.contracts import Fact, utcnow
from soudan_shared.store import IndexSpec

TOKYO = ZoneInfo("Asia/Tokyo")
EVENTS = "events"

INDEXES = (
    IndexSpec(EVENTS, (("type", 1), ("at", 1)), name="type_at"),
    IndexSpec(EVENTS, (("jst.month", 1), ("type", 1)), name="month_type"),
)


def event_document(fact: Fact) -> dict[str, Any]:
    local = fact.at.astimezone(TOKYO)
    return {
        "_id": fact.id,
        "type": fact.type,
        "at": fact.at,
        "service": fact.service,
        "data": fact.data,
        "correlation_id": fact.correlation_id,
        "schema": fact.schema_version,
        "jst": {
            "month": local.strftime("%Y-%m"),
            "day": local.strftime("%Y-%m-%d"),
            "weekday": local.isoweekday(),
            "hour": local.hour,
        },
        "recorded_at": utcnow(),
    }


async def record_fact(events: Any, fact: Fact) -> bool:
    """Store ``fact``; return False when it was already recorded (a redelivery)."""
    try:
        await events.insert_one(event_document(fact))
    except DuplicateKeyError:
        return False
    return True
