"""The whole RabbitMQ topology, in one place.

One topic exchange carries every message; each queue is a durable quorum queue with its own
dead-letter queue. Everything RabbitMQ 3.10 and 4.x disagree on is declared explicitly (queue
type, delivery limit, dead-letter exchange and strategy), so the same topology behaves the same
on Debian's 3.10 in CI and the 4.x image in Compose.

Per-user order: LINE events are spread over ``LINE_EVENT_SHARDS`` queues by a stable hash of the
user id, and each shard queue has a single active consumer, so one user's events are always
consumed by one process in the order they were published.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from soudan_shared.contracts import Fact, LineEventReceived, Message, SendText, StartBroadcast

LINE_EVENT_SHARDS = 4
DEFAULT_DELIVERY_LIMIT = 10


@dataclass(frozen=True)
class QueueSpec:
    """A queue relative to the namespace: ``name`` becomes ``<namespace>.<name>``."""

    name: str
    bindings: tuple[str, ...]
    single_active_consumer: bool = False


@dataclass(frozen=True)
class Topology:
    namespace: str = "soudan"
    delivery_limit: int = DEFAULT_DELIVERY_LIMIT
    line_event_shards: int = LINE_EVENT_SHARDS
    extra_queues: tuple[QueueSpec, ...] = field(default=())

    @property
    def exchange(self) -> str:
        return self.namespace

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.namespace}.dead"

    def queue(self, name: str) -> str:
        return f"{self.namespace}.{name}"

    def dead_letter_queue(self, name: str) -> str:
        return f"{self.queue(name)}.dead"

    @property
    def queues(self) -> tuple[QueueSpec, ...]:
        shards = tuple(
            QueueSpec(
                line_event_queue(i),
                (f"line.event.{i}",),
                single_active_consumer=True,
            )
            for i in range(self.line_event_shards)
        )
        return (
            *shards,
            QueueSpec(SEND_TEXT_QUEUE, ("command.send_text",), single_active_consumer=False),
            QueueSpec(BROADCAST_QUEUE, ("command.start_broadcast",)),
            QueueSpec(FACTS_QUEUE, ("fact.#",)),
            *self.extra_queues,
        )

    def queue_arguments(self, spec: QueueSpec) -> dict[str, Any]:
        return {
            "x-queue-type": "quorum",
            "x-delivery-limit": self.delivery_limit,
            "x-dead-letter-exchange": self.dead_letter_exchange,
            "x-dead-letter-routing-key": self.queue(spec.name),
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
            "x-single-active-consumer": spec.single_active_consumer,
        }

    @staticmethod
    def dead_letter_queue_arguments() -> dict[str, Any]:
        return {"x-queue-type": "quorum"}

    def routing_key(self, message: Message) -> str:
        """Where a message goes. Unknown message classes are a programming error."""
        if isinstance(message, LineEventReceived):
            return f"line.event.{self.shard(ordering_key(message))}"
        if isinstance(message, SendText):
            return "command.send_text"
        if isinstance(message, StartBroadcast):
            return "command.start_broadcast"
        if isinstance(message, Fact):
            return f"fact.{message.type}"
        raise TypeError(f"no route for {type(message).__name__}")

    def shard(self, key: str) -> int:
        digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") % self.line_event_shards


def line_event_queue(shard: int) -> str:
    return f"triage.line-events.{shard}"


SEND_TEXT_QUEUE = "dispatch.send-text"
BROADCAST_QUEUE = "dispatch.broadcasts"
FACTS_QUEUE = "reporting.facts"


def ordering_key(message: LineEventReceived) -> str:
    """The key whose events must stay in order: the user, else the group or room, else the event."""
    if message.user_id:
        return message.user_id
    source = message.event.get("source")
    if isinstance(source, dict):
        for name in ("groupId", "roomId"):
            value = source.get(name)
            if isinstance(value, str) and value:
                return value
    return message.webhook_event_id
