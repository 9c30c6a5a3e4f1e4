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
)
CLIENT_BUFFER = 200


@dataclass(eq=False)
class Client:
    staff_id: str
    role: str
    queue: asyncio.Queue[tuple[str, str]] = field(
        default_factory=lambda: asyncio.Queue(CLIENT_BUFFER)
    )
    overflowed: bool = False


class Hub:
    """The browsers connected to this process."""

    def __init__(self) -> None:
        self.clients: set[Client] = set()

    def connect(self, staff_id: str, role: str) -> Client:
        client = Client(staff_id, role)
        self.clients.add(client)
        return client

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
        elif kind == "reply.failed" and data.get("staff_id"):
            self.send(
                "notice",
                {
                    "type": kind,
                    "case_id": data.get("case_id"),
                    "text": "返信が相談者に届きませんでした。会話画面で確認してください。",
                },
                staff_ids={str(data["staff_id"])},
            )


def _ids(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k.endswith("_id") and k != "user_id"}


async def stream(client: Client, write: Any, *, still_valid: Any, heartbeat: float = 15.0) -> None:
    """Write the client's events as SSE until it disconnects or its session ends."""
    await write(b"retry: 3000\n\n")
    while True:
        try:
            event, payload = await asyncio.wait_for(client.queue.get(), heartbeat)
        except TimeoutError:
            if not await still_valid():
                await write(b'event: session\ndata: {"state": "ended"}\n\n')
                return
            await write(b": keep-alive\n\n")
            continue
        if client.overflowed and event == "close":
            return
        await write(f"event: {event}\ndata: {payload}\n\n".encode())
        if client.overflowed and client.queue.empty():
            return


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
