from __future__ import annotations

from soudan_shared.settings import BaseServiceSettings, LineSecretSettings


class IngressSettings(BaseServiceSettings, LineSecretSettings):
    ingress_port: int = 8080
