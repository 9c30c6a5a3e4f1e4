"""What PyMongo's command listener (``STORE_COMMAND_METRICS``) costs the client per command.

    .venv/bin/python bench/store_listener.py [--pairs 9] [--commands 3000]

Starts a SecantusDB server (a separate process, its CPU not counted) and, in this process on
uvloop as the services run, times ``--commands`` ``find_one`` and as many ``update_one`` on one
document through ``open_store``, without and with the listener, the two taking turns pair by
pair (this machine drifts). CPU is this process's own (``getrusage``: user + system), per
command. Prints one JSON line per pair and a last one with the medians and their ratio.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
from pathlib import Path

import uvloop
from prometheus_client import CollectorRegistry
from soudan_shared.store import open_store
from soudan_shared.testing.secantus import start_secantus


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _ms_per_command(url: str, counted: bool, commands: int) -> float:
    store = await open_store(url, registry=CollectorRegistry() if counted else None)
    try:
        collection = store.db["bench"]
        await collection.replace_one({"_id": "x"}, {"n": 0}, upsert=True)
        for _ in range(200):  # the pool and the server warmed up
            await collection.find_one({"_id": "x"})
        start = _cpu()
        for _ in range(commands):
            await collection.find_one({"_id": "x"})
        for n in range(commands):
            await collection.update_one({"_id": "x"}, {"$set": {"n": n}})
        return (_cpu() - start) / (2 * commands) * 1000
    finally:
        await store.close()


async def _main(url: str, pairs: int, commands: int) -> None:
    without, with_listener = [], []
    for pair in range(pairs):
        without.append(await _ms_per_command(url, False, commands))
        with_listener.append(await _ms_per_command(url, True, commands))
        print(
            json.dumps(
                {
                    "pair": pair,
                    "cpu_ms_per_command_without": round(without[-1], 4),
                    "cpu_ms_per_command_with_listener": round(with_listener[-1], 4),
                }
            )
        )
    base, listened = statistics.median(without), statistics.median(with_listener)
    print(
        json.dumps(
            {
                "median_cpu_ms_per_command_without": round(base, 4),
                "median_cpu_ms_per_command_with_listener": round(listened, 4),
                "listener_cpu_ms_per_command": round(listened - base, 4),
                "with_over_without": round(listened / base, 3),
            }
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=9)
    parser.add_argument("--commands", type=int, default=3000)
    options = parser.parse_args()
    server = start_secantus(Path(tempfile.mkdtemp(prefix="soudan-bench-")))
    try:
        uvloop.run(_main(server.url, options.pairs, options.commands))
    finally:
        server.stop()
