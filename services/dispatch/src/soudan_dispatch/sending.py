"""Sending one ``SendText``: reply first, push otherwise, each message at most once.

Reply or push
    A reply token younger than ``reply_token_max_age`` (50 s; LINE keeps them about a minute) is
    tried first; replies are free and need no retry key. Automatic replies carry their event's
    token; a counselor's reply carries the student's latest unclaimed one (the console takes it
    from ``reply_tokens``). Before the reply the command claims the token in the store
    (``soudan_shared.records.claim_reply_token``): of two commands with the same token only the
    first replies. An older token, none, one claimed by another command, or LINE's 400 for the
    token, means a push, with ``X-Line-Retry-Key`` set from the command's id on every try.

Failures
    429 (not the monthly limit), 5xx, timeouts and refused connections are tried again with
    exponential backoff and jitter, at most ``send_max_attempts`` times in all. What still fails,
    and every other refusal, is dead-lettered with its reason (:class:`Permanent`) after the fact
    ``reply.failed``: the bus would otherwise requeue it until its delivery limit.

At most once, across redeliveries and crashes
    The collection :data:`SENT` holds one document per command id. Before a reply is tried (the
    token claimed) the document records ``reply_tried_at``, in the same round trip that reads
    what an earlier delivery recorded; after LINE accepted the message it records the method
    and LINE's request id (``state: sent``), and a redelivered command that finds it sends
    nothing (it only publishes ``reply.sent`` again, under the same fact id).

    The window left is between LINE's acceptance and that write (a crash, a lost answer):
    - a push is safe: the redelivery pushes again with the same retry key and LINE answers 409
      (it remembers keys for 24 h), which counts as sent;
    - a reply is not: the token is single-use, so the second reply fails 400 whether or not the
      first went out. When an earlier try of the same command may have reached LINE (a 5xx or
      timeout on the reply, or ``reply_tried_at`` from a previous delivery) and the token is still
      young enough that it cannot have expired, that 400 means our earlier try used it: the
      message counts as sent by reply and is not pushed again. Only when the token is too old to
      tell (the command came back after ``REPLY_TOKEN_MAX_AGE``, e.g. the process was down that
      long) is the message pushed, and the student may then see it twice: a duplicate is
      preferred to a lost answer. ``reply.sent`` then says so (``note``), so the possible
      duplicate can be counted.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, NoReturn

import structlog
from pymongo import ReturnDocument
from soudan_shared.bus import Permanent
from soudan_shared.contracts import SendText, utcnow
from soudan_shared.fact_types import LINE_API_ERROR, NOTE_MAYBE_TWICE, REPLY_FAILED, REPLY_SENT
from soudan_shared.facts import Facts
from soudan_shared.records import claim_reply_token, record_outgoing
from soudan_shared.store import IndexSpec

from soudan_dispatch.line import LineClient, LineError, LineResult, retry_key

log = structlog.get_logger(__name__)

SENT = "dispatch_sent"
INDEXES = (IndexSpec(SENT, (("sent_at", 1),), name="sent_at"),)

# A reply token LINE certainly still honours: a 400 for it then means it was used.
REPLY_TOKEN_SURE_VALID = 55.0


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter, bounded in attempts."""

    attempts: int = 5
    first: float = 0.5
    cap: float = 20.0

    def delay(self, attempt: int, hint: float | None = None) -> float:
        base: float = min(self.cap, self.first * 2 ** (attempt - 1))
        jittered = base / 2 + random.uniform(0, base / 2)  # noqa: S311 - jitter, not security
        return max(jittered, min(hint or 0.0, self.cap))


@dataclass
class Outcome:
    method: str
    request_id: str | None
    attempts: int
    note: str | None = None


def problem_of(exc: LineError) -> str:
    """A short code for why LINE did not take a message (the console words it for staff)."""
    if exc.status == 0:
        return "no_answer"
    if exc.status >= 500:
        return "line_unavailable"
    if exc.monthly_limit:
        return "monthly_limit"
    return {429: "rate_limited", 401: "unauthorized", 403: "forbidden"}.get(exc.status, "refused")


async def report_api_error(facts: Facts, exc: LineError, correlation_id: str) -> None:
    """Log a refusal or failure of LINE's API and record it as the fact ``line.api_error``."""
    log.warning(
        "line_api_error",
        endpoint=exc.endpoint,
        status=exc.status,
        line_message=exc.message[:200],
        request_id=exc.request_id,
    )
    await facts.publish(
        LINE_API_ERROR,
        {"endpoint": exc.endpoint, "status": exc.status, "request_id": exc.request_id},
        correlation_id=correlation_id,
    )


