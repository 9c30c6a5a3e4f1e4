"""``soudan-all``: the five services in one process, as a user starts it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from soudan_shared.testing.proxy import free_port
from soudan_shared.testing.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

SERVICES = ("INGRESS", "CONSOLE", "TRIAGE", "DISPATCH", "REPORTING")


async def _status(url: str) -> int:
    try:
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            return response.status
    except aiohttp.ClientError:
        return 0


@pytest.mark.parametrize("event_loop", ["", "asyncio"])
async def test_soudan_all_with_the_memory_store_answers_on_every_port_and_stops_cleanly(
    service_env: dict[str, str], event_loop: str
) -> None:
    ports = {name: free_port() for name in SERVICES}
    env = {
        **os.environ,
        **service_env,
        "MONGODB_URL": "memory://",
        "SOUDAN_EVENT_LOOP": event_loop,  # empty: the default, uvloop
        **{f"{name}_PORT": str(port) for name, port in ports.items()},
    }
    exe = Path(sys.executable).parent / "soudan-all"
    process = await asyncio.create_subprocess_exec(
        str(exe), "--host", "127.0.0.1", env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        for name, port in ports.items():
            base = f"http://127.0.0.1:{port}"
            await wait_until(
                lambda b=base: _status(f"{b}/healthz"), timeout=30, message=f"{name} /healthz"
            )
            assert await _status(f"{base}/healthz") == 200
            await wait_until(
                lambda b=base: _ready(f"{b}/readyz"), timeout=30, message=f"{name} ready"
            )
            async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as response:
                assert response.status == 200
                assert "soudan_bus_published" in await response.text()
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, stderr.decode()[-2000:]
    log = stderr.decode()
    assert "memory_store_in_use" in log
    assert log.count("memory_store_in_use") == 1
    loops = [line.get("loop") for line in _json_lines(log) if line.get("event") == "event_loop"]
    assert loops == [event_loop or "uvloop"]


def _json_lines(log: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")]


async def _ready(url: str) -> bool:
    return await _status(url) == 200
