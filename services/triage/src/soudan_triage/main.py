"""``soudan-triage``: the service, and two commands for checking its rules by hand.

- ``soudan-triage`` (no command): run the service.
- ``soudan-triage hours [--at 2026-12-24T16:59:59+09:00] [--config DIR]``: print
  ``{"open": …, "accepting": …, "next_open": "<ISO-8601 with offset>" | null}``.
- ``soudan-triage detect [--config DIR]``: read one message per line on stdin, write one JSON
  object per line: ``{"urgent": …, "keywords": [...], "matches": [...]}``.

The commands read the YAML files of ``--config`` (default ``SOUDAN_CONFIG_DIR``, else
``deploy/config``); they need neither broker nor store, so they ignore the console's edits.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from soudan_shared.config import ConfigError, SoudanConfig, load_config
from soudan_shared.contracts import utcnow
from soudan_shared.runtime import serve, setup_logging
from soudan_shared.settings import load_settings

from soudan_triage.app import SERVICE, create_app
from soudan_triage.hours import Hours
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
    detect = commands.add_parser("detect", help="urgency of each line of stdin, as JSON lines")
    detect.add_argument("--config", type=Path, default=None, help="configuration directory")
    args = parser.parse_args(argv)

    if args.command == "hours":
        status = Hours(_config(args.config).hours).status(args.at or utcnow())
        print(json.dumps(status.to_json(), ensure_ascii=False))
    elif args.command == "detect":
        _detect(Detector(_config(args.config).keywords.extra))
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


def _aware_datetime(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {value!r}") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give the offset too, e.g. {value}+09:00")
    return moment


def _config(directory: Path | None) -> SoudanConfig:
    path = directory or Path(os.environ.get("SOUDAN_CONFIG_DIR", "deploy/config"))
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"{PROG}: configuration: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
