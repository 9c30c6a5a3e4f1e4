"""Outgoing e-mail: the emergency notice to the configured recipients (``soudan_shared.mail``)."""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Protocol

from soudan_shared.mail import send_mail

from soudan_console.settings import ConsoleSettings


class Mailer(Protocol):
    @property
    def configured(self) -> bool: ...

    async def send(self, recipients: list[str], subject: str, body: str) -> None: ...


class SmtpMailer:
    """Sends through ``SMTP_HOST``; STARTTLS when ``SMTP_STARTTLS`` is true.

    An emergency notice is urgent: a few quick tries, then :class:`MailFailed` so the console
    records the failure (the live alert to supervisors has gone out regardless).
    """

    def __init__(self, settings: ConsoleSettings, *, attempts: int = 3, delay: float = 2.0):
        self._settings = settings
        self._attempts = attempts
        self._delay = delay

    @property
    def configured(self) -> bool:
        return self._settings.smtp_configured

    async def send(self, recipients: list[str], subject: str, body: str) -> None:
        s = self._settings
        message = EmailMessage()
        message["From"] = s.smtp_from
        message["To"] = ", ".join(recipients)
        message["Subject"] = subject
        message["Date"] = formatdate(localtime=False)
        message["Message-ID"] = make_msgid(domain=s.smtp_from.rpartition("@")[2] or None)
        message.set_content(body)
        result = await send_mail(
            message, s, attempts=self._attempts, first_pause=self._delay, purpose="emergency"
        )
        if not result.sent:
            raise MailFailed(result.reason, result.attempts)


class MailFailed(Exception):
    def __init__(self, reason: str, attempts: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.attempts = attempts
