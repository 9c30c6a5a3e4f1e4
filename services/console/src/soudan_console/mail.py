"""Outgoing e-mail (aiosmtplib): the emergency notice to the configured recipients."""

from __future__ import annotations

import asyncio
from email.message import EmailMessage
from typing import Protocol

import aiosmtplib
import structlog

from soudan_console.settings import ConsoleSettings

log = structlog.get_logger(__name__)


class Mailer(Protocol):
    @property
    def configured(self) -> bool: ...

    async def send(self, recipients: list[str], subject: str, body: str) -> None: ...


class SmtpMailer:
    """Sends through ``SMTP_HOST``; STARTTLS when ``SMTP_STARTTLS`` is true."""

    def __init__(self, settings: ConsoleSettings, *, attempts: int = 3, delay: float = 2.0):
        self._settings = settings
        self._attempts = attempts
        self._delay = delay

    @property
    def configured(self) -> bool:
        return bool(self._settings.smtp_host)

    async def send(self, recipients: list[str], subject: str, body: str) -> None:
        s = self._settings
        message = EmailMessage()
        message["From"] = s.smtp_from
        message["To"] = ", ".join(recipients)
        message["Subject"] = subject
        message.set_content(body)
        last: Exception | None = None
        for attempt in range(1, self._attempts + 1):
            try:
                await aiosmtplib.send(
                    message,
                    hostname=s.smtp_host,
                    port=s.smtp_port,
                    username=s.smtp_username or None,
                    password=s.smtp_password.get_secret_value() if s.smtp_password else None,
                    start_tls=s.smtp_starttls,
                    timeout=15,
                )
                return
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                last = exc
                log.warning("smtp_send_failed", attempt=attempt, error=type(exc).__name__)
                if attempt < self._attempts:
                    await asyncio.sleep(self._delay * attempt)
        raise MailFailed(f"{type(last).__name__}: {last}"[:300], self._attempts)


class MailFailed(Exception):
    def __init__(self, reason: str, attempts: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.attempts = attempts
