"""Retention: message texts older than the configured period are erased, once a day.

The erasure keeps every message record (who wrote, when, in which case, of what kind) and the
facts the monthly report is built from; only ``text`` becomes ``None`` (with ``erased_at``), for
incoming and outgoing messages alike. The same run forgets triage's record of webhook events
older than 30 days (the duplicate check needs them only while LINE may redeliver) and the reply
tokens older than a day (LINE honours them for about a minute). Each run
publishes ``retention.run``.

The job runs inside the service: every replica checks hourly (and at start); the first check of
a Tokyo day that finds no run recorded for that day takes the lease ``triage:retention`` (so two
replicas never run it together), erases, publishes the fact and records the run in
``triage_runs``. Erasing is idempotent, so a run cut short is simply done again.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from pymongo.errors import DuplicateKeyError
from soudan_shared.fact_types import RETENTION_RUN
from soudan_shared.facts import Facts
from soudan_shared.records import MESSAGES, acquire_lease, forget_reply_tokens, release_lease

from soudan_triage.store import KEEP_EVENTS, RUNS, TriageStore

log = structlog.get_logger(__name__)

TOKYO = ZoneInfo("Asia/Tokyo")
LEASE = "triage:retention"
LEASE_TTL = timedelta(hours=1)
CHECK_EVERY = timedelta(hours=1)
KEEP_REPLY_TOKENS = timedelta(days=1)  # LINE honours a reply token for about a minute


def months_before(moment: datetime, months: int) -> datetime:
    """The same day and time ``months`` calendar months earlier (clamped to the month's end)."""
    index = moment.year * 12 + moment.month - 1 - months
    year, month = divmod(index, 12)
    month += 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


async def erase_old_texts(db: Any, *, now: datetime, months: int) -> tuple[int, datetime]:
    """Erase the texts of messages sent before ``months`` months ago; (how many, the cut-off)."""
    cutoff = months_before(now, months)
    result = await db[MESSAGES].update_many(
        {"at": {"$lt": cutoff}, "text": {"$ne": None}},
        {"$set": {"text": None, "erased_at": now}},
    )
    return int(result.modified_count), cutoff


async def run_once(db: Any, facts: Facts, *, now: datetime, months: int, holder: str) -> bool:
    """Run today's retention unless it already ran; True if this call ran it."""
    run_id = f"retention:{now.astimezone(TOKYO).date().isoformat()}"
    if await db[RUNS].find_one({"_id": run_id}) is not None:
        return False
    if not await acquire_lease(db, LEASE, holder, LEASE_TTL, now=now):
        return False
    try:
        if await db[RUNS].find_one({"_id": run_id}) is not None:
            return False
        erased, cutoff = await erase_old_texts(db, now=now, months=months)
        forgotten = await TriageStore(db).forget_events(now - KEEP_EVENTS)
        await forget_reply_tokens(db, now - KEEP_REPLY_TOKENS)
        await facts.publish(
            RETENTION_RUN,
            {
                "erased_messages": erased,
                "older_than": cutoff.isoformat(),
                "months": months,
                "forgotten_events": forgotten,
            },
            cause=run_id,
            at=now,
        )
        with contextlib.suppress(DuplicateKeyError):
            await db[RUNS].insert_one({"_id": run_id, "at": now, "erased_messages": erased})
        log.info("retention_run", erased_messages=erased, older_than=cutoff.isoformat())
        return True
    finally:
        await release_lease(db, LEASE, holder)


async def run_daily(
    db: Any,
    facts: Facts,
    *,
    months: int,
    holder: str,
    clock: Callable[[], datetime],
    ready: Callable[[], bool],
    every: timedelta = CHECK_EVERY,
) -> None:
    """Check now and then every ``every``, for ever (cancel the task to stop)."""
    while True:
        if ready():
            try:
                await run_once(db, facts, now=clock(), months=months, holder=holder)
            except Exception as exc:  # the next check tries again
                log.warning("retention_failed", error=repr(exc)[:300])
            await asyncio.sleep(every.total_seconds())
        else:
            await asyncio.sleep(1)
