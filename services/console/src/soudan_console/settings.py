from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from soudan_shared.mail import SmtpSettings
from soudan_shared.settings import BaseServiceSettings, MongoSettings


class ConsoleSettings(BaseServiceSettings, MongoSettings, SmtpSettings):
    console_port: int = 8081

    console_admin_email: str | None = Field(
        default=None, description="First admin, created at start when no staff account exists."
    )
    console_admin_password: SecretStr | None = None
    console_session_secret: SecretStr | None = Field(
        default=None,
        description="Key of the HMAC under which session ids are stored (a leaked database then "
        "holds no usable session); changing it signs everybody out.",
    )
    console_development: bool = Field(
        default=False,
        description="true drops the Secure flag of the session cookie (plain http on localhost).",
    )
    console_base_url: str = Field(
        default="", description="The console's address as staff reach it, for links in e-mails."
    )
    console_password_max_age_days: int = Field(default=90, ge=1)
    console_password_min_length: int = Field(default=12, ge=12)
    console_password_history: int = Field(
        default=5, ge=1, le=24, description="A new password may be none of this many last ones."
    )
    console_lockout_threshold: int = Field(default=5, ge=1)
    console_lockout_minutes: int = Field(default=30, ge=1)
    console_account_failure_limit: int = Field(
        default=30,
        ge=1,
        description=(
            "Failed sign-ins on one account from all addresses together, after which every "
            "attempt on it is refused for console_lockout_minutes (the per-address limit is "
            "console_lockout_threshold). Open sessions are never ended by failures."
        ),
    )
    console_source_failure_limit: int = Field(
        default=20,
        ge=1,
        description=(
            "Failed sign-ins from one client address, across all accounts, after which that "
            "address is refused for the rest of the window (password spraying)."
        ),
    )
    console_source_failure_window_minutes: int = Field(default=10, ge=1)
    console_device_trust_days: int = Field(
        default=90,
        ge=1,
        description=(
            "A browser its owner fully signed in with is remembered this long (a cookie with a "
            "random token): failures by others do not stop sign-in from it; its own failures "
            "count on it alone, console_lockout_threshold of them and it is treated like any "
            "other browser until the next sign-in from it."
        ),
    )
    console_idle_timeout_minutes: int = Field(default=30, ge=1)
    console_session_max_hours: int = Field(default=12, ge=1)
    console_live_recheck_seconds: float = Field(
        default=5.0,
        gt=0,
        le=60,
        description="How often an open live stream checks that its session still holds.",
    )
    console_urgent_alert_minutes: int = Field(
        default=5, ge=1, description="Alert supervisors when an urgent case waits this long."
    )
    console_failed_reply_alert_minutes: int = Field(
        default=5,
        ge=1,
        description="Alert supervisors when a counselor's reply stays undelivered this long "
        "(the counselor who wrote it is alerted at once).",
    )

    console_broadcast_repeat_window_hours: float = Field(
        default=24.0,
        ge=0,
        description="Sending an announcement again within this many hours of the same one "
        "(automatic broadcasts included) needs a second, explicit confirmation; 0 turns it off.",
    )

    console_budget_warn_percent: float = Field(
        default=80.0,
        gt=0,
        le=100,
        description="The broadcast page warns when this much of the month's LINE messages is used.",
    )
    console_budget_alert_percent: float = Field(
        default=95.0, gt=0, le=100, description="…and warns strongly from this much on."
    )

    emergency_recipients: str = Field(
        default="", description="Comma-separated addresses e-mailed when an emergency is raised."
    )

    reports_dir: Path = Path("reports")

    @property
    def emergency_recipient_list(self) -> list[str]:
        return [a.strip() for a in self.emergency_recipients.split(",") if a.strip()]
