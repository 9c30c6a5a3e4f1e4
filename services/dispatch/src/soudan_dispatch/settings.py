from __future__ import annotations

from soudan_shared.settings import BaseServiceSettings, MongoSettings, LineApiSettings


class DispatchSettings(BaseServiceSettings, MongoSettings, LineApiSettings):
    dispatch_port: int = 8083
