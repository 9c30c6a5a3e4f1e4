"""Congestion (運営要領 第5(2)): measured from the store against ``congestion.yaml``'s limits.

Three figures, each with its limit; the service is congested while any one is over it:

- **waiting**: cases waiting for a counselor (``state == "waiting"``);
- **oldest wait**: how long the first of them has waited;
- **estimated wait**: how long a new case would wait: ``waiting × minutes per case ÷
  counselors``.

The estimate needs two things the store only partly knows until the console records who is on
duty:

- *counselors*: the counselors holding an active case right now (distinct ``claimed_by``); when
  nobody holds one, ``estimate.counselors`` from ``congestion.yaml`` (4 by default);
- *minutes per case*: the median time from claim to close of the cases closed in the last
  7 days (the 50 most recent); with fewer than :data:`MIN_CLOSED_FOR_MEDIAN` such cases,
  ``estimate.minutes_per_case`` (40 by default).

What a student is told of the wait (the congestion reply, the wait notice) comes from the same
estimate, for the cases waiting *before them* in the queue (:func:`ahead_of`), written by
:func:`wait_phrase`: always rounded up, so the student is never told less than the estimate
(and the text says "may", never a promise).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from soudan_shared.config import CongestionConfig
from soudan_shared.records import CASES

MIN_CLOSED_FOR_MEDIAN = 5
RECENT_CLOSED = 50
RECENT_DAYS = 7


@dataclass(frozen=True)
class Congestion:
    waiting: int
    oldest_wait_seconds: int
    estimated_wait_seconds: int
    active_counselors: int
    congested: bool
    #: what the estimate assumed (for the wait of a given place in the queue: :meth:`wait_for`)
    counselors: int = 1
    minutes_per_case: float = 0.0

    def wait_for(self, ahead: int) -> int:
        """The estimated wait, in seconds, of a student with ``ahead`` cases before them."""
        return round(ahead * self.minutes_per_case * 60 / self.counselors)

    def fact_data(self) -> dict[str, Any]:
        return {
            "waiting": self.waiting,
            "oldest_wait_seconds": self.oldest_wait_seconds,
            "estimated_wait_seconds": self.estimated_wait_seconds,
            "active_counselors": self.active_counselors,
            "congested": self.congested,
        }


def evaluate(
    config: CongestionConfig,
    *,
    waiting: int,
    oldest_wait_seconds: int,
    counselors_on_cases: int,
    minutes_per_case: float | None,
) -> Congestion:
    """The figures and the verdict, from what was counted (pure)."""
    counselors = counselors_on_cases or config.estimate.counselors
    minutes = minutes_per_case if minutes_per_case is not None else config.estimate.minutes_per_case
    estimated = round(waiting * minutes * 60 / counselors)
    limits = config.limits
    congested = (
        waiting > limits.max_waiting_cases
        or oldest_wait_seconds > limits.max_oldest_wait_minutes * 60
        or estimated > limits.max_estimated_wait_minutes * 60
    )
    return Congestion(
        waiting,
        oldest_wait_seconds,
        estimated,
        counselors_on_cases,
        congested,
        counselors=counselors,
        minutes_per_case=minutes,
    )


async def measure(
    db: Any, config: CongestionConfig, now: datetime, *, exclude_case: str | None = None
) -> Congestion:
    """Count from the store; ``exclude_case`` (the case being opened) is not counted."""
    cases = db[CASES]
    waiting_query: dict[str, Any] = {"state": "waiting"}
    if exclude_case is not None:
        waiting_query["_id"] = {"$ne": exclude_case}
    # how many wait and since when the first of them, in one round trip
    counted = await (
        await cases.aggregate(
            [
                {"$match": waiting_query},
                {
                    "$group": {
                        "_id": None,
                        "waiting": {"$sum": 1},
                        "since": {"$min": "$waiting_since"},
                    }
                },
            ]
        )
    ).to_list()
    waiting = int(counted[0]["waiting"]) if counted else 0
    oldest_wait = 0
    if counted and counted[0].get("since") is not None:
        oldest_wait = max(0, int((now - counted[0]["since"]).total_seconds()))
    holders = await cases.distinct("claimed_by", {"state": "active"})
    closed = (
        await cases.find(
            {"state": "closed", "closed_at": {"$gte": now - timedelta(days=RECENT_DAYS)}},
            {"claimed_at": 1, "closed_at": 1},
        )
        .sort("closed_at", -1)
        .limit(RECENT_CLOSED)
        .to_list()
    )
    durations = [
        (doc["closed_at"] - doc["claimed_at"]).total_seconds() / 60
        for doc in closed
        if doc.get("claimed_at") and doc.get("closed_at")
    ]
    minutes = statistics.median(durations) if len(durations) >= MIN_CLOSED_FOR_MEDIAN else None
    return evaluate(
        config,
        waiting=waiting,
        oldest_wait_seconds=oldest_wait,
        counselors_on_cases=len([h for h in holders if h]),
        minutes_per_case=minutes,
    )


async def ahead_of(db: Any, case: dict[str, Any]) -> int:
    """How many waiting cases the console's queue puts before ``case`` (urgent first, then the
    longest wait)."""
    cases = db[CASES]
    earlier = {"state": "waiting", "waiting_since": {"$lt": case["waiting_since"]}}
    if case.get("urgent"):
        return int(await cases.count_documents({**earlier, "urgent": True}))
    urgent = await cases.count_documents(
        {"state": "waiting", "urgent": True, "_id": {"$ne": case["_id"]}}
    )
    older = await cases.count_documents({**earlier, "urgent": {"$ne": True}})
    return int(urgent + older)


def wait_phrase(seconds: int) -> str:
    """The estimated wait as a student reads it, rounded *up* (never less than the estimate):
    to 5 minutes up to half an hour, to 10 up to an hour, to half an hour up to three hours,
    then 「3時間以上」. 「20分ほど」, 「1時間30分ほど」."""
    minutes = max(1, math.ceil(seconds / 60))
    if minutes <= 30:
        minutes = math.ceil(minutes / 5) * 5
    elif minutes <= 60:
        minutes = math.ceil(minutes / 10) * 10
    elif minutes <= 180:
        minutes = math.ceil(minutes / 30) * 30
    else:
        return "3時間以上"
    hours, rest = divmod(minutes, 60)
    if hours and rest:
        return f"{hours}時間{rest}分ほど"
    if hours:
        return f"{hours}時間ほど"
    return f"{rest}分ほど"


def wait_text(template: str, *, ahead: int, seconds: int) -> str:
    """``template`` (``{ahead}``, ``{wait}``, either optional) for a student's place in line."""
    return template.format(ahead=ahead, wait=wait_phrase(seconds))
