"""Broadcasts (運営要領 第5(3)): the section's announcements to every registered user, once each.

A ``StartBroadcast`` goes through three stored stages, so that a crash at any point resumes
where it stopped and no user receives the announcement twice:

1. **Plan.** The audience (registered users; for ``target_group`` not those known to be outside
   it) is read from ``users`` and written as chunks of 500 ids to :data:`CHUNKS` (never changed
   afterwards), then the broadcast document in :data:`BROADCASTS` is marked ``planned`` with the
   chunk count. A crash while planning leaves it unplanned: the chunks are written again before
   anything is sent. Users who register after planning are not added; users who leave stay in
   their chunk (LINE does not deliver to a blocked user).
2. **Send.** Each chunk not yet done is one ``multicast`` with ``X-Line-Retry-Key`` derived from
   the broadcast id and the chunk number, paced under LINE's 200 requests/s, and recorded
   ``sent`` in :data:`PROGRESS` (a small document per chunk) once LINE accepted it. A chunk sent
   but not recorded (a crash, a lost answer) is sent again with the same key after the restart;
   LINE answers 409 and it counts as sent.
3. **Finish.** Every chunk sent or failed: ``finished``, with recipients and failures.

Before planning, the month's quota is checked (``quota`` and ``quota/consumption``, see
:mod:`soudan_dispatch.quota`); a broadcast, manual or scheduled, that would exceed the target limit
or leave less than the reserve kept for conversations (``LINE_MONTHLY_RESERVE``) is refused with
its reason (``broadcast.refused``) unless ``force`` is set. With ``method: broadcast`` LINE's
``broadcast`` endpoint is used instead: one request to every friend of the account, limited by
LINE to 60 an hour (for ``registered`` only, since LINE cannot tell the target group).

Transient failures (429, 5xx, no answer) are tried again with backoff; a chunk that still fails
stops the broadcast with an exception, so the bus redelivers it later and it resumes (until the
queue's delivery limit dead-letters it). A chunk LINE refuses outright (400) is marked
``failed`` and counted in ``failures``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import structlog
from soudan_shared.contracts import StartBroadcast, utcnow
from soudan_shared.fact_types import (
    BROADCAST_CHUNK_SENT,
    BROADCAST_FINISHED,
    BROADCAST_REFUSED,
    BROADCAST_STARTED,
)
from soudan_shared.facts import Facts
from soudan_shared.records import USERS
from soudan_shared.store import IndexSpec

from soudan_dispatch.line import LineClient, LineError, LineResult, retry_key
from soudan_dispatch.quota import read_budget
from soudan_dispatch.sending import Backoff, report_api_error, with_backoff

log = structlog.get_logger(__name__)

BROADCASTS = "dispatch_broadcasts"
CHUNKS = "dispatch_broadcast_chunks"
PROGRESS = "dispatch_broadcast_progress"
CHUNK_SIZE = 500
INDEXES = (
    IndexSpec(CHUNKS, (("broadcast_id", 1), ("n", 1)), name="broadcast_chunks"),
    IndexSpec(PROGRESS, (("broadcast_id", 1),), name="broadcast_progress"),
)


def audience_query(audience: str) -> dict[str, Any]:
    """Who receives a broadcast: every registered user, or not those known to be outside the
    target group (``eligible`` False; a user who has not answered the question is included)."""
    query: dict[str, Any] = {"registered": True}
    if audience == "target_group":
        query["eligible"] = {"$ne": False}
    return query


def chunk_id(broadcast_id: str, n: int) -> str:
    return f"{broadcast_id}:{n:06d}"


class Pacer:
    """Spaces calls at most ``rate`` per second (a start time per call, in order)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self._next = 0.0

    async def wait(self) -> None:
        now = time.monotonic()
        slot = max(now, self._next)
        self._next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


def _described(command: StartBroadcast) -> dict[str, Any]:
    """What the console lists a broadcast it did not request by (a scheduled one)."""
    return {
        "requested_by": command.requested_by,
        "template": command.template,
        "texts_digest": command.texts_digest,
    }


