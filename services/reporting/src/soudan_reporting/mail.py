"""E-mailing the report files to the section over SMTP (aiosmtplib), retried on failure.

STARTTLS (``SMTP_STARTTLS``), authentication (``SMTP_USERNAME``/``SMTP_PASSWORD``) and a private
CA (``SMTP_CA_FILE``) are settings. Every failure is retried after a doubling pause
(``REPORT_EMAIL_ATTEMPTS``, ``REPORT_EMAIL_BACKOFF_SECONDS``); the caller records the outcome as
a fact. Nothing here logs the password or the mail's content.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

import structlog
from soudan_shared.mail import MailResult, send_mail

from soudan_reporting.month import Month
from soudan_reporting.settings import ReportingSettings

log = structlog.get_logger(__name__)

XLSX_TYPE = ("application", "vnd.openxmlformats-officedocument.spreadsheetml.sheet")
PDF_TYPE = ("application", "pdf")


def report_message(
    month: Month, files: tuple[Path, ...], settings: ReportingSettings, *, summary: str = ""
) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = f"SNSを活用した相談業務 実績報告書（{month.label}）"
    message["From"] = settings.smtp_from
    message["To"] = ", ".join(settings.recipients)
    message["Date"] = formatdate(localtime=False)
    domain = settings.smtp_from.rpartition("@")[2] or "soudan.invalid"
    message["Message-ID"] = make_msgid(domain=domain)
    body = [
        "生徒指導・学校安全課 御中",
        "",
        f"SNSを活用した相談業務の実績報告書（{month.label}分）をお送りします。",
        "",
        "添付ファイル:",
        *(f"・{path.name}" for path in files),
    ]
    if summary:
        body += ["", summary]
    body += ["", "このメールは相談システム（Soudan）から自動で送っています。"]
    message.set_content("\n".join(body) + "\n")
    for path in files:
        maintype, subtype = XLSX_TYPE if path.suffix == ".xlsx" else PDF_TYPE
        message.add_attachment(
            path.read_bytes(), maintype=maintype, subtype=subtype, filename=path.name
        )
    return message


async def send_with_retry(
    message: EmailMessage,
    settings: ReportingSettings,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> MailResult:
    """Mail the report, tried ``REPORT_EMAIL_ATTEMPTS`` times with a doubling pause."""
    return await send_mail(
        message,
        settings,
        attempts=settings.report_email_attempts,
        first_pause=settings.report_email_backoff_seconds,
        purpose="monthly_report",
        sleep=sleep,
    )
