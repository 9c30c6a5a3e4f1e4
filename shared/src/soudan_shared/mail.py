"""Outgoing e-mail over SMTP (aiosmtplib), retried with a doubling pause.

One implementation for every service that mails (the console's emergency notice, the monthly
report): the ``SMTP_*`` settings are the same names everywhere (:class:`SmtpSettings`), STARTTLS,
authentication and a private CA are settings, and :func:`send_mail` never raises for a mail
server's failure: it returns a :class:`MailResult` the caller records as a fact. Nothing here
logs the password or the mail's content.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import structlog
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings

log = structlog.get_logger(__name__)


class SmtpSettings(BaseSettings):
    """``SMTP_HOST`` empty means mail is not configured; everything else has a default."""

    smtp_host: str = ""
    smtp_port: int = 587
    smtp_username: str = ""
    smtp_password: SecretStr = SecretStr("")
    smtp_starttls: bool = True
    smtp_from: str = "soudan@localhost"
    smtp_ca_file: Path | None = Field(
        default=None, description="CA bundle for a mail server with a private certificate."
    )
    smtp_timeout_seconds: float = 30.0

    @property
    def smtp_configured(self) -> bool:
        return bool(self.smtp_host)


@dataclass(frozen=True)
class MailResult:
    sent: bool
    attempts: int
    reason: str = ""


async def send_mail(
    message: EmailMessage,
    settings: SmtpSettings,
    *,
    attempts: int,
    first_pause: float,
    purpose: str,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> MailResult:
    """Send ``message``; on failure try again up to ``attempts`` times, the pause doubling."""
    pause = first_pause
    reason = ""
    for attempt in range(1, attempts + 1):
        try:
            await aiosmtplib.send(
                message,
                hostname=settings.smtp_host,
                port=settings.smtp_port,
                username=settings.smtp_username or None,
                password=settings.smtp_password.get_secret_value() or None,
                start_tls=settings.smtp_starttls,
                cert_bundle=str(settings.smtp_ca_file) if settings.smtp_ca_file else None,
                timeout=settings.smtp_timeout_seconds,
            )
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            reason = f"{type(exc).__name__}: {exc}"[:300]
            log.warning(
                "mail_attempt_failed",
                purpose=purpose,
                attempt=attempt,
                attempts=attempts,
                host=settings.smtp_host,
                reason=reason,
            )
            if attempt < attempts:
                await sleep(pause)
                pause *= 2
            continue
        log.info("mail_sent", purpose=purpose, attempt=attempt)
        return MailResult(True, attempt)
    return MailResult(False, attempts, reason)