class BroadcastRefused(Exception):
    pass


class Broadcaster:
    """The handler of ``StartBroadcast``."""

    def __init__(
        self,
        line: LineClient,
        store_db: Any,
        facts: Facts,
        *,
        backoff: Backoff,
        rate: float = 180.0,
        concurrency: int = 16,
        reserve: int | None = None,
        after: Callable[[], Awaitable[Any]] | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.line = line
        self.db = store_db
        self.broadcasts = store_db[BROADCASTS]
        self.chunks = store_db[CHUNKS]
        self.progress = store_db[PROGRESS]
        self.facts = facts
        self.backoff = backoff
        self.rate = rate
        self.concurrency = concurrency
        self.reserve = reserve
        self.after = after  # called once a broadcast finished (reads the budget again)
        self.clock = clock

    async def handle(self, command: StartBroadcast) -> None:
        bid = command.broadcast_id
        log.info("broadcast_handling", broadcast_id=bid, audience=command.audience)
        doc = await self.broadcasts.find_one({"_id": bid})
        if doc is not None and doc.get("state") == "finished":
            await self._publish_finished(command, doc)
            return
        if doc is not None and doc.get("state") == "refused" and not command.force:
            await self._publish_refused(command, str(doc.get("reason")))
            return
        if doc is None or doc.get("state") in ("planning", "refused"):
            try:
                doc = await self._plan(command)
            except BroadcastRefused as refused:
                await self._publish_refused(command, str(refused))
                return
        if command.method == "broadcast":
            await self._send_broadcast(command, doc)
        else:
            await self._send_chunks(command, doc)
        doc = await self._finish(command)
        await self._publish_finished(command, doc)
        if self.after is not None:
            await self.after()

    # -- plan ---------------------------------------------------------------------------------

    async def _plan(self, command: StartBroadcast) -> dict[str, Any]:
        bid = command.broadcast_id
        now = self.clock()
        if command.method == "broadcast" and command.audience != "registered":
            await self._refuse(
                command,
                "LINEの「全員への一斉送信」は友だち全員に届くため、"
                "対象の学校の生徒だけに送ることはできません。",
            )
        await self.broadcasts.update_one(
            {"_id": bid},
            {
                "$set": {
                    "state": "planning",
                    "audience": command.audience,
                    "method": command.method,
                    "messages": len(command.texts),
                    "requested_by": command.requested_by,
                    "force": command.force,
                    "updated_at": now,
                },
                "$setOnInsert": {"created_at": now},
            },
            upsert=True,
        )
        users = self.db[USERS]
        planned = await users.count_documents(audience_query(command.audience))
        await self._check_quota(command, planned)
        await self.chunks.delete_many({"broadcast_id": bid})
        await self.progress.delete_many({"broadcast_id": bid})
        chunks = 0
        if command.method == "multicast":
            chunks = await self._write_chunks(command)
            planned = await self._planned_recipients(bid)
        doc = {
            "state": "planned",
            "planned": planned,
            "chunks": chunks,
            "planned_at": self.clock(),
            "updated_at": self.clock(),
        }
        await self.broadcasts.update_one({"_id": bid}, {"$set": doc})
        await self.facts.publish(
            BROADCAST_STARTED,
            {
                "broadcast_id": bid,
                "audience": command.audience,
                "method": command.method,
                "planned": planned,
                "chunks": chunks,
                "forced": command.force,
                **_described(command),
            },
            cause=bid,
            correlation_id=command.correlation_id,
        )
        log.info("broadcast_planned", broadcast_id=bid, planned=planned, chunks=chunks)
        found: dict[str, Any] | None = await self.broadcasts.find_one({"_id": bid})
        assert found is not None
        return found

    async def _write_chunks(self, command: StartBroadcast) -> int:
        bid = command.broadcast_id
        # Any order will do: the chunks are written once, before anything is sent.
        cursor = self.db[USERS].find(audience_query(command.audience), {"_id": 1})
        batch: list[dict[str, Any]] = []
        ids: list[str] = []
        n = 0

        async def flush() -> None:
            if batch:
                await self.chunks.insert_many(list(batch), ordered=False)
                batch.clear()

        async for user in cursor:
            ids.append(user["_id"])
            if len(ids) == CHUNK_SIZE:
                batch.append(self._chunk(bid, n, ids))
                n += 1
                ids = []
                if len(batch) >= 50:
                    await flush()
        if ids:
            batch.append(self._chunk(bid, n, ids))
            n += 1
        await flush()
        return n

    @staticmethod
    def _chunk(bid: str, n: int, ids: list[str]) -> dict[str, Any]:
        return {
            "_id": chunk_id(bid, n),
            "broadcast_id": bid,
            "n": n,
            "to": ids,
            "size": len(ids),
        }

    async def _planned_recipients(self, bid: str) -> int:
        total = 0
        async for chunk in self.chunks.find({"broadcast_id": bid}, {"size": 1}):
            total += int(chunk["size"])
        return total

    async def _check_quota(self, command: StartBroadcast, planned: int) -> None:
        try:
            budget = await read_budget(self.line, self.reserve)
        except LineError as exc:
            if command.force:
                log.warning("broadcast_quota_unknown_forced", status=exc.status)
                return
            log.warning("broadcast_quota_unreadable", status=exc.status)
            await self._refuse(
                command,
                "今月の残り通数をLINEから読み取れなかったため送りませんでした。"
                "しばらくしてから、もう一度ためしてください。",
            )
            return
        reason = budget.refusal(planned)
        if reason is None:
            return
        if command.force:
            log.warning("broadcast_over_budget_forced", planned=planned, remaining=budget.remaining)
            return
        await self._refuse(command, reason)

    async def _refuse(self, command: StartBroadcast, reason: str) -> None:
        await self.broadcasts.update_one(
            {"_id": command.broadcast_id},
            {
                "$set": {"state": "refused", "reason": reason, "updated_at": self.clock()},
                "$setOnInsert": {"created_at": self.clock()},
            },
            upsert=True,
        )
        raise BroadcastRefused(reason)

    # -- send ---------------------------------------------------------------------------------

    async def _send_chunks(self, command: StartBroadcast, doc: dict[str, Any]) -> None:
        bid = command.broadcast_id
        await self.broadcasts.update_one(
            {"_id": bid, "state": {"$in": ["planned", "sending"]}},
            {"$set": {"state": "sending", "updated_at": self.clock()}},
        )
        pacer = Pacer(self.rate)
        gate = asyncio.Semaphore(self.concurrency)
        done = {p["_id"] async for p in self.progress.find({"broadcast_id": bid}, {"_id": 1})}
        chunks = self.chunks.find({"broadcast_id": bid}).sort("n", 1)
        tasks: list[asyncio.Task[None]] = []
        failed = asyncio.Event()

        def settled(task: asyncio.Task[None]) -> None:
            gate.release()
            if task.cancelled() or task.exception() is not None:
                failed.set()

        try:
            async for chunk in chunks:
                if chunk["_id"] in done:
                    continue
                await gate.acquire()
                if failed.is_set():
                    gate.release()
                    break
                await pacer.wait()
                task = asyncio.create_task(self._send_chunk(command, chunk))
                task.add_done_callback(settled)
                tasks.append(task)
            results = await asyncio.gather(*tasks, return_exceptions=True)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            # Stop here; the bus delivers the command again and the pending chunks resume.
            raise errors[0]

    async def _send_chunk(self, command: StartBroadcast, chunk: dict[str, Any]) -> None:
        bid = command.broadcast_id
        n = int(chunk["n"])
        key = retry_key(bid, str(n))
        to: list[str] = chunk["to"]

        async def call() -> LineResult:
            return await self.line.multicast(to, command.texts, key=key)

        async def on_error(exc: LineError) -> None:
            if exc.status != 409:
                await self._api_error(exc, command)

        note: str | None = None
        try:
            result, attempts = await with_backoff(call, self.backoff, on_error)
            request_id = result.request_id
        except LineError as exc:
            attempts = exc.attempts
            if exc.status == 409:
                request_id, note = exc.accepted_request_id, "already accepted"
            elif exc.transient:
                raise
            else:
                await self._record(chunk, state="failed", reason=str(exc), status=exc.status)
                log.warning("broadcast_chunk_failed", broadcast_id=bid, chunk=n, status=exc.status)
                return
        await self._record(chunk, state="sent", request_id=request_id, attempts=attempts, note=note)
        await self.facts.publish(
            BROADCAST_CHUNK_SENT,
            {"broadcast_id": bid, "chunk": n, "recipients": len(to), "request_id": request_id},
            cause=chunk["_id"],
            correlation_id=command.correlation_id,
        )

    async def _record(self, chunk: dict[str, Any], **fields: Any) -> None:
        doc = {
            "broadcast_id": chunk["broadcast_id"],
            "n": chunk["n"],
            "size": chunk["size"],
            "at": self.clock(),
            **fields,
        }
        await self.progress.update_one({"_id": chunk["_id"]}, {"$set": doc}, upsert=True)

    async def _send_broadcast(self, command: StartBroadcast, doc: dict[str, Any]) -> None:
        bid = command.broadcast_id
        if doc.get("broadcast_sent"):
            return
        key = retry_key(bid, "broadcast")

        async def call() -> LineResult:
            return await self.line.broadcast(command.texts, key=key)

        async def on_error(exc: LineError) -> None:
            if exc.status != 409:
                await self._api_error(exc, command)

        try:
            result, _ = await with_backoff(call, self.backoff, on_error)
            request_id = result.request_id
        except LineError as exc:
            if exc.status != 409:
                raise
            request_id = exc.accepted_request_id
        await self.broadcasts.update_one(
            {"_id": bid},
            {"$set": {"broadcast_sent": True, "request_id": request_id, "state": "sending"}},
        )

    # -- finish -------------------------------------------------------------------------------

    async def _finish(self, command: StartBroadcast) -> dict[str, Any]:
        bid = command.broadcast_id
        doc = await self.broadcasts.find_one({"_id": bid})
        assert doc is not None
        if command.method == "broadcast":
            recipients, failures = int(doc.get("planned", 0)), 0
        else:
            recipients = failures = 0
            async for chunk in self.progress.find({"broadcast_id": bid}, {"size": 1, "state": 1}):
                if chunk["state"] == "sent":
                    recipients += int(chunk["size"])
                elif chunk["state"] == "failed":
                    failures += int(chunk["size"])
        update = {
            "state": "finished",
            "recipients": recipients,
            "failures": failures,
            "finished_at": self.clock(),
            "updated_at": self.clock(),
        }
        await self.broadcasts.update_one({"_id": bid}, {"$set": update})
        log.info("broadcast_finished", broadcast_id=bid, recipients=recipients, failures=failures)
        return {**doc, **update}

    async def _publish_finished(self, command: StartBroadcast, doc: dict[str, Any]) -> None:
        await self.facts.publish(
            BROADCAST_FINISHED,
            {
                "broadcast_id": command.broadcast_id,
                "recipients": doc.get("recipients", 0),
                "failures": doc.get("failures", 0),
                "method": doc.get("method", command.method),
            },
            cause=command.broadcast_id,
            correlation_id=command.correlation_id,
        )

    async def _publish_refused(self, command: StartBroadcast, reason: str) -> None:
        log.warning("broadcast_refused", broadcast_id=command.broadcast_id, reason=reason)
        await self.facts.publish(
            BROADCAST_REFUSED,
            {
                "broadcast_id": command.broadcast_id,
                "reason": reason,
                "audience": command.audience,
                **_described(command),
            },
            cause=f"{command.broadcast_id}:{command.id}",
            correlation_id=command.correlation_id,
        )

    async def _api_error(self, exc: LineError, command: StartBroadcast) -> None:
        await report_api_error(self.facts, exc, command.correlation_id)
