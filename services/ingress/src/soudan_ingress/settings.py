from __future__ import annotations

from pydantic import Field
from soudan_shared.settings import BaseServiceSettings, LineSecretSettings


class IngressSettings(BaseServiceSettings, LineSecretSettings):
    ingress_port: int = 8080
    ingress_confirm_timeout: float = Field(
        default=1.0,
        gt=0,
        lt=2,
        description=(
            "Seconds the webhook waits for the broker to confirm every event of a request "
            "before answering 503. LINE counts a webhook not answered within 2 s as failed."
        ),
    )
