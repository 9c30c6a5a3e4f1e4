"""The student's chat while a counselor works: read marks (既読) and the loading animation.

Neither is a message: LINE counts neither against the month's quota (only push, multicast,
narrowcast and broadcast recipients count), and neither publishes ``reply.sent``, the fact the
monthly report and the broadcast page's budget count messages by. So they are never weighed
against the reserve (:mod:`soudan_dispatch.quota`) and still work when the month is spent.

``MarkRead`` (queue ``dispatch.mark-read``)
    Sent by the console only when a counselor has the conversation in front of them; nothing
    automatic sends one. ``POST /v2/bot/chat/markAsRead`` with the message's token; LINE then
    shows 既読 on it and on every earlier message of the student, and the store says so
    (``read_at``; the tokens are dropped, :func:`soudan_shared.records.record_read`). A
    message already recorded read is not marked again (a redelivery only republishes the fact,
    under the same id). 429, 5xx and no answer are tried again with backoff, a few times
    (:data:`READ_ATTEMPTS`); then, and on any other refusal, the mark is dropped with the fact
    ``line.read_mark_dropped``: a lost read mark is harmless, the counselor's next look sends
    another (a token LINE refused as invalid is forgotten instead). Never dead-lettered.

``StartLoading`` (queue ``dispatch.loading``)
    The animation ("入力中…") while a counselor types, for what is left of its ``seconds``
    since the console asked (rounded to LINE's steps of 5): one that has nothing left is stale
    and dropped without a call. Dropped as well when a message to the student went out (or
    began to) after it was asked for, so the animation never outlives the reply it announced:
    dispatch's :class:`RecentSends` remembers, per student, when its last send began. A failed
    call is tried once more at most, then dropped; the next keystroke asks again.

Per-user order: both queues are consumed in order per student (``ordering_key``), like texts;
the loading check above covers the order between a loading command and a text, which travel on
different queues. With several dispatch replicas a text sent by another replica is not seen by
that check: the animation then shows for at most its seconds after the reply.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import structlog
from soudan_shared.contracts import (
    LOADING_SECONDS_MAX,
    LOADING_SECONDS_MIN,
    LOADING_SECONDS_STEP,
    MarkRead,
    StartLoading,
    utcnow,
)
from soudan_shared.fact_types import LINE_LOADING_STARTED, LINE_READ_MARK_DROPPED, LINE_READ_MARKED
from soudan_shared.facts import Facts
from soudan_shared.records import forget_read_token, read_by, record_read

from soudan_dispatch.line import LineClient, LineError, LineResult
from soudan_dispatch.sending import Backoff, report_api_error, with_backoff

log = structlog.get_logger(__name__)

READ_ATTEMPTS = 3
LOADING_ATTEMPTS = 2


class RecentSends:
    """When dispatch last began a send to each student (this process, the wall clock), for the
    loading animation's check; entries older than the longest animation are forgotten."""

    def __init__(self, clock: Callable[[], datetime] = utcnow, *, keep_most: int = 10_000) -> None:
        self.clock = clock
        self.keep_most = keep_most
        self._began: dict[str, datetime] = {}

    def note(self, user_id: str) -> None:
        now = self.clock()
        self._began.pop(user_id, None)
        self._began[user_id] = now  # the dict keeps insertion order: oldest first
        if len(self._began) > self.keep_most:
            horizon = now - timedelta(seconds=LOADING_SECONDS_MAX)
            for user, began in list(self._began.items()):
                if began >= horizon and len(self._began) <= self.keep_most:
                    break
                del self._began[user]

    def since(self, user_id: str, moment: datetime) -> bool:
        """Whether a send to ``user_id`` began at or after ``moment``."""
        began = self._began.get(user_id)
        return began is not None and began >= moment


