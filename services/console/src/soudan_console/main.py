"""``soudan-console``: the web console for staff; ``soudan-console create-admin`` adds an admin."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from datetime import timedelta
from pathlib import Path

from soudan_shared.bus import Bus, PublishFailed
from soudan_shared.config_store import ConfigSource
from soudan_shared.facts import Facts
from soudan_shared.runtime import serve, setup_logging
from soudan_shared.settings import load_settings
from soudan_shared.store import open_store

from soudan_console.app import SERVICE, create_app
from soudan_console.core import Console
from soudan_console.domain import INDEXES
from soudan_console.live import Hub
from soudan_console.mail import SmtpMailer
from soudan_console.security import Sessions
from soudan_console.settings import ConsoleSettings
from soudan_console.staff import StaffError, create_staff


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="soudan-console",
        description="Run the Soudan web console (no command), or manage staff accounts.",
    )
    commands = parser.add_subparsers(dest="command")
    create = commands.add_parser(
        "create-admin",
        help="create an admin account (it must change its password at first sign-in)",
    )
    create.add_argument("--email", required=True)
    create.add_argument("--name", default="管理者")
    create.add_argument(
        "--password-file",
        type=Path,
        help="read the password from this file (default: ask on the terminal)",
    )
    args = parser.parse_args(argv)
    settings = load_settings(ConsoleSettings, "soudan-console")
    setup_logging(settings, SERVICE)
    if args.command == "create-admin":
        if args.password_file is not None:
            password = args.password_file.read_text(encoding="utf-8").rstrip("\r\n")
        else:
            password = getpass.getpass("password: ")
            if getpass.getpass("again: ") != password:
                sys.exit("soudan-console: the two passwords differ")
        sys.exit(asyncio.run(create_admin(settings, args.email, args.name, password)))
    serve(create_app(settings), settings.console_port)


async def create_admin(settings: ConsoleSettings, email: str, name: str, password: str) -> int:
    """Create the admin in the store, and publish ``staff.created`` if the broker answers."""
    store = await open_store(settings.mongodb_url.get_secret_value())
    await store.ensure_indexes(INDEXES)
    bus = Bus(
        settings.rabbitmq_url.get_secret_value(),
        topology=settings.topology(),
        service=SERVICE,
    )
    bus.start()
    try:
        try:
            await bus.wait_started(15)
        except TimeoutError:
            print(
                "soudan-console: the broker did not answer; the fact staff.created is kept "
                "in the outbox and published when the console runs",
                file=sys.stderr,
            )
        console = Console(
            settings=settings,
            db=store.db,
            bus=bus,
            facts=Facts(bus, SERVICE),
            config=ConfigSource(settings.soudan_config_dir, None),
            sessions=Sessions(
                store.db, secret=None, idle=timedelta(minutes=1), lifetime=timedelta(hours=1)
            ),
            hub=Hub(),
            mailer=SmtpMailer(settings),
        )
        try:
            staff = await create_staff(
                console, email=email, name=name, role="admin", password=password, by="cli"
            )
        except StaffError as exc:
            print(f"soudan-console: {exc}", file=sys.stderr)
            return 1
        except PublishFailed:
            return 1
        print(
            f"created admin {staff.email} ({staff.id}); the password must be changed at the "
            "first sign-in"
        )
        return 0
    finally:
        await bus.close()
        await store.close()