async def with_backoff(
    call: Callable[[], Awaitable[LineResult]],
    backoff: Backoff,
    on_error: Callable[[LineError], Awaitable[None]],
) -> tuple[LineResult, int]:
    """Call until it succeeds or fails for good; raise the last :class:`LineError` (its
    ``attempts`` says how many calls were made)."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return await call(), attempt
        except LineError as exc:
            exc.attempts = attempt
            await on_error(exc)
            if not exc.transient or attempt >= backoff.attempts:
                raise
            await asyncio.sleep(backoff.delay(attempt, exc.retry_after))


class Sender:
    """The handler of ``SendText`` (one per dispatch process)."""

    def __init__(
        self,
        line: LineClient,
        store_db: Any,
        facts: Facts,
        *,
        backoff: Backoff,
        reply_token_max_age: float = 50.0,
        clock: Callable[[], datetime] = utcnow,
        began: Callable[[str], None] | None = None,
    ) -> None:
        """``began(user_id)`` is told as each send to a student begins (the loading animation's
        check, :class:`soudan_dispatch.chat.RecentSends`)."""
        self.line = line
        self.began = began
        self.db = store_db
        self.sent = store_db[SENT]
        self.facts = facts
        self.backoff = backoff
        self.reply_token_max_age = reply_token_max_age
        self.clock = clock

    async def handle(self, command: SendText) -> None:
        young = self._young(command)
        claimed = young and await self._claim(command)
        if claimed:
            # One round trip notes the reply about to be tried and reads what an earlier
            # delivery of this command recorded (from before this note).
            record = await self.sent.find_one_and_update(
                {"_id": command.id},
                {"$set": {"reply_tried_at": self.clock(), "to": command.to}},
                upsert=True,
                return_document=ReturnDocument.BEFORE,
            )
        else:
            record = await self.sent.find_one({"_id": command.id})
        if record is not None and record.get("state") == "sent":
            log.info("send_text_already_sent", method=record.get("method"))
            await self._delivered(command, record)
            await self._published_sent(command, record)
            return
        if self.began is not None:
            self.began(command.to)
        started = time.perf_counter()
        outcome = await self._send(command, record, young=young, claimed=claimed)
        latency_ms = round((time.perf_counter() - started) * 1000, 1)
        done = {
            "state": "sent",
            "method": outcome.method,
            "request_id": outcome.request_id,
            "attempts": outcome.attempts,
            "latency_ms": latency_ms,
            "sent_at": self.clock(),
            "to": command.to,
            "purpose": command.purpose,
            "note": outcome.note,
        }
        await self.sent.update_one({"_id": command.id}, {"$set": done}, upsert=True)
        await self._delivered(command, done)
        log.info(
            "send_text_sent",
            method=outcome.method,
            attempts=outcome.attempts,
            latency_ms=latency_ms,
            purpose=command.purpose,
            user_id=command.to,
        )
        await self._published_sent(command, done)

    async def _delivered(self, command: SendText, record: dict[str, Any]) -> None:
        """The conversation shows the texts as sent (automatic replies included)."""
        sent_at = record.get("sent_at") or self.clock()
        await record_outgoing(
            self.db,
            command,
            at=sent_at,
            delivery={"delivery": "sent", "delivery_at": sent_at, "delivery_problem": None},
        )

    async def _published_sent(self, command: SendText, record: dict[str, Any]) -> None:
        await self.facts.publish(
            REPLY_SENT,
            {
                "purpose": command.purpose,
                "method": record.get("method"),
                "user_id": command.to,
                "case_id": command.case_id,
                "staff_id": command.staff_id,
                "latency_ms": record.get("latency_ms"),
                "request_id": record.get("request_id"),
                "messages": len(command.texts),
                "command_id": command.id,
                "note": record.get("note"),
            },
            cause=command.id,
            correlation_id=command.correlation_id,
        )

    async def _claim(self, command: SendText) -> bool:
        """Whether the command's reply token is its own (see ``claim_reply_token``): an automatic
        reply and a counselor's may carry the same one, and only one of them may use it."""
        assert command.reply_token is not None
        return await claim_reply_token(self.db, command.reply_token, command.id, now=self.clock())

    def _token_age(self, command: SendText) -> float | None:
        if command.reply_token_received_at is None:
            return None
        return (self.clock() - command.reply_token_received_at).total_seconds()

    def _young(self, command: SendText) -> bool:
        """Whether the command carries a reply token young enough to try."""
        age = self._token_age(command)
        return bool(command.reply_token) and (age is None or age < self.reply_token_max_age)

    async def _send(
        self, command: SendText, record: dict[str, Any] | None, *, young: bool, claimed: bool
    ) -> Outcome:
        """``claimed``: the command's young token is its own, and ``reply_tried_at`` is set."""
        attempts = 0
        tried_before = record is not None and record.get("reply_tried_at") is not None
        if young and not claimed:
            log.info("reply_token_claimed_by_another_command_push_instead", purpose=command.purpose)
        elif young:
            outcome, attempts = await self._reply(command, tried_before)
            if outcome is not None:
                return outcome
        elif tried_before:
            pushed = await self._push(command, attempts)
            return replace(pushed, note=pushed.note or NOTE_MAYBE_TWICE)
        return await self._push(command, attempts)

    async def _reply(self, command: SendText, tried_before: bool) -> tuple[Outcome | None, int]:
        """The reply's outcome, or None (with the attempts spent) when a push must follow."""
        assert command.reply_token is not None
        token = command.reply_token
        maybe_delivered = tried_before
        attempt = 0
        while True:
            attempt += 1
            try:
                result = await self.line.reply(token, command.texts, command.quick_reply)
                return Outcome("reply", result.request_id, attempt), attempt
            except LineError as exc:
                await self._api_error(exc, command)
                if exc.invalid_reply_token:
                    age = self._token_age(command)
                    if maybe_delivered and age is not None and age < REPLY_TOKEN_SURE_VALID:
                        log.info("reply_token_used_by_earlier_try", attempts=attempt)
                        note = "token used by an earlier try"
                        return Outcome("reply", None, attempt, note=note), attempt
                    log.info("reply_token_refused_push_instead", attempts=attempt)
                    return None, attempt
                if not exc.transient:
                    await self._failed(command, exc, attempt)
                if exc.status == 0 or exc.status >= 500:
                    maybe_delivered = True
                age = self._token_age(command)
                young = age is None or age < self.reply_token_max_age
                if attempt >= self.backoff.attempts:
                    await self._failed(command, exc, attempt, maybe_delivered=maybe_delivered)
                if not young:
                    # The token is past its window: a push carries the message from here.
                    return None, attempt
                await asyncio.sleep(self.backoff.delay(attempt, exc.retry_after))

    async def _push(self, command: SendText, attempts_so_far: int) -> Outcome:
        key = retry_key(command.id)

        async def call() -> LineResult:
            return await self.line.push(command.to, command.texts, command.quick_reply, key=key)

        async def on_error(exc: LineError) -> None:
            if exc.status != 409:
                await self._api_error(exc, command)

        try:
            result, pushes = await with_backoff(call, self.backoff, on_error)
        except LineError as exc:
            attempts = attempts_so_far + exc.attempts
            if exc.status == 409:
                # LINE accepted this retry key before: an earlier try of ours went out.
                return Outcome("push", exc.accepted_request_id, attempts, note="already accepted")
            await self._failed(command, exc, attempts)
        return Outcome("push", result.request_id, attempts_so_far + pushes)

    async def _api_error(self, exc: LineError, command: SendText) -> None:
        await report_api_error(self.facts, exc, command.correlation_id)

    async def _failed(
        self, command: SendText, exc: LineError, attempts: int, *, maybe_delivered: bool = False
    ) -> NoReturn:
        """Give up: ``reply.failed`` and a dead-letter. ``maybe_delivered`` says an earlier try
        got a 5xx or no answer after LINE may already have delivered it, so nobody resends it
        as if the student never got it."""
        reason = str(exc)
        if maybe_delivered:
            reason = f"may have been delivered (an earlier try got no clear answer); {reason}"
        now = self.clock()
        await record_outgoing(
            self.db,
            command,
            at=now,
            delivery={
                "delivery": "failed",
                "delivery_at": now,
                "delivery_problem": problem_of(exc),
                "delivery_status": exc.status,
                "maybe_delivered": maybe_delivered,
            },
        )
        await self.facts.publish(
            REPLY_FAILED,
            {
                "purpose": command.purpose,
                "user_id": command.to,
                "case_id": command.case_id,
                "staff_id": command.staff_id,
                "problem": problem_of(exc),
                "reason": reason,
                "status": exc.status,
                "attempts": attempts,
                "command_id": command.id,
                "maybe_delivered": maybe_delivered,
            },
            cause=command.id,
            correlation_id=command.correlation_id,
        )
        log.warning("send_text_failed", status=exc.status, attempts=attempts, user_id=command.to)
        raise Permanent(f"LINE refused the message after {attempts} attempt(s): {reason}")