def seconds_left(command: StartLoading, now: datetime) -> int:
    """What is left of the command's seconds at ``now``, to LINE's nearest step of 5 (never more
    than asked); below the smallest step: 0, stale."""
    age = max(0.0, (now - command.requested_at).total_seconds())
    left = command.seconds - age
    steps = int((left + LOADING_SECONDS_STEP / 2) // LOADING_SECONDS_STEP)
    seconds = min(command.seconds, steps * LOADING_SECONDS_STEP)
    return seconds if seconds >= LOADING_SECONDS_MIN else 0


class Chat:
    """The handlers of ``MarkRead`` and ``StartLoading`` (one per dispatch process)."""

    def __init__(
        self,
        line: LineClient,
        store_db: Any,
        facts: Facts,
        *,
        recent: RecentSends,
        backoff: Backoff,
        clock: Callable[[], datetime] = utcnow,
        wall: Callable[[], datetime] = utcnow,
    ) -> None:
        self.line = line
        self.db = store_db
        self.facts = facts
        self.recent = recent
        self.read_backoff = Backoff(
            attempts=min(READ_ATTEMPTS, backoff.attempts), first=backoff.first, cap=backoff.cap
        )
        self.loading_backoff = Backoff(attempts=LOADING_ATTEMPTS, first=backoff.first, cap=1.0)
        self.clock = clock  # the store's times (``read_at``), as for texts
        self.wall = wall  # a loading command's age: the console's clock, not a test's

    # -- 既読 ---------------------------------------------------------------------------------

    async def mark_read(self, command: MarkRead) -> None:
        marked_by = await read_by(self.db, command.message_id)
        if marked_by is not None:
            if marked_by == command.id:  # ours, from an earlier delivery: the fact again
                await self._read_marked(command, None, 0)
            log.info("mark_read_already_read", user_id=command.user_id)
            return

        async def call() -> LineResult:
            return await self.line.mark_as_read(command.token)

        async def on_error(exc: LineError) -> None:
            await report_api_error(self.facts, exc, command.correlation_id)

        try:
            result, attempts = await with_backoff(call, self.read_backoff, on_error)
        except LineError as exc:
            await self._read_mark_dropped(command, exc)
            return
        marked = await record_read(
            self.db, command.message_id, at=self.clock(), command_id=command.id
        )
        log.info("read_marked", user_id=command.user_id, attempts=attempts, marked=marked)
        await self._read_marked(command, result.request_id, marked)

    async def _read_marked(self, command: MarkRead, request_id: str | None, marked: int) -> None:
        await self.facts.publish(
            LINE_READ_MARKED,
            {
                "user_id": command.user_id,
                "case_id": command.case_id,
                "message_id": command.message_id,
                "staff_id": command.staff_id,
                "command_id": command.id,
                "request_id": request_id,
                "marked": marked,
            },
            cause=command.id,
            correlation_id=command.correlation_id,
        )

    async def _read_mark_dropped(self, command: MarkRead, exc: LineError) -> None:
        if exc.status == 400:
            await forget_read_token(self.db, command.message_id)
        log.warning(
            "read_mark_dropped", status=exc.status, attempts=exc.attempts, user_id=command.user_id
        )
        await self.facts.publish(
            LINE_READ_MARK_DROPPED,
            {
                "user_id": command.user_id,
                "case_id": command.case_id,
                "message_id": command.message_id,
                "staff_id": command.staff_id,
                "command_id": command.id,
                "status": exc.status,
                "reason": str(exc)[:300],
                "attempts": exc.attempts,
            },
            cause=command.id,
            correlation_id=command.correlation_id,
        )

    # -- 入力中… ------------------------------------------------------------------------------

    async def start_loading(self, command: StartLoading) -> None:
        seconds = seconds_left(command, self.wall())
        if not seconds:
            log.info("loading_stale", user_id=command.user_id)
            return
        if self.recent.since(command.user_id, command.requested_at):
            log.info("loading_after_a_message_went_out", user_id=command.user_id)
            return

        async def call() -> LineResult:
            return await self.line.start_loading(command.user_id, seconds)

        async def on_error(exc: LineError) -> None:
            await report_api_error(self.facts, exc, command.correlation_id)

        try:
            _, attempts = await with_backoff(call, self.loading_backoff, on_error)
        except LineError as exc:
            log.warning("loading_dropped", status=exc.status, user_id=command.user_id)
            return
        log.info("loading_started", user_id=command.user_id, seconds=seconds, attempts=attempts)
        await self.facts.publish(
            LINE_LOADING_STARTED,
            {
                "user_id": command.user_id,
                "case_id": command.case_id,
                "staff_id": command.staff_id,
                "seconds": seconds,
                "command_id": command.id,
            },
            cause=command.id,
            correlation_id=command.correlation_id,
        )
