"""The report by e-mail: a real SMTP server in the test process (aiosmtpd) receives it."""

from __future__ import annotations

import email
import email.policy
import ssl
import subprocess
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from soudan_reporting.factgen import MonthGenerator, store_facts
from soudan_reporting.jobs import produce_report
from soudan_reporting.month import Month
from soudan_reporting.recorder import EVENTS
from soudan_reporting.settings import ReportingSettings
from soudan_shared import fact_types as ft
from soudan_shared.store import Store
from soudan_shared.testing.proxy import free_port

pytestmark = pytest.mark.integration
OCTOBER = Month(2026, 10)


class Inbox:
    """An SMTP handler that keeps what it is sent; it can turn the first messages away."""

    def __init__(self, refuse_first: int = 0) -> None:
        self.messages: list[tuple[Envelope, EmailMessage]] = []
        self.refused = 0
        self.refuse_first = refuse_first

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        if self.refused < self.refuse_first:
            self.refused += 1
            return "451 4.3.0 Try again later"
        assert isinstance(envelope.content, bytes)
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append((envelope, message))
        return "250 OK"


class Accounts:
    def __init__(self, user: str, password: str) -> None:
        self.user, self.password = user.encode(), password.encode()
        self.logins: list[bytes] = []

    def __call__(
        self, server: Any, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            self.user,
            self.password,
        )
        if ok:
            self.logins.append(data.login)
        return AuthResult(success=ok)


@pytest.fixture
def smtp_server() -> Iterator[Callable[..., tuple[Inbox, int]]]:
    controllers: list[Controller] = []

    def start(inbox: Inbox, **options: Any) -> tuple[Inbox, int]:
        port = free_port()
        controller = Controller(inbox, hostname="127.0.0.1", port=port, **options)
        controller.start()
        controllers.append(controller)
        return inbox, port

    yield start
    for controller in controllers:
        controller.stop()


@pytest.fixture
async def small_month(store: Store) -> Store:
    await store_facts(
        store.db[EVENTS], MonthGenerator(OCTOBER, cases=20, webhook_every_minutes=1440).facts()
    )
    return store


async def _facts(store: Store, fact_type: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = await store.db[EVENTS].find({"type": fact_type}).to_list()
    return found


async def test_the_report_arrives_by_mail_with_both_files_attached(
    small_month: Store,
    smtp_server: Callable[..., tuple[Inbox, int]],
    make_settings: Callable[..., ReportingSettings],
) -> None:
    inbox, port = smtp_server(Inbox())
    settings = make_settings(
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_starttls=False,
        smtp_from="soudan@example.jp",
        report_recipients="section@example.jp, chief@example.jp",
    )

    produced = await produce_report(small_month.db, OCTOBER, settings, trigger="manual", email=True)

    assert produced.mail is not None
    assert produced.mail.sent
    assert len(inbox.messages) == 1
    envelope, message = inbox.messages[0]
    assert envelope.rcpt_tos == ["section@example.jp", "chief@example.jp"]
    assert message["Subject"] == "SNSを活用した相談業務 実績報告書（2026年10月）"
    attachments = {part.get_filename(): part for part in message.iter_attachments()}
    assert set(attachments) == {"soudan-report-2026-10.xlsx", "soudan-report-2026-10.pdf"}
    assert attachments["soudan-report-2026-10.pdf"].get_content_type() == "application/pdf"
    for path in produced.built.files:
        assert attachments[path.name].get_content() == path.read_bytes()
    body = message.get_body(("plain",))
    assert body is not None
    assert "チェックリスト: 適合" in body.get_content()
    emailed = await _facts(small_month, ft.REPORT_EMAILED)
    assert [f["data"] for f in emailed] == [{"month": "2026-10", "recipients": 2}]
    built = await _facts(small_month, ft.REPORT_BUILT)
    assert built[0]["data"]["files"] == ["soudan-report-2026-10.xlsx", "soudan-report-2026-10.pdf"]
    assert built[0]["data"]["trigger"] == "manual"


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


async def test_the_mail_goes_over_starttls_with_a_login_when_configured(
    small_month: Store,
    smtp_server: Callable[..., tuple[Inbox, int]],
    make_settings: Callable[..., ReportingSettings],
    certificate: tuple[Path, Path],
) -> None:
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    accounts = Accounts("soudan", "s3cret-pass")
    inbox, port = smtp_server(
        Inbox(),
        tls_context=context,
        require_starttls=True,
        authenticator=accounts,
        auth_required=True,
    )
    settings = make_settings(
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_starttls=True,
        smtp_ca_file=cert,
        smtp_username="soudan",
        smtp_password="s3cret-pass",
        report_recipients="section@example.jp",
        report_email_attempts=1,
    )

    produced = await produce_report(small_month.db, OCTOBER, settings, trigger="manual", email=True)

    assert produced.mail is not None
    assert produced.mail.sent, produced.mail.reason
    assert accounts.logins == [b"soudan"]
    assert len(inbox.messages) == 1


async def test_a_refused_mail_is_sent_again_until_the_server_takes_it(
    small_month: Store,
    smtp_server: Callable[..., tuple[Inbox, int]],
    make_settings: Callable[..., ReportingSettings],
) -> None:
    inbox, port = smtp_server(Inbox(refuse_first=2))
    settings = make_settings(
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_starttls=False,
        report_recipients="section@example.jp",
        report_email_attempts=3,
        report_email_backoff_seconds=0,
    )

    produced = await produce_report(small_month.db, OCTOBER, settings, trigger="manual", email=True)

    assert produced.mail is not None
    assert (produced.mail.sent, produced.mail.attempts) == (True, 3)
    assert inbox.refused == 2
    assert len(inbox.messages) == 1


async def test_a_mail_that_never_goes_is_recorded_as_failed_after_every_attempt(
    small_month: Store,
    make_settings: Callable[..., ReportingSettings],
) -> None:
    settings = make_settings(
        smtp_host="127.0.0.1",
        smtp_port=free_port(),  # nobody listens
        smtp_starttls=False,
        smtp_password="never-logged",
        report_recipients="section@example.jp",
        report_email_attempts=2,
        report_email_backoff_seconds=0,
    )

    produced = await produce_report(
        small_month.db, OCTOBER, settings, trigger="schedule", email=True
    )

    assert produced.mail is not None
    assert not produced.mail.sent
    assert produced.built.pdf.is_file()
    failed = await _facts(small_month, ft.REPORT_EMAIL_FAILED)
    assert len(failed) == 1
    assert failed[0]["data"]["attempts"] == 2
    assert failed[0]["data"]["month"] == "2026-10"
    assert "never-logged" not in failed[0]["data"]["reason"]
    assert await _facts(small_month, ft.REPORT_EMAILED) == []
