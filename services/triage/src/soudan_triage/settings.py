from __future__ import annotations

from pydantic import Field
from soudan_shared.settings import BaseServiceSettings, MongoSettings


class TriageSettings(BaseServiceSettings, MongoSettings):
    triage_port: int = 8082
    message_retention_months: int = Field(
        default=12,
        ge=1,
        le=120,
        description="Message texts older than this many months are erased by the daily job.",
    )
