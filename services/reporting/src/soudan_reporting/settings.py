from __future__ import annotations

from soudan_shared.settings import BaseServiceSettings, MongoSettings


class ReportingSettings(BaseServiceSettings, MongoSettings):
    reporting_port: int = 8084
