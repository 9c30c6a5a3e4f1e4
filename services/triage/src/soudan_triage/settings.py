from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode
from soudan_shared.settings import BaseServiceSettings, MongoSettings

PREFERRED_PRIORITY = 10  # the consumer priority of a preferred shard; the others have 0


def parse_shards(value: Any) -> Any:
    """``"0,1"``, ``"0-3"``, ``"0-1,3"`` (or a sequence of numbers) as sorted shard numbers."""
    if not isinstance(value, str):
        return value
    shards: set[int] = set()
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        first, _, last = part.partition("-")
        try:
            low, high = int(first), int(last or first)
        except ValueError:
            raise ValueError(f"{part!r} is not a shard number or a range like 0-3") from None
        if low > high:
            raise ValueError(f"{part!r}: a range goes from the lower number to the higher")
        shards.update(range(low, high + 1))
    return tuple(sorted(shards))


class TriageSettings(BaseServiceSettings, MongoSettings):
    triage_port: int = 8082
    triage_concurrency: int = Field(
        default=4,
        ge=1,
        le=256,
        description="LINE events handled at once per shard queue. More in flight does not make "
        "a busy triage faster, only each event slower (an urgent one included).",
    )
    triage_held_events: int = Field(
        default=500,
        ge=1,
        le=10_000,
        description="LINE events held per shard queue (the consumer's prefetch): an urgent-looking "
        "text jumps the other users' events held before it; beyond this a backlog waits in "
        "the broker, in order.",
    )
    triage_shards: Annotated[tuple[int, ...], NoDecode] = Field(
        default=(),
        description="The shard queues this instance consumes: numbers or ranges, comma-separated "
        "(0-1 or 0,1); empty, every one. Instances that split the shards between them share the "
        "load; a shard nobody consumes waits in the broker.",
    )
    triage_preferred_shards: Annotated[tuple[int, ...], NoDecode] = Field(
        default=(),
        description="Of the shards it consumes, those this instance asks for first (consumer "
        "priority 10, the others 0): on RabbitMQ 4 each shard goes to a live instance that "
        "prefers it while the others stand by; RabbitMQ 3 gives a shard to whichever instance "
        "came first.",
    )
    message_retention_months: int = Field(
        default=12,
        ge=1,
        le=120,
        description="Message texts older than this many months are erased by the daily job.",
    )
    triage_timers_interval: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Seconds between two sweeps for the wait notices and the check-ins after a "
        "close (soudan_triage.timers).",
    )

    @field_validator("triage_shards", "triage_preferred_shards", mode="before")
    @classmethod
    def _parse_shards(cls, value: Any) -> Any:
        return parse_shards(value)

    @model_validator(mode="after")
    def _shards_exist(self) -> TriageSettings:
        for name in ("triage_shards", "triage_preferred_shards"):
            beyond = [n for n in getattr(self, name) if not 0 <= n < self.line_event_shards]
            if beyond:
                raise ValueError(
                    f"{name.upper()} names shard {beyond[0]}, but LINE_EVENT_SHARDS="
                    f"{self.line_event_shards} numbers them 0-{self.line_event_shards - 1}"
                )
        if set(self.triage_preferred_shards) - set(self.consumed_shards()):
            raise ValueError("TRIAGE_PREFERRED_SHARDS names a shard TRIAGE_SHARDS leaves out")
        return self

    def consumed_shards(self) -> tuple[int, ...]:
        """The shard queues this instance consumes."""
        return self.triage_shards or tuple(range(self.line_event_shards))

    def consumer_priority(self, shard: int) -> int | None:
        """The consumer priority of ``shard``'s queue: set only when some shard is preferred."""
        if not self.triage_preferred_shards:
            return None
        return PREFERRED_PRIORITY if shard in self.triage_preferred_shards else 0
