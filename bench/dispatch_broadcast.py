"""Benchmark: a broadcast to 100,000 registered users against the fake LINE platform.

The fake runs in its own process (``soudan-fakeline``) enforcing LINE's 200 multicast requests/s,
so the time and memory measured are dispatch's. Dispatch runs as in production (its app, the
real broker, its consumer); the store is ``MONGODB_URL`` if set, else the in-process fake. Each
run seeds the users in a fresh database, publishes one ``StartBroadcast`` and times it from the
publish to ``broadcast.finished``, split into planning (reading the audience and writing the
chunks: publish → ``broadcast.started``) and sending (→ ``broadcast.finished``). Memory is the
process's resident set, sampled every 20 ms, against its level just before the publish.

    RABBITMQ_URL=amqp://guest:guest@127.0.0.1:5672/ .venv/bin/python bench/dispatch_broadcast.py

Options: ``--users N`` (100000), ``--runs N`` (3), ``--rate R`` (dispatch's pacing, 180/s).
The platform's own ceiling is 200 requests of 500 ids at 200/s, about 1 s; the target is < 2 s.
Each run first measures that ceiling on the machine as it is (:func:`baseline`: a bare client
sending the same requests at 200/s), so a busy machine shows as a ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


@contextlib.asynccontextmanager
async def _fakeline(port: int) -> AsyncIterator[str]:
    process = subprocess.Popen(  # noqa: S603, ASYNC220 - started once, before timing
        [str(ROOT / ".venv/bin/soudan-fakeline"), "--port", str(port), "--multicast-rate", "200"],
        env={**os.environ, "LINE_CHANNEL_ACCESS_TOKEN": "bench-token"},
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                try:
                    async with http.get(f"{url}/fake/v1/stats") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(10)


async def _stats(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/fake/v1/stats") as response:
        stats: dict[str, Any] = await response.json()
        return stats


async def baseline(line_url: str, users: int, rate: float) -> float:
    """The platform's ceiling as measured now: a bare client (pre-built bodies, no SDK, store or
    broker) sending the same multicasts paced at ``rate``, as fast as the fake takes them."""
    import json

    bodies = []
    for start in range(0, users, 500):
        ids = ["U" + uuid.uuid4().hex for _ in range(min(500, users - start))]
        bodies.append(json.dumps({"to": ids, "messages": [{"type": "text", "text": "x"}]}))
    headers = {"Authorization": "Bearer bench-token", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as http:
        await http.post(f"{line_url}/fake/v1/reset")
        await asyncio.sleep(0.2)  # the rate bucket refills
        started = time.perf_counter()

        async def send(i: int, body: str) -> None:
            await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
            while True:
                async with http.post(
                    f"{line_url}/v2/bot/message/multicast", data=body, headers=headers
                ) as response:
                    if response.status == 200:
                        return
                await asyncio.sleep(0.01)

        await asyncio.gather(*(send(i, b) for i, b in enumerate(bodies)))
        return time.perf_counter() - started


async def one_run(args: argparse.Namespace, line_url: str) -> dict[str, float]:
    from soudan_dispatch.app import create_app
    from soudan_dispatch.settings import DispatchSettings
    from soudan_shared.bus import Bus
    from soudan_shared.contracts import Fact, StartBroadcast, utcnow
    from soudan_shared.fact_types import BROADCAST_FINISHED, BROADCAST_STARTED
    from soudan_shared.records import USERS
    from soudan_shared.runtime import start_site
    from soudan_shared.store import open_store
    from soudan_shared.testing.plugin import delete_topology, with_database
    from soudan_shared.testing.proxy import free_port
    from soudan_shared.topology import FACTS_QUEUE, Topology

    async with aiohttp.ClientSession() as http:
        await http.post(f"{line_url}/fake/v1/reset")
    namespace = f"bench{uuid.uuid4().hex[:8]}"
    database = f"bench_{uuid.uuid4().hex[:8]}"
    mongo = with_database(os.environ.get("MONGODB_URL", "memory://"), database)
    store = await open_store(mongo)
    now = utcnow()
    batch = []
    for i in range(args.users):
        batch.append(
            {"_id": "U" + uuid.uuid4().hex, "registered": True, "followed_at": now, "n": i}
        )
        if len(batch) == 10_000:
            await store.db[USERS].insert_many(batch)
            batch = []
    if batch:
        await store.db[USERS].insert_many(batch)

    rabbit = os.environ["RABBITMQ_URL"]
    settings = DispatchSettings(
        rabbitmq_url=rabbit,
        mongodb_url=mongo,
        log_hash_key="bench",
        line_channel_access_token="bench-token",  # noqa: S106 - the fake's token
        line_api_base_url=line_url,
        bus_namespace=namespace,
        broadcast_schedule=False,
        broadcast_rate=args.rate,
        soudan_config_dir=ROOT / "deploy" / "config",
    )
    topology = Topology(namespace=namespace)
    port = free_port()
    runner = await start_site(create_app(settings), port, "127.0.0.1")
    seen: dict[str, float] = {}
    bus = Bus(rabbit, topology=topology, service="bench")

    async def watch(fact: Fact) -> None:
        if fact.type in (BROADCAST_STARTED, BROADCAST_FINISHED):
            seen[fact.type] = time.perf_counter()
            if fact.type == BROADCAST_FINISHED:
                seen["recipients"] = fact.data["recipients"]

    bus.consume(FACTS_QUEUE, Fact, watch)
    bus.start()
    await bus.wait_started(10)
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
                if response.status == 200:
                    break
            await asyncio.sleep(0.05)
    peak = baseline = _rss_mib()
    started = time.perf_counter()
    await bus.publish(StartBroadcast(broadcast_id=f"bench-{namespace}", texts=["お知らせ"]))
    while BROADCAST_FINISHED not in seen and time.perf_counter() - started < 120:
        peak = max(peak, _rss_mib())
        await asyncio.sleep(0.02)
    stats = await _stats(line_url)
    await bus.close()
    await runner.cleanup()
    await delete_topology(rabbit, topology)
    await store.client.drop_database(database)
    await store.close()
    if BROADCAST_FINISHED not in seen:
        raise SystemExit("the broadcast did not finish within 120 s")
    multicasts = stats["byEndpoint"].get("multicast", 0)
    return {
        "total_s": seen[BROADCAST_FINISHED] - started,
        "plan_s": seen[BROADCAST_STARTED] - started,
        "send_s": seen[BROADCAST_FINISHED] - seen[BROADCAST_STARTED],
        "recipients": seen["recipients"],
        "multicast_requests": multicasts,
        "status_429": stats["byStatus"].get("429", 0),
        "fake_recipients": stats["recipients"],
        "rss_baseline_mib": baseline,
        "rss_peak_mib": peak,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=float, default=180.0)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    if "RABBITMQ_URL" not in os.environ:
        raise SystemExit("set RABBITMQ_URL")
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    from soudan_shared.testing.proxy import free_port

    results = []
    async with _fakeline(args.port or free_port()) as line_url:
        for run in range(args.runs):
            ceiling = await baseline(line_url, args.users, 200.0)
            result = await one_run(args, line_url)
            result["ceiling_s"] = ceiling
            results.append(result)
            print(
                f"run {run + 1}: ceiling {ceiling:.2f} s; "
                f"total {result['total_s']:.2f} s (plan {result['plan_s']:.2f} s, "
                f"send {result['send_s']:.2f} s), {result['recipients']:.0f} recipients, "
                f"{result['multicast_requests']:.0f} multicasts, {result['status_429']:.0f} × 429, "
                f"RSS {result['rss_baseline_mib']:.0f} → {result['rss_peak_mib']:.0f} MiB",
                flush=True,
            )
    store = "MONGODB_URL" if os.environ.get("MONGODB_URL") else "in-process fake (mongomock)"
    print(f"\nusers={args.users} runs={args.runs} rate={args.rate:g}/s store={store}")
    for key in ("ceiling_s", "total_s", "plan_s", "send_s", "rss_peak_mib"):
        values = [r[key] for r in results]
        print(f"median {key}: {statistics.median(values):.2f} (min {min(values):.2f})")
    ratios = [r["send_s"] / r["ceiling_s"] for r in results]
    print(f"median send / ceiling: {statistics.median(ratios):.2f}")
    growth = [r["rss_peak_mib"] - r["rss_baseline_mib"] for r in results]
    print(f"median RSS growth during the broadcast: {statistics.median(growth):.0f} MiB")
    sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main())
