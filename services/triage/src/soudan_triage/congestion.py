"""Congestion (運営要領 第5(2)): measured from the store against ``congestion.yaml``'s limits.

Three figures, each with its limit; the service is congested while any one is over it:

- **waiting**: cases waiting for a counselor (``state == "waiting"``);
- **oldest wait**: how long the first of them has waited;
- **estimated wait**: how long a new case would wait: ``waiting × minutes per case ÷
  counselors``.

The estimate needs two things the store only partly knows until the console records who is on
duty:

- *counselors*: the counselors holding an active case right now (distinct ``claimed_by``); when
  nobody holds one, ``estimate.counselors`` from ``congestion.yaml`` (2 by default);
- *minutes per case*: the median time from claim to close of the cases closed in the last
  7 days (the 50 most recent); with fewer than :data:`MIN_CLOSED_FOR_MEDIAN` such cases,
  ``estimate.minutes_per_case`` (30 by default).
"""

from __future__ import annotations

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
    return Congestion(waiting, oldest_wait_seconds, estimated, counselors_on_cases, congested)


async def measure(
    db: Any, config: CongestionConfig, now: datetime, *, exclude_case: str | None = None
) -> Congestion:
    """Count from the store; ``exclude_case`` (the case being opened) is not counted."""
    cases = db[CASES]
    waiting_query: dict[str, Any] = {"state": "waiting"}
    if exclude_case is not None:
        waiting_query["_id"] = {"$ne": exclude_case}
    waiting = await cases.count_documents(waiting_query)
    oldest_wait = 0
    if waiting:
        first = (
            await cases.find(waiting_query, {"waiting_since": 1})
            .sort("waiting_since", 1)
            .limit(1)
            .to_list()
        )
        if first:
            oldest_wait = max(0, int((now - first[0]["waiting_since"]).total_seconds()))
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
