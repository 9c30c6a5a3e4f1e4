"""The month's message budget: LINE's quota, what is used, and the reserve kept for conversations.

LINE counts every recipient of push, multicast, narrowcast and broadcast against a monthly target
limit. Replies are free, and so are read marks and the loading animation
(:mod:`soudan_dispatch.chat`), which are not messages at all and never counted here. Counselor
replies and urgent automatic answers are pushed when the reply token is too old, so a broadcast
must not spend the messages they need: ``LINE_MONTHLY_RESERVE``
names how many are kept back. Left unset it is derived from the plan: a tenth of the month's
limit (20 of the free plan's 200, 500 of 5,000, 3,000 of 30,000), none when LINE sets no limit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Gauge
from soudan_shared.bus import PublishFailed
from soudan_shared.contracts import utcnow
from soudan_shared.fact_types import LINE_QUOTA_READ
from soudan_shared.facts import Facts
from soudan_shared.records import LINE_BUDGET

from soudan_dispatch.line import LineClient, LineError

log = structlog.get_logger(__name__)

BUDGET = LINE_BUDGET

RESERVE_SHARE = 10  # percent of the month's limit kept for conversations by default


def default_reserve(limit: int | None) -> int:
    """The reserve when none is configured: a tenth of the limit (0 without a limit)."""
    return 0 if limit is None else limit * RESERVE_SHARE // 100


@dataclass(frozen=True)
class Budget:
    """One reading of the month's quota. ``limit`` None: LINE sets no target limit."""

    limit: int | None
    used: int
    reserve: int

    @property
    def remaining(self) -> int | None:
        return None if self.limit is None else max(0, self.limit - self.used)

    @property
    def for_broadcasts(self) -> int | None:
        """What a broadcast may spend without eating into the reserve."""
        remaining = self.remaining
        return None if remaining is None else max(0, remaining - self.reserve)

    def refusal(self, planned: int) -> str | None:
        """Why a broadcast to ``planned`` recipients may not start now, in Japanese for the
        console's broadcast list; None if it may."""
        if self.limit is None or self.remaining is None:
            return None
        left = f"今月の残り{self.remaining}通（{self.limit}通のうち{self.used}通を使用）"
        if planned > self.remaining:
            return f"送る相手（{planned}人）が、{left}より多いため送りませんでした。"
        if planned > self.remaining - self.reserve:
            return (
                f"送ると、相談員の返信や急ぎの自動返信のために残しておく{self.reserve}通を"
                f"使ってしまうため送りませんでした（送る相手{planned}人、{left}）。"
                "どうしても送るときは、管理者が「残しておく分を使って送る」を選んでください。"
            )
        return None

    def to_fact(self) -> dict[str, Any]:
        return {
            "limit": self.limit,
            "used": self.used,
            "remaining": self.remaining,
            "reserve": self.reserve,
        }


async def read_budget(line: LineClient, reserve: int | None = None) -> Budget:
    """Ask LINE for the month's quota and consumption (raises ``LineError`` when it cannot)."""
    kind, limit = await line.quota()
    if kind != "limited":
        limit = None
    used = await line.consumption()
    return Budget(
        limit=limit,
        used=used,
        reserve=default_reserve(limit) if reserve is None else reserve,
    )


class BudgetWatcher:
    """Reads the budget every ``interval`` seconds and after each broadcast; keeps the last
    reading in :data:`BUDGET` (one document, for the console), in the Prometheus gauges
    ``soudan_line_quota_*`` and, when it changed, as the fact ``line.quota_read``."""

    def __init__(
        self,
        line: LineClient,
        store_db: Any,
        facts: Facts,
        *,
        reserve: int | None = None,
        interval: float = 600.0,
        registry: CollectorRegistry | None = None,
        ready: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.line = line
        self.ready = ready  # waited for before the first reading (the bus connected)
        self.budget = store_db[BUDGET]
        self.facts = facts
        self.reserve = reserve
        self.interval = interval
        self.last: Budget | None = None
        self.gauge = Gauge(
            "soudan_line_quota_messages",
            "The month's LINE message budget: limit (-1 none), used, remaining, reserve",
            ["kind"],
            registry=registry,
        )

    async def refresh(self) -> Budget | None:
        """One reading; None (logged) when LINE could not be asked."""
        try:
            budget = await read_budget(self.line, self.reserve)
        except LineError as exc:
            log.warning("line_quota_unread", status=exc.status)
            return None
        self.gauge.labels("limit").set(-1 if budget.limit is None else budget.limit)
        self.gauge.labels("used").set(budget.used)
        self.gauge.labels("remaining").set(-1 if budget.remaining is None else budget.remaining)
        self.gauge.labels("reserve").set(budget.reserve)
        await self.budget.update_one(
            {"_id": "current"},
            {"$set": {**budget.to_fact(), "read_at": utcnow()}},
            upsert=True,
        )
        if budget != self.last:
            try:
                await self.facts.publish(LINE_QUOTA_READ, budget.to_fact())
            except PublishFailed as exc:
                log.warning("line_quota_fact_unpublished", error=str(exc))  # next reading tries
            else:
                self.last = budget
        return budget

    async def run_forever(self) -> None:
        if self.ready is not None:
            await self.ready()
        while True:
            await self.refresh()
            await asyncio.sleep(self.interval)
