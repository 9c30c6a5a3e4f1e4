from __future__ import annotations

from soudan_shared.settings import BaseServiceSettings, LineApiSettings, MongoSettings


class DispatchSettings(BaseServiceSettings, MongoSettings, LineApiSettings):
    dispatch_port: int = 8083
