from __future__ import annotations

from pathlib import Path

from pydantic import Field
from soudan_shared.mail import SmtpSettings
from soudan_shared.settings import BaseServiceSettings, MongoSettings

IPAEX_GOTHIC = Path("/usr/share/fonts/opentype/ipaexfont-gothic/ipaexg.ttf")


class ReportingSettings(BaseServiceSettings, MongoSettings, SmtpSettings):
    reporting_port: int = 8084

    # -- the monthly report ------------------------------------------------------------------
    reports_dir: Path = Field(
        default=Path("reports"),
        description="Where soudan-report-YYYY-MM.xlsx and .pdf are written (and kept).",
    )
    report_font_path: Path = Field(
        default=IPAEX_GOTHIC,
        description="A Japanese TrueType font embedded in the PDF (Debian: fonts-ipaexfont).",
    )
    report_password_max_age_days: int = Field(
        default=90, ge=1, description="Staff passwords older than this are named in the report."
    )
    report_token_max_age_days: int = Field(
        default=90, ge=1, description="A LINE channel token older than this is flagged."
    )
    report_recipients: str = Field(
        default="", description="Comma-separated addresses that receive the report by mail."
    )
    report_email_attempts: int = Field(default=5, ge=1)
    report_email_backoff_seconds: float = Field(
        default=30.0, ge=0, description="First wait between attempts; doubles each time."
    )

    @property
    def recipients(self) -> list[str]:
        return [a.strip() for a in self.report_recipients.split(",") if a.strip()]

    @property
    def email_configured(self) -> bool:
        return bool(self.smtp_host and self.recipients)
