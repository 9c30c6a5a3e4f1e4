from __future__ import annotations

from soudan_shared.settings import BaseServiceSettings, MongoSettings


class ConsoleSettings(BaseServiceSettings, MongoSettings):
    console_port: int = 8081
