"""The recorder: every fact published by any service, stored once in MongoDB ``events``.

The monthly report is built from this log alone, so each fact is stored with its Tokyo month,
day, weekday and hour: reports group by them without date arithmetic in the database.

Facts come in bursts (one student message causes two to four of them, published together), so
the bus's handler does not write each one alone: :class:`FactRecorder` gathers the facts whose
handlers are waiting and writes them with one unordered ``insert_many``. Each handler still
returns (and its message is acknowledged) only after the write that holds its fact was
acknowledged by the store; a fact already recorded (a redelivery: facts are idempotent by id) is
a duplicate-key error for that document alone, which is the answer "already recorded"; any other
failure fails the handlers of the documents it concerns, and the bus tries them again.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final
from zoneinfo import ZoneInfo

from pymongo.errors import BulkWriteError, DuplicateKeyError
from soudan_shared.contracts import Fact, utcnow
from soudan_shared.store import IndexSpec

TOKYO = ZoneInfo("Asia/Tokyo")
EVENTS = "events"
DUPLICATE_KEY: Final = 11000
MAX_BATCH: Final = 256

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


async def record_facts(events: Any, facts: list[Fact]) -> list[bool | BaseException]:
    """Store ``facts`` in one round trip: per fact True (stored now), False (already recorded)
    or the error that kept it from being stored. A write-concern error (the store may not keep
    what it took) is raised for all of them."""
    documents = [event_document(fact) for fact in facts]
    try:
        await events.insert_many(documents, ordered=False)
    except BulkWriteError as exc:
        details = exc.details or {}
        if details.get("writeConcernErrors"):
            raise
        failed: dict[int, bool | BaseException] = {}
        for error in details.get("writeErrors", []):
            index = int(error["index"])
            if error.get("code") == DUPLICATE_KEY:
                failed[index] = False
            else:
                failed[index] = RuntimeError(
                    f"fact not recorded: code {error.get('code')}: {error.get('errmsg', '')}"[:300]
                )
        return [failed.get(i, True) for i in range(len(documents))]
    return [True] * len(documents)


class FactRecorder:
    """Records facts in batches: ``await recorder.record(fact)`` returns once its fact is
    stored (True) or found already recorded (False), and raises if it could not be stored.

    The facts handed over while a batch is being written wait for the next one, so a quiet
    service writes each fact at once and a busy one writes many per round trip."""

    def __init__(self, events: Any, *, max_batch: int = MAX_BATCH) -> None:
        self.events = events
        self.max_batch = max_batch
        self._waiting: list[tuple[Fact, asyncio.Future[bool]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def record(self, fact: Fact) -> bool:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((fact, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name="fact-recorder")
        return await future

    async def _write(self) -> None:
        while self._waiting:
            await asyncio.sleep(0)  # the deliveries that came in the same read join this batch
            batch = self._waiting[: self.max_batch]
            del self._waiting[: self.max_batch]
            batch = [(fact, future) for fact, future in batch if not future.done()]
            if not batch:
                continue
            try:
                outcomes = await record_facts(self.events, [fact for fact, _ in batch])
            except Exception as exc:  # handed to every waiting handler
                outcomes = [exc] * len(batch)
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():  # its handler was cancelled meanwhile
                    continue
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
