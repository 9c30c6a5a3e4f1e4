from __future__ import annotations

from soudan_shared.settings import BaseServiceSettings, MongoSettings


class TriageSettings(BaseServiceSettings, MongoSettings):
    triage_port: int = 8082
