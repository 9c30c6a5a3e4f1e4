"""Starting a service: a port that is already taken stops it with one clear line; the loop
it runs on."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
from aiohttp import web
from soudan_shared.runtime import (
    EVENT_LOOP_ENV,
    PortInUse,
    event_loop_name,
    new_event_loop,
    run_async,
    start_site,
)

pytestmark = pytest.mark.unit

SERVE = (
    "from aiohttp import web; from soudan_shared.runtime import serve; "
    "serve(web.Application(), {port}, host='127.0.0.1')"
)


@pytest.fixture
def taken_port() -> Iterator[int]:
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        yield holder.getsockname()[1]
    finally:
        holder.close()


def test_a_second_service_on_a_port_in_use_exits_with_one_clear_line(taken_port: int) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SERVE.format(port=taken_port)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == [
        f"cannot listen on 127.0.0.1:{taken_port}: the port is already in use "
        "(another instance running? set a free port); stopping"
    ]


async def test_a_site_started_in_a_running_loop_on_a_port_in_use_says_so(
    taken_port: int,
) -> None:
    with pytest.raises(PortInUse, match=f"127.0.0.1:{taken_port}: the port is already in use"):
        await start_site(web.Application(), taken_port, "127.0.0.1")


def test_a_service_runs_on_uvloop_unless_told_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    async def running_loop() -> str:
        return event_loop_name(asyncio.get_running_loop())

    monkeypatch.delenv(EVENT_LOOP_ENV, raising=False)
    assert run_async(running_loop()) == "uvloop"
    monkeypatch.setenv(EVENT_LOOP_ENV, "asyncio")
    assert run_async(running_loop()) == "asyncio"
    monkeypatch.setenv(EVENT_LOOP_ENV, "trio")
    with pytest.raises(SystemExit, match="SOUDAN_EVENT_LOOP must be one of uvloop, asyncio"):
        new_event_loop()
