from __future__ import annotations

from pydantic import Field
from soudan_shared.settings import BaseServiceSettings, MongoSettings


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
    message_retention_months: int = Field(
        default=12,
        ge=1,
        le=120,
        description="Message texts older than this many months are erased by the daily job.",
    )
