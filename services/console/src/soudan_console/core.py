"""The console's collaborators in one object, and the fact outbox.

Every action of the console is audited with a fact. A fact is published at once when the broker
takes it; when it does not (an outage), the fact goes into the store's outbox and a background
task publishes it later with the same id, so the monthly report misses nothing.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import structlog
from soudan_shared.bus import Bus, PublishFailed
from soudan_shared.config_store import ConfigSource
from soudan_shared.contracts import Fact
from soudan_shared.facts import Facts

from soudan_console.live import Hub
from soudan_console.mail import Mailer
from soudan_console.security import Sessions
from soudan_console.settings import ConsoleSettings

log = structlog.get_logger(__name__)

OUTBOX = "console_outbox"


@dataclass
class Console:
    settings: ConsoleSettings
    db: Any
    bus: Bus
    facts: Facts
    config: ConfigSource
    sessions: Sessions
    hub: Hub
    mailer: Mailer

    async def emit(self, type: str, data: dict[str, Any], *, cause: str | None = None) -> Fact:
        """Publish an audit fact; keep it in the outbox if the broker does not take it now."""
        fact = self.facts.make(type, data, cause=cause)
        try:
            await self.bus.publish(fact, timeout=3.0)
        except PublishFailed as exc:
            log.warning("fact_kept_in_outbox", fact_type=type, error=str(exc)[:200])
            with contextlib.suppress(Exception):
                await self.db[OUTBOX].replace_one(
                    {"_id": fact.id},
                    {"_id": fact.id, "body": fact.model_dump(mode="json", by_alias=True)},
                    upsert=True,
                )
        return fact

    async def flush_outbox(self, limit: int = 200) -> int:
        """Publish what the outbox holds; each fact keeps its id, so a repeat is harmless."""
        if not self.bus.is_ready:
            return 0
        sent = 0
        for doc in await self.db[OUTBOX].find({}).limit(limit).to_list():
            fact = Fact.model_validate(doc["body"])
            try:
                await self.bus.publish(fact)
            except PublishFailed:
                break
            await self.db[OUTBOX].delete_one({"_id": doc["_id"]})
            sent += 1
        return sent
