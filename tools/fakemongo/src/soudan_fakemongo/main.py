"""``soudan-fakemongo``: serve mongomock over the MongoDB wire protocol (NOT MongoDB; tests,
development and benchmarks only).

``soudan-fakemongo --host 127.0.0.1 --port 27017`` serves until SIGTERM or SIGINT and prints one
JSON line on stdout once listening: ``{"fakemongo": "listening", "host": …, "port": …, "url": …}``
(``--port 0`` takes a free port; the line says which).

``soudan-fakemongo --port 0 --exec CMD ARGS…`` serves in the background, runs ``CMD`` with
``MONGODB_URL`` set to the server's URL, stops the server when it ends (whatever way) and exits
with its status: how ``make test`` runs its second pass.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from typing import Any

import structlog

from soudan_fakemongo.server import WARNING, FakeMongoServer

log = structlog.get_logger("soudan_fakemongo")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="soudan-fakemongo",
        description="NOT MongoDB: mongomock behind the MongoDB wire protocol, in memory; for "
        "tests, development and benchmarks only.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=27017, help="listen port; 0 for a free one")
    parser.add_argument("--log-level", default="INFO", help="standard logging level (default INFO)")
    parser.add_argument(
        "--exec",
        dest="command",
        nargs=argparse.REMAINDER,
        help="run this command with MONGODB_URL set, then stop (must come last)",
    )
    return parser


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr, format="%(message)s")
    structlog.configure(
        processors=[
            structlog.stdlib.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
    )


def _announce(server: FakeMongoServer) -> None:
    line = {"fakemongo": "listening", "host": server.host, "port": server.port, "url": server.url}
    print(json.dumps(line), flush=True)


async def _serve(
    host: str,
    port: int,
    stop: asyncio.Event | None = None,
    ready: threading.Event | None = None,
    box: dict[str, Any] | None = None,
) -> None:
    server = FakeMongoServer(host, port)
    await server.start()
    stop = stop or asyncio.Event()
    if box is not None:
        box["server"] = server
        box["loop"] = asyncio.get_running_loop()
        box["stop"] = stop
    log.warning("fakemongo_not_mongodb", detail=WARNING, url=server.url)
    if ready is None:
        # Before the announcement: whoever waits for it may stop us at once.
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    _announce(server)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        await server.stop()
        log.info("fakemongo_stopped")


def _exec(host: str, port: int, command: list[str]) -> int:
    """Serve on a thread, run ``command`` with MONGODB_URL, always stop the server."""
    ready = threading.Event()
    box: dict[str, Any] = {}

    def serve() -> None:
        try:
            asyncio.run(_serve(host, port, ready=ready, box=box))
        except OSError as exc:
            box["error"] = exc
            ready.set()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    if not ready.wait(30) or "server" not in box:
        reason = box.get("error", "no answer within 30 s")
        print(f"soudan-fakemongo: cannot listen on {host}:{port}: {reason}", file=sys.stderr)
        return 1
    env = dict(os.environ, MONGODB_URL=box["server"].url)
    child = subprocess.Popen(command, env=env)  # noqa: S603 - the caller's own command
    # Ctrl-C reaches the child through the process group; pass SIGTERM on and wait for it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: child.terminate())
    try:
        status = child.wait()
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(10)
    return status


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    _configure_logging(args.log_level)
    if args.command is not None:
        if not args.command:
            _parser().error("--exec needs a command")
        sys.exit(_exec(args.host, args.port, args.command))
    try:
        asyncio.run(_serve(args.host, args.port))
    except OSError as exc:
        print(f"soudan-fakemongo: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
