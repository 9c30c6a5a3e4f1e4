"""Triage scale-out: 1, 2 and 4 triage processes sharing the shard queues, against one store.

    .venv/bin/python bench/triage_scaleout.py [--instances 1,2,4] [--events 4000] [--runs 3]
        [--single-broker]

Starts a three-node RabbitMQ cluster of this machine's Debian RabbitMQ (the cluster tests'
``start_cluster``; ``--single-broker`` uses ``RABBITMQ_URL`` instead) and a SecantusDB server
(``MONGODB_URL`` instead, if set). For each instance count, in a fresh bus namespace and
database: ``--events`` LINE events of 400 students (the mix of ``bench/triage_events.py``) are
published to the four shard queues while no triage runs, then that many ``soudan-triage``
processes start, each given its share of the shards (``TRIAGE_SHARDS``: 0-3; 0-1 and 2-3; one
each). The rate is taken in steady state, between 10 % and 90 % of the events marked done, so
start-up does not count; over the same window the CPU time of every process (``/proc``) says
what limits it: the triage processes, the store, the broker nodes.

Prints one JSON line per run and instance count, then the medians and the ratios to one
instance.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from soudan_shared.logging import configure_logging
from soudan_shared.store import open_store
from soudan_shared.testing.cluster import start_cluster
from soudan_shared.testing.plugin import delete_topology, with_database
from soudan_shared.testing.proxy import free_port
from soudan_shared.testing.secantus import start_secantus
from soudan_shared.topology import Topology
from soudan_triage.store import EVENTS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from triage_events import CONFIG, events, publish

SHARDS = 4
USERS = 400
CLOCK_TICK = os.sysconf("SC_CLK_TCK")
TRIAGE = Path(sys.executable).with_name("soudan-triage")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def shard_sets(instances: int) -> list[str]:
    """``TRIAGE_SHARDS`` of each instance: the four shards split evenly."""
    per = SHARDS // instances
    return [f"{n * per}-{n * per + per - 1}" for n in range(instances)]


async def ready(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"triage on port {port} not ready within {timeout}s")


async def one_run(
    broker_url: str,
    store_url: str,
    instances: int,
    count: int,
    seed: int,
    others: dict[str, int],
) -> dict[str, Any]:
    topology = Topology(namespace=f"scale{uuid.uuid4().hex[:8]}", line_event_shards=SHARDS)
    database = f"scale_{uuid.uuid4().hex[:8]}"
    batch = events(count, USERS, seed)
    await publish(broker_url, topology, batch)
    store = await open_store(with_database(store_url, database))
    processes: list[asyncio.subprocess.Process] = []
    try:
        ports = []
        for shards in shard_sets(instances):
            port = free_port()
            env = {
                **os.environ,
                "RABBITMQ_URL": broker_url,
                "MONGODB_URL": with_database(store_url, database),
                "BUS_NAMESPACE": topology.namespace,
                "LINE_EVENT_SHARDS": str(SHARDS),
                "TRIAGE_SHARDS": shards,
                "TRIAGE_PORT": str(port),
                "LOG_HASH_KEY": "bench",
                "LOG_LEVEL": "WARNING",
                "SOUDAN_CONFIG_DIR": str(CONFIG),
            }
            processes.append(
                await asyncio.create_subprocess_exec(
                    str(TRIAGE), env=env, stdout=asyncio.subprocess.DEVNULL
                )
            )
            ports.append(port)
        await asyncio.gather(*(ready(port) for port in ports))

        done = store.db[EVENTS]
        pids = {f"triage-{n + 1}": p.pid for n, p in enumerate(processes)} | others
        marks: list[tuple[float, int, dict[str, float]]] = []
        targets = [int(count * 0.1), int(count * 0.9)]
        deadline = time.monotonic() + 600
        while targets and time.monotonic() < deadline:
            handled = await done.count_documents({"state": "done"})
            if handled >= targets[0]:
                cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
                marks.append((time.perf_counter(), handled, cpu))
                targets.pop(0)
                continue
            await asyncio.sleep(0.1)
        if targets:
            raise RuntimeError(f"only {handled} of {count} events done within 600 s")
        (t1, n1, cpu1), (t2, n2, cpu2) = marks
        window, handled = t2 - t1, n2 - n1
        used = {name: cpu2[name] - cpu1[name] for name in pids}
        group = {
            "triage": sum(v for k, v in used.items() if k.startswith("triage-")),
            "store": sum(v for k, v in used.items() if k == "store"),
            "broker": sum(v for k, v in used.items() if k.startswith("rabbit")),
        }
        return {
            "instances": instances,
            "events_per_second": round(handled / window, 1),
            "window_s": round(window, 2),
            "cpu_cores_busy": round(sum(used.values()) / window, 2),
            "cpu_ms_per_event": {k: round(v / handled * 1000, 2) for k, v in group.items()},
            "triage_cores_each": [
                round(used[f"triage-{n + 1}"] / window, 2) for n in range(instances)
            ],
        }
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                process.kill()
                await process.wait()
        await store.client.drop_database(database)
        await store.close()
        await delete_topology(broker_url, topology)


async def main(args: argparse.Namespace) -> None:
    configure_logging(service="bench", level="WARNING", hash_key=b"bench")
    counts = [int(n) for n in args.instances.split(",")]
    if any(n not in (1, 2, 4) for n in counts):
        sys.exit("--instances: 1, 2 or 4 (the four shards split evenly)")
    base = Path(tempfile.mkdtemp(prefix="soudan-scaleout-"))
    cluster = secantus = None
    others: dict[str, int] = {}
    try:
        if args.single_broker:
            broker_url = os.environ.get("RABBITMQ_URL") or sys.exit("set RABBITMQ_URL")
        else:
            cluster = start_cluster(3)  # in a directory of its own the nodes' user can reach
            broker_url = cluster.rabbitmq_url
            others |= {f"rabbit-{n + 1}": node.pid for n, node in enumerate(cluster.nodes)}
        store_url = os.environ.get("MONGODB_URL")
        if not store_url:
            secantus = start_secantus(base / "store", test_commands=False)
            store_url = secantus.url
            others["store"] = secantus.process.pid
        results: dict[int, list[dict[str, Any]]] = {n: [] for n in counts}
        for run in range(args.runs):
            for n in counts:
                result = await one_run(broker_url, store_url, n, args.events, run, others)
                results[n].append(result)
                print(json.dumps({"run": run + 1, **result}), flush=True)
        medians = {n: statistics.median(r["events_per_second"] for r in results[n]) for n in counts}
        first = medians[counts[0]]
        print(
            json.dumps(
                {
                    "broker": "single" if args.single_broker else "three-node cluster",
                    "store": "MONGODB_URL" if secantus is None else "SecantusDB",
                    "events": args.events,
                    "runs": args.runs,
                    "median_events_per_second": medians,
                    "ratio_to_first": {n: round(m / first, 2) for n, m in medians.items()},
                    "median_cpu_cores_busy": {
                        n: statistics.median(r["cpu_cores_busy"] for r in results[n])
                        for n in counts
                    },
                }
            )
        )
    finally:
        if secantus is not None:
            secantus.stop()
        if cluster is not None:
            cluster.stop()
            shutil.rmtree(cluster.base, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--instances", default="1,2,4")
    parser.add_argument("--events", type=int, default=4000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--single-broker", action="store_true")
    asyncio.run(main(parser.parse_args()))
