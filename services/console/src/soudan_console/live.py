"""Live updates: facts from the bus fanned out to the browsers over Server-Sent Events.

Every console process subscribes to the case, message, emergency, broadcast and reply facts
(:meth:`Bus.subscribe`: an exclusive queue that lives as long as the process) and pushes a small
event to each connected browser whose role may see it. Browsers then fetch the server-rendered
fragment they show (the queue, a conversation), so there is one way to draw a page.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

import structlog
from soudan_shared.contracts import Fact

from soudan_console.domain import CASE_ROLES, SUPERVISING_ROLES

log = structlog.get_logger(__name__)

LIVE_BINDINGS = (
    "fact.case.#",
    "fact.message.#",
    "fact.emergency.#",
    "fact.broadcast.#",
    "fact.reply.#",
    "fact.staff.#",  # disabled, role changed: that person's streams end in every process
    "fact.security.password_changed",
)
# Facts that end every live stream of their ``staff_id``, in every console process at once
# (the process that acted has ended its own already; the others would otherwise wait for their
# next re-check). A password changed by its owner keeps the owner's session: not here.
ENDING_FACTS = frozenset({"staff.disabled", "staff.role_changed"})
CLIENT_BUFFER = 200


SESSION_ENDED = ("session", '{"state": "ended"}')


@dataclass(eq=False)
class Client:
    staff_id: str
    role: str
    session_key: str = ""
    queue: asyncio.Queue[tuple[str, str]] = field(
        default_factory=lambda: asyncio.Queue(CLIENT_BUFFER)
    )
    overflowed: bool = False
    ended: bool = False  # its session is over: the stream says so and stops


class Hub:
    """The browsers connected to this process."""

    def __init__(self) -> None:
        self.clients: set[Client] = set()

    def connect(self, staff_id: str, role: str, session_key: str = "") -> Client:
        client = Client(staff_id, role, session_key)
        self.clients.add(client)
        return client

    def end_sessions(
        self,
        *,
        session_key: str | None = None,
        staff_id: str | None = None,
        keep: str | None = None,
    ) -> int:
        """End the streams of one session, or of every session of ``staff_id`` but ``keep``.

        Called when sessions are deleted (logout, expiry, disable, role change, password
        change) and, for a disable, a role change or a password set by an admin, by every
        console process when the fact arrives; a logout elsewhere is noticed at the next
        re-check (``console_live_recheck_seconds``).
        """
        ended = 0
        for client in list(self.clients):
            if session_key is not None and client.session_key != session_key:
                continue
            if staff_id is not None and (client.staff_id != staff_id or client.session_key == keep):
                continue
            if session_key is None and staff_id is None:
                continue
            client.ended = True
            self.clients.discard(client)
            with contextlib.suppress(asyncio.QueueFull):
                client.queue.put_nowait(SESSION_ENDED)
            ended += 1
        return ended

    def disconnect(self, client: Client) -> None:
        self.clients.discard(client)

    def close_all(self) -> None:
        """End every stream (shutdown): browsers reconnect to another process or later."""
        for client in list(self.clients):
            client.overflowed = True
            with contextlib.suppress(asyncio.QueueFull):
                client.queue.put_nowait(("close", "{}"))
        self.clients.clear()

    def send(
        self,
        event: str,
        data: dict[str, Any],
        *,
        roles: frozenset[str] | None = None,
        staff_ids: set[str] | None = None,
    ) -> int:
        """Queue ``event`` for the matching clients; a client too slow to keep up is dropped
        (its browser reconnects and redraws)."""
        payload = json.dumps(data, ensure_ascii=False)
        sent = 0
        for client in list(self.clients):
            if roles is not None and client.role not in roles:
                continue
            if staff_ids is not None and client.staff_id not in staff_ids:
                continue
            try:
                client.queue.put_nowait((event, payload))
                sent += 1
            except asyncio.QueueFull:
                client.overflowed = True
                self.clients.discard(client)
        return sent

    async def on_fact(self, fact: Fact) -> None:
        data = fact.data
        kind = fact.type
        if kind in ENDING_FACTS or (
            kind == "security.password_changed" and data.get("by") != data.get("staff_id")
        ):
            if data.get("staff_id"):
                self.end_sessions(staff_id=str(data["staff_id"]))
            return
        if kind.startswith(("staff.", "security.")):
            return
        if kind.startswith(("case.", "message.")):
            if kind == "case.viewed":
                return
            alert = None
            if kind == "case.flagged_urgent" or (kind == "case.opened" and data.get("urgent")):
                alert = "urgent"
            elif kind == "case.opened":
                alert = "new"
            self.send(
                "case",
                {"type": kind, "case_id": data.get("case_id"), "alert": alert},
                roles=CASE_ROLES,
            )
            if kind == "case.student_left":  # a student in danger blocked the account
                self.send(
                    "notice",
                    {"type": kind, "case_id": data.get("case_id"), "text": DEPARTURE_NOTICE},
                    roles=SUPERVISING_ROLES,
                )
        elif kind == "emergency.raised":
            self.send(
                "emergency",
                {
                    "type": kind,
                    "emergency_id": data.get("emergency_id"),
                    "case_id": data.get("case_id"),
                    "emergency_type": data.get("type"),
                },
                roles=SUPERVISING_ROLES,
            )
        elif kind.startswith("emergency."):
            self.send("emergency_update", {"type": kind, **_ids(data)}, roles=CASE_ROLES)
        elif kind.startswith("broadcast."):
            self.send("broadcast", {"type": kind, **_ids(data)}, roles=frozenset({"admin"}))
        elif kind in ("reply.sent", "reply.failed", "reply.requested", "reply.retried"):
            if kind == "reply.failed":
                self.reply_not_delivered(
                    data.get("case_id"), data.get("staff_id"), data.get("problem")
                )
            elif data.get("case_id"):  # an open conversation redraws the message's state
                self.send(
                    "case",
                    {"type": kind, "case_id": data["case_id"], "alert": None},
                    roles=CASE_ROLES,
                )

    def reply_not_delivered(
        self, case_id: str | None, staff_id: str | None, problem: str | None = None
    ) -> None:
        """A counselor's reply did not reach the student: its conversation redraws the state,
        its author is alerted (in words fitting ``problem``)."""
        if case_id:
            self.send(
                "case",
                {"type": "reply.failed", "case_id": case_id, "alert": None},
                roles=CASE_ROLES,
            )
        if staff_id:
            self.send(
                "notice",
                {
                    "type": "reply.failed",
                    "case_id": case_id,
                    "problem": problem,
                    "text": FAILED_NOTICES.get(str(problem), FAILED_NOTICES["default"]),
                },
                staff_ids={str(staff_id)},
            )


DEPARTURE_NOTICE = (
    "緊急の相談の相談者が、LINEをブロック（友だち解除）しました。返信はもう届きません。"
    "相談の画面を確認して、必要なら関係機関への連絡を考えてください。"
)

FAILED_NOTICES = {
    "default": "あなたの返信が相談者に届きませんでした。"
    "会話画面で理由を確かめて、「もう一度送る」を押してください。",
    "monthly_limit": "今月にLINEで送れるメッセージの数が上限に達したため、あなたの返信は"
    "届きませんでした。相談者から次にメッセージが届いたら、1分以内に返信してください"
    "（上限に数えられず届きます）。会話画面に、できることを出しています。",
}


def _ids(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k.endswith("_id") and k != "user_id"}


async def stream(
    client: Client,
    write: Any,
    *,
    still_valid: Any,
    heartbeat: float = 15.0,
    recheck: float = 5.0,
) -> None:
    """Write the client's events as SSE until it disconnects or its session ends.

    The session is checked again every ``recheck`` seconds whether or not events flow (a busy
    queue must not keep a signed-out browser fed); an ending seen by this process
    (:meth:`Hub.end_sessions`) stops the stream at once.
    """
    loop = asyncio.get_running_loop()
    await write(b"retry: 3000\n\n")
    next_check = loop.time() + recheck
    next_beat = loop.time() + heartbeat
    while True:
        wait = max(0.0, min(next_check, next_beat) - loop.time())
        item: tuple[str, str] | None
        try:
            item = await asyncio.wait_for(client.queue.get(), wait)
        except TimeoutError:
            item = None
        if client.ended:
            await write(_sse(*SESSION_ENDED))
            return
        now = loop.time()
        if now >= next_check:
            if not await still_valid():
                await write(_sse(*SESSION_ENDED))
                return
            next_check = now + recheck
        if item is None:
            if now >= next_beat:
                await write(b": keep-alive\n\n")
                next_beat = now + heartbeat
            continue
        event, payload = item
        if client.overflowed and event == "close":
            return
        await write(_sse(event, payload))
        next_beat = now + heartbeat
        if client.overflowed and client.queue.empty():
            return


def _sse(event: str, payload: str) -> bytes:
    return f"event: {event}\ndata: {payload}\n\n".encode()


async def run_periodically(interval: float, job: Any, name: str) -> None:
    """Run ``job()`` every ``interval`` seconds until cancelled; a failure is logged, not fatal."""
    while True:
        try:
            await job()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("periodic_job_failed", job=name, error=repr(exc)[:300])
        await asyncio.sleep(interval)
