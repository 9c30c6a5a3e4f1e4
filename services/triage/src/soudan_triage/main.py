"""``soudan-triage``: the service, and two commands for checking its rules by hand.

- ``soudan-triage`` (no command): run the service.
- ``soudan-triage hours [--at 2026-12-24T16:59:59+09:00] [--config DIR] [--files-only]``:
  print ``{"open": …, "accepting": …, "next_open": "<ISO-8601 with offset>" | null}``, from the
  hours in force: the YAML file with the console's edits (date overrides included) read from
  ``MONGODB_URL`` (or ``MONGODB_URL_FILE``), exactly as the running service decides.
  ``--files-only``, or no ``MONGODB_URL``, reads the file alone (said on stderr).
- ``soudan-triage detect [--config DIR]``: read one message per line on stdin, write one JSON
  object per line: ``{"urgent": …, "keywords": [...], "matches": [...], "risks": [...]}``
  (each risk ``{category, term, match}``).

The commands read the YAML files of ``--config`` (default ``SOUDAN_CONFIG_DIR``, else
``deploy/config``); they need no broker. ``detect`` reads the files only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from soudan_shared.config import ConfigError, HoursConfig, SoudanConfig, load_config
from soudan_shared.config_store import ConfigSource
from soudan_shared.contracts import utcnow
from soudan_shared.runtime import serve, setup_logging
from soudan_shared.settings import load_settings
from soudan_shared.store import open_store

from soudan_triage.app import SERVICE, create_app
from soudan_triage.hours import Hours
from soudan_triage.risk import load_lexicon
from soudan_triage.settings import TriageSettings
from soudan_triage.urgency import Detector

PROG = "soudan-triage"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Soudan triage: run the service, or check hours and keywords."
    )
    commands = parser.add_subparsers(dest="command", metavar="{hours,detect}")
    hours = commands.add_parser("hours", help="is the service open at a moment?")
    hours.add_argument(
        "--at",
        type=_aware_datetime,
        default=None,
        help="ISO-8601 time with its offset, e.g. 2026-12-24T16:59:59+09:00 (default: now)",
    )
    hours.add_argument("--config", type=Path, default=None, help="configuration directory")
    hours.add_argument(
        "--files-only", action="store_true", help="ignore the console's edits in the store"
    )
    detect = commands.add_parser("detect", help="urgency of each line of stdin, as JSON lines")
    detect.add_argument("--config", type=Path, default=None, help="configuration directory")
    args = parser.parse_args(argv)

    if args.command == "hours":
        status = Hours(_hours_in_force(args.config, files_only=args.files_only)).status(
            args.at or utcnow()
        )
        print(json.dumps(status.to_json(), ensure_ascii=False))
    elif args.command == "detect":
        directory = _config_dir(args.config)
        lexicon = load_lexicon(directory)
        _detect(Detector(_config(directory).keywords.extra, lexicon))
    else:
        _serve()


def _serve() -> None:
    settings = load_settings(TriageSettings, PROG)
    _config(settings.soudan_config_dir)  # refuse to start on a broken configuration
    setup_logging(settings, SERVICE)
    serve(create_app(settings), settings.triage_port)


def _detect(detector: Detector) -> None:
    for line in sys.stdin:
        detection = detector.detect(line.rstrip("\r\n"))
        sys.stdout.write(json.dumps(detection.to_json(), ensure_ascii=False) + "\n")
        sys.stdout.flush()


def _hours_in_force(directory: Path | None, *, files_only: bool) -> HoursConfig:
    """The hours the running service decides with: the file, with the console's edits."""
    files = _config(directory)
    url = None
    if not files_only:
        url = os.environ.get("MONGODB_URL") or _read_file(os.environ.get("MONGODB_URL_FILE"))
        if not url:
            print(
                f"{PROG}: MONGODB_URL is not set: the console's edits are not read, only the files",
                file=sys.stderr,
            )
    if url is None:
        return files.hours

    async def read() -> HoursConfig:
        store = await open_store(url)
        try:
            source = ConfigSource(_config_dir(directory), store.db)
            return (await source.get()).hours
        finally:
            await store.close()

    try:
        return asyncio.run(read())
    except ConfigError as exc:
        print(f"{PROG}: configuration: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as exc:  # the store is down or refuses: say so, never guess
        print(f"{PROG}: the store cannot be read ({type(exc).__name__})", file=sys.stderr)
        raise SystemExit(1) from None


def _aware_datetime(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {value!r}") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give the offset too, e.g. {value}+09:00")
    return moment


def _read_file(path: str | None) -> str | None:
    if not path:
        return None
    try:
        return Path(path).read_text(encoding="utf-8").strip() or None
    except OSError:
        print(f"{PROG}: MONGODB_URL_FILE cannot be read", file=sys.stderr)
        raise SystemExit(2) from None


def _config_dir(directory: Path | None) -> Path:
    return directory or Path(os.environ.get("SOUDAN_CONFIG_DIR", "deploy/config"))


def _config(directory: Path | None) -> SoudanConfig:
    path = _config_dir(directory)
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"{PROG}: configuration: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
