"""One helper every service uses to publish a fact ``{id, type, at, service, data}``, alone or
with the other facts of the same cause in one bus message (:meth:`Facts.publish_together`)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from soudan_shared.contracts import (
    MAX_FACTS_PER_BATCH,
    Fact,
    FactBatch,
    Message,
    stable_id,
    utcnow,
)


class Publisher(Protocol):
    async def publish(self, message: Message, *, timeout: float | None = None) -> None: ...


class Facts:
    """Publishes facts for one service.

    Pass ``cause`` (the id of the message or request the fact follows from) whenever there is
    one: the fact's id is then derived from it, so a redelivered cause republishes the same fact
    and the recorder stores it once.
    """

    def __init__(self, publisher: Publisher, service: str) -> None:
        self._publisher = publisher
        self.service = service

    def make(
        self,
        type: str,
        data: dict[str, Any] | None = None,
        *,
        cause: str | None = None,
        at: datetime | None = None,
        correlation_id: str = "",
    ) -> Fact:
        fields: dict[str, Any] = {
            "type": type,
            "service": self.service,
            "data": data or {},
            "at": at or utcnow(),
            "correlation_id": correlation_id,
        }
        if cause is not None:
            fields["id"] = stable_id(type, cause)
        return Fact(**fields)

    async def publish(
        self,
        type: str,
        data: dict[str, Any] | None = None,
        *,
        cause: str | None = None,
        at: datetime | None = None,
        correlation_id: str = "",
    ) -> Fact:
        fact = self.make(type, data, cause=cause, at=at, correlation_id=correlation_id)
        await self._publisher.publish(fact)
        return fact

    async def publish_together(self, facts: Sequence[Fact]) -> None:
        """Publish the facts of one cause in one bus message (a :class:`FactBatch`; one fact
        goes alone): one confirm for all. Their consumers receive each fact as if it had been
        published on its own."""
        if len(facts) == 1:
            await self._publisher.publish(facts[0])
            return
        chunks = [
            facts[i : i + MAX_FACTS_PER_BATCH] for i in range(0, len(facts), MAX_FACTS_PER_BATCH)
        ]
        await asyncio.gather(*(self._publisher.publish(FactBatch.of(c)) for c in chunks))
