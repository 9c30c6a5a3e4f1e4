from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, model_validator
from soudan_shared.settings import BaseServiceSettings, LineApiSettings, MongoSettings

LINE_API_HOST = "https://api.line.me"
LINE_API_DATA_HOST = "https://api-data.line.me"


class DispatchSettings(BaseServiceSettings, MongoSettings, LineApiSettings):
    dispatch_port: int = 8083
    line_channel_id: str | None = Field(default=None, description="with the signing key")
    line_channel_secret: SecretStr | None = Field(
        default=None, description="revokes issued v2.1 tokens"
    )
    line_assertion_signing_key: SecretStr | None = Field(
        default=None, description="private key (JWK JSON) of the assertion signing key pair"
    )
    line_assertion_key_id: str | None = Field(default=None, description="its kid from LINE")
    line_token_lifetime_days: int = Field(default=30, ge=1, le=30)
    line_token_renew_before_days: float = Field(default=7.0, gt=0)
    line_api_data_base_url: str | None = Field(
        default=None,
        description="Host of the blob endpoints (rich menu images). Default: api-data.line.me "
        "for the real API, else LINE_API_BASE_URL (a fake serves both).",
    )
    line_channel_access_token_file: Path | None = Field(
        default=None,
        description="When set, the token is read from this file and re-read whenever the file "
        "changes, so a rotated token takes effect without a restart.",
    )
    line_request_timeout: float = Field(default=10.0, gt=0, description="seconds per request")
    send_max_attempts: int = Field(default=5, ge=1, description="tries on 429, 5xx, timeouts")
    send_backoff_seconds: float = Field(default=0.5, gt=0, description="first backoff delay")
    send_backoff_max_seconds: float = Field(default=20.0, gt=0)
    reply_token_max_age: float = Field(
        default=50.0, gt=0, description="older reply tokens are not tried: push instead"
    )
    broadcast_rate: float = Field(
        default=180.0, gt=0, description="multicast requests/s (LINE allows 200)"
    )
    broadcast_concurrency: int = Field(default=16, ge=1, description="multicast requests in flight")
    line_monthly_reserve: int | None = Field(
        default=None,
        ge=0,
        description="messages of the month's quota kept for counselor replies and urgent "
        "answers; a broadcast that would leave fewer is refused. Default: a tenth of the limit",
    )
    line_quota_check_interval: float = Field(
        default=600.0, gt=0, description="seconds between readings of the month's quota"
    )
    broadcast_schedule: bool = Field(
        default=True, description="send the configured scheduled broadcasts"
    )
    broadcast_schedule_interval: float = Field(
        default=60.0, gt=0, description="seconds between checks"
    )

    richmenu_auto: bool = Field(
        default=True,
        description="apply the configured rich menu at start when the account has none or an "
        "earlier Soudan one (and again when the configuration changes)",
    )
    richmenu_font: Path | None = Field(default=None, description="a font with Japanese glyphs")
    richmenu_check_interval: float = Field(
        default=300.0, gt=0, description="seconds between checks of the configured menu"
    )
    richmenu_backoff_seconds: float = Field(default=5.0, gt=0, description="first retry pause")
    richmenu_backoff_max_seconds: float = Field(default=600.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _issued_tokens_need_no_static_token(cls, data: Any) -> Any:
        """LINE_CHANNEL_ACCESS_TOKEN is required, unless dispatch issues v2.1 tokens itself."""
        if (
            isinstance(data, dict)
            and data.get("line_assertion_signing_key")
            and not data.get("line_channel_access_token")
        ):
            return {**data, "line_channel_access_token": ""}
        return data

    @model_validator(mode="after")
    def _a_token_source(self) -> DispatchSettings:
        v21 = (self.line_channel_id, self.line_channel_secret, self.line_assertion_key_id)
        if self.issues_tokens and not all(v21):
            raise ValueError(
                "issuing v2.1 tokens needs LINE_CHANNEL_ID, LINE_CHANNEL_SECRET, "
                "LINE_ASSERTION_SIGNING_KEY and LINE_ASSERTION_KEY_ID together"
            )
        return self

    @property
    def issues_tokens(self) -> bool:
        return self.line_assertion_signing_key is not None

    def data_base_url(self) -> str:
        if self.line_api_data_base_url:
            return self.line_api_data_base_url.rstrip("/")
        base = self.line_api_base_url.rstrip("/")
        return LINE_API_DATA_HOST if base == LINE_API_HOST else base
