"""A SecantusDB server as a child process, for tests, development and the demo.

SecantusDB (PyPI ``SecantusDB``, daemon ``secantusd-py``) is a third-party single-node MongoDB
server on WiredTiger with the real wire protocol. It is GPL-2.0: it is only ever started as a
separate program here, never imported, and it is not in the runtime image.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymongo

DAEMON = "secantusd-py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def daemon_path() -> str:
    """``secantusd-py`` beside this interpreter (the venv's bin/), else on PATH."""
    beside = Path(sys.executable).with_name(DAEMON)
    if beside.exists():
        return str(beside)
    found = shutil.which(DAEMON)
    if found is None:
        raise RuntimeError(f"{DAEMON} not found: install the dev dependencies (make install)")
    return found


@dataclass
class SecantusServer:
    process: subprocess.Popen[bytes]
    port: int
    data_dir: Path

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    def stop(self, timeout: float = 20) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)


def start_secantus(
    data_dir: Path, *, port: int | None = None, test_commands: bool = True, timeout: float = 60
) -> SecantusServer:
    """Start ``secantusd-py`` on ``port`` (a free one if None) with its data in ``data_dir`` and
    wait until it answers ``ping``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    args = [daemon_path(), "--host", "127.0.0.1", "--port", str(port)]
    args += ["--storage-path", str(data_dir), "--log-level", "WARNING"]
    if test_commands:
        args.append("--enable-test-commands")
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL)  # noqa: S603
    server = SecantusServer(process, port, data_dir)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{DAEMON} exited with {process.returncode} before answering")
        if _answers(server.url):
            return server
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"{DAEMON} did not answer on port {port} within {timeout} s")
        time.sleep(0.2)


def _answers(url: str) -> bool:
    with contextlib.suppress(Exception):
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            url, serverSelectionTimeoutMS=500, connectTimeoutMS=500
        )
        try:
            client.admin.command("ping")
            return True
        finally:
            client.close()
    return False
