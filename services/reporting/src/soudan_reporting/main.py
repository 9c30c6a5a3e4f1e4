"""``soudan-reporting``: the service (recorder and report schedule), or one report on demand.

soudan-reporting                                   run the service
soudan-reporting build --month 2026-10 [--out DIR] [--email]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from soudan_shared.config import ConfigError
from soudan_shared.contracts import utcnow
from soudan_shared.runtime import serve, setup_logging
from soudan_shared.settings import load_settings
from soudan_shared.store import is_memory_url, open_store

from soudan_reporting.app import SERVICE, create_app
from soudan_reporting.jobs import produce_report
from soudan_reporting.month import Month
from soudan_reporting.pdf import FontMissing
from soudan_reporting.settings import ReportingSettings

PROGRAM = "soudan-reporting"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Record every fact and build the monthly report (実績報告書). "
        "Without a command, run the service.",
    )
    commands = parser.add_subparsers(dest="command")
    build = commands.add_parser(
        "build",
        help="build one month's report now (rebuilding it if it exists)",
        description="Build soudan-report-YYYY-MM.xlsx and .pdf from the events log.",
    )
    build.add_argument(
        "--month", help="the month, e.g. 2026-10 (default: the previous month in Tokyo)"
    )
    build.add_argument("--out", type=Path, help="directory for the files (default: REPORTS_DIR)")
    build.add_argument(
        "--email", action="store_true", help="also mail them to REPORT_RECIPIENTS over SMTP"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    month = None
    if args.command == "build":
        try:
            month = Month.parse(args.month) if args.month else Month.containing(utcnow()).previous()
        except ValueError as exc:
            parser.error(str(exc))
    settings = load_settings(ReportingSettings, PROGRAM)
    setup_logging(settings, SERVICE)
    if month is None:
        serve(create_app(settings), settings.reporting_port)
        return
    if args.email and not settings.email_configured:
        parser.error("--email needs SMTP_HOST and REPORT_RECIPIENTS")
    raise SystemExit(asyncio.run(_build(settings, month, args.out, email=args.email)))


async def _build(
    settings: ReportingSettings, month: Month, out: Path | None, *, email: bool
) -> int:
    url = settings.mongodb_url.get_secret_value()
    if is_memory_url(url):
        print(f"{PROGRAM}: MONGODB_URL is memory://: the report will be empty", file=sys.stderr)
    store = await open_store(url)
    try:
        produced = await produce_report(
            store.db, month, settings, trigger="manual", email=email, out_dir=out
        )
    except (FontMissing, ConfigError) as exc:
        print(f"{PROGRAM}: {exc}", file=sys.stderr)
        return 2
    finally:
        await store.close()
    for path in produced.built.files:
        print(path)
    if produced.mail is not None and not produced.mail.sent:
        print(
            f"{PROGRAM}: the report was built but not e-mailed after {produced.mail.attempts} "
            f"attempts: {produced.mail.reason}",
            file=sys.stderr,
        )
        return 1
    return 0
