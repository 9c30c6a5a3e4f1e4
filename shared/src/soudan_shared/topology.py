"""The whole RabbitMQ topology, in one place.

One topic exchange carries every message; each queue is a durable quorum queue with its own
dead-letter queue. Everything RabbitMQ 3.10 and 4.x disagree on is declared explicitly (queue
type, delivery limit, dead-letter exchange and strategy), so the same topology behaves the same
on Debian's 3.10 in CI and the 4.x image in Compose.

Per-user order: LINE events are spread over ``line_event_shards`` queues (the setting
``LINE_EVENT_SHARDS``, default 4) by a stable hash of the user id, and each shard queue has a
single active consumer, so one user's events are always consumed by one process in the order they
were published. Further triage instances on the same queues are hot standbys: the broker hands a
shard to one of them when its active consumer goes away. Every service must use the same shard
count: ingress routes by it, triage consumes that many queues.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from soudan_shared.contracts import (
    Fact,
    FactBatch,
    LineEventReceived,
    MarkRead,
    Message,
    SendText,
    StartBroadcast,
    StartLoading,
)

LINE_EVENT_SHARDS = 4
# The routing keys of fact batches (``facts.<service>``): bound wherever facts are consumed.
FACT_BATCHES = "facts.*"
MAX_LINE_EVENT_SHARDS = 64
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
    # Replicas of each quorum queue (``x-quorum-initial-group-size``); None: the broker's choice.
    # RabbitMQ checks it on every declaration: a queue declared with another value (or none)
    # refuses the declaration (PRECONDITION_FAILED), as any other mismatch here does.
    quorum_group_size: int | None = None
    extra_queues: tuple[QueueSpec, ...] = field(default=())

    def __post_init__(self) -> None:
        if not 1 <= self.line_event_shards <= MAX_LINE_EVENT_SHARDS:
            shards, most = self.line_event_shards, MAX_LINE_EVENT_SHARDS
            raise ValueError(f"line_event_shards must be 1..{most}, not {shards}")

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
            QueueSpec(FACTS_QUEUE, ("fact.#", FACT_BATCHES)),
            QueueSpec(MARK_READ_QUEUE, ("command.mark_read",)),
            QueueSpec(LOADING_QUEUE, ("command.start_loading",)),
            *self.extra_queues,
        )

    def queue_arguments(self, spec: QueueSpec) -> dict[str, Any]:
        return {
            **self._quorum(),
            "x-delivery-limit": self.delivery_limit,
            "x-dead-letter-exchange": self.dead_letter_exchange,
            "x-dead-letter-routing-key": self.queue(spec.name),
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
            "x-single-active-consumer": spec.single_active_consumer,
        }

    def dead_letter_queue_arguments(self) -> dict[str, Any]:
        return self._quorum()

    def _quorum(self) -> dict[str, Any]:
        arguments: dict[str, Any] = {"x-queue-type": "quorum"}
        if self.quorum_group_size is not None:
            arguments["x-quorum-initial-group-size"] = self.quorum_group_size
        return arguments

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
        if isinstance(message, FactBatch):
            return f"facts.{message.service}"
        if isinstance(message, MarkRead):
            return "command.mark_read"
        if isinstance(message, StartLoading):
            return "command.start_loading"
        raise TypeError(f"no route for {type(message).__name__}")

    def shard(self, key: str) -> int:
        digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") % self.line_event_shards


def line_event_queue(shard: int) -> str:
    return f"triage.line-events.{shard}"


SEND_TEXT_QUEUE = "dispatch.send-text"
BROADCAST_QUEUE = "dispatch.broadcasts"
FACTS_QUEUE = "reporting.facts"
# The student's chat while a counselor works (dispatch, one user's commands in order): read
# marks (既読) and the loading animation ("入力中…"). Their own queues, so neither ever waits
# behind a burst of texts or broadcasts, nor holds one up.
MARK_READ_QUEUE = "dispatch.mark-read"
LOADING_QUEUE = "dispatch.loading"


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
