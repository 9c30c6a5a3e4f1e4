"""Benchmark of the LINE webhook (issue 3): ingress against the real RabbitMQ, and a minimal aiohttp
handler (read the body, parse the JSON, answer 200) as the baseline, in the same run.

    RABBITMQ_URL=amqp://guest:guest@127.0.0.1:5672/ .venv/bin/python bench/ingress_webhook.py

Each server runs in its own process (``python bench/ingress_webhook.py _serve …``); the load comes
from this process. Per run, for signed one-event and five-event bodies (five users each, spread
over the shard queues):

1. throughput, closed loop: ``wrk -t1 -cN`` for each N of ``--connections`` (default 32 and
   256; Debian's wrk, a Lua script posts pre-signed bodies) against the baseline, against the
   *publish floor* (the baseline plus one confirmed ``Bus.publish`` per event and nothing else:
   the least any handler meeting the issue's "200 only when confirmed" rule can do) and against
   ingress, for ``--duration`` seconds each; falls back to an aiohttp client with N connections
   when wrk is not installed;
2. the broker's own ceiling on this machine: ``Bus.publish`` of the same events, 160 in flight,
   without HTTP (what ingress could at best reach in events/s);
3. latency, open loop, at each of ``--rates`` requests/s (default 1,000 and 200): requests are
   started on a fixed schedule whatever the answers do, and each latency is counted from its
   scheduled start (no coordinated omission);
4. (once, after the runs) resident memory of the ingress process over 100,000 requests.

The line-event queues are purged between phases (nothing consumes them here), and the test
namespace is deleted at the end. Prints one JSON line per measurement, then the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
from soudan_ingress.signature import line_signature
from soudan_shared.testing.plugin import delete_topology
from soudan_shared.testing.proxy import free_port
from soudan_shared.topology import Topology, line_event_queue

SECRET = "bench-channel-secret"  # noqa: S105 - a benchmark's own channel
DESTINATION = "U" + "f" * 32
BODIES_PER_SHAPE = 200


# -- servers (child processes) -----------------------------------------------------------------


def serve(kind: str, port: int, namespace: str) -> None:
    from aiohttp import web

    if kind == "baseline":

        async def webhook(request: web.Request) -> web.Response:
            json.loads(await request.read())
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post("/webhook", webhook)
        web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)
        return

    if kind == "floor":
        serve_floor(port, namespace)
        return

    from soudan_ingress.app import create_app
    from soudan_ingress.settings import IngressSettings
    from soudan_shared.runtime import setup_logging

    settings = IngressSettings(
        rabbitmq_url=os.environ["RABBITMQ_URL"],
        bus_namespace=namespace,
        log_hash_key="bench",
        line_channel_secret=SECRET,
        log_level="WARNING",
    )
    setup_logging(settings, "ingress")
    web.run_app(create_app(settings), host="127.0.0.1", port=port, print=None, access_log=None)


def serve_floor(port: int, namespace: str) -> None:
    """The baseline plus the one thing the issue requires of every event: a publish the broker
    confirms. Parse the JSON into ``LineEventReceived`` messages, publish them all
    concurrently with ``Bus.publish``, answer 200 (no signature, no checks, no metrics)."""
    from aiohttp import web
    from soudan_ingress.events import parse_webhook
    from soudan_shared.bus import Bus
    from soudan_shared.contracts import utcnow

    bus = Bus(os.environ["RABBITMQ_URL"], topology=Topology(namespace=namespace), service="floor")

    async def started(app: web.Application) -> None:
        bus.start()
        await bus.wait_started(30)

    async def webhook(request: web.Request) -> web.Response:
        messages = parse_webhook(await request.read(), received_at=utcnow())
        await asyncio.gather(*(bus.publish(m, timeout=5) for m in messages))
        return web.Response(text="ok")

    app = web.Application()
    app.on_startup.append(started)
    app.router.add_post("/webhook", webhook)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


class Server:
    def __init__(self, kind: str, namespace: str, log_dir: Path) -> None:
        self.kind = kind
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = (log_dir / f"{kind}.log").open("ab")
        self.process = subprocess.Popen(  # noqa: S603
            [sys.executable, __file__, "_serve", kind, str(self.port), namespace],
            stdout=self._log,
            stderr=self._log,
        )

    async def wait_ready(self, http: aiohttp.ClientSession) -> None:
        path = "/readyz" if self.kind == "ingress" else "/webhook"  # the others: 405 on GET
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                async with http.get(self.url + path) as response:
                    if response.status in (200, 405):
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.kind} did not become ready")

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()


# -- bodies ------------------------------------------------------------------------------------


def make_bodies(events_per_body: int) -> list[tuple[bytes, str]]:
    """Signed bodies of text message events, each event from its own user."""
    bodies = []
    for b in range(BODIES_PER_SHAPE):
        events = []
        for e in range(events_per_body):
            n = b * events_per_body + e
            events.append(
                {
                    "type": "message",
                    "message": {
                        "type": "text",
                        "id": str(10**17 + n),
                        "quoteToken": uuid.uuid4().hex * 2,
                        "text": "こんにちは。相談したいことがあります。",
                    },
                    "webhookEventId": f"01JBENCH{n:018d}",
                    "deliveryContext": {"isRedelivery": False},
                    "timestamp": 1_780_000_000_000 + n,
                    "source": {"type": "user", "userId": "U" + uuid.uuid4().hex},
                    "replyToken": uuid.uuid4().hex,
                    "mode": "active",
                }
            )
        body = json.dumps({"destination": DESTINATION, "events": events}).encode()
        bodies.append((body, line_signature(SECRET.encode(), body).decode()))
    return bodies


# -- load --------------------------------------------------------------------------------------

WRK_SCRIPT = """
local bodies = {%s}
local signatures = {%s}
local i = 0
request = function()
  i = i %% #bodies + 1
  return wrk.format("POST", "/webhook", {
    ["Content-Type"] = "application/json",
    ["X-Line-Signature"] = signatures[i],
  }, bodies[i])
end
done = function(summary, latency, requests)
  io.write(string.format(
    "WRK {\\"requests\\": %%d, \\"seconds\\": %%f, \\"non2xx\\": %%d, \\"errors\\": %%d}\\n",
    summary.requests, summary.duration / 1e6, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


async def throughput(
    url: str, bodies: list[tuple[bytes, str]], seconds: float, generator: str, connections: int
) -> dict[str, Any]:
    if generator == "wrk":
        lua = WRK_SCRIPT % (
            ",".join(f"[==[{b.decode()}]==]" for b, _ in bodies),
            ",".join(f'"{s}"' for _, s in bodies),
        )
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
            script.write(lua)
        try:
            command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "-s", script.name]
            process = await asyncio.create_subprocess_exec(
                *command, url + "/webhook", stdout=asyncio.subprocess.PIPE
            )
            out, _ = await process.communicate()
        finally:
            os.unlink(script.name)
        line = next(x for x in out.decode().splitlines() if x.startswith("WRK "))
        result = json.loads(line[4:])
        return {
            "rps": result["requests"] / result["seconds"],
            "requests": result["requests"],
            "non2xx": result["non2xx"],
            "errors": result["errors"],
        }
    # aiohttp closed loop
    statuses: Counter[int] = Counter()
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def worker(k: int) -> None:
            i = k
            while time.monotonic() < deadline:
                body, signature = bodies[i % len(bodies)]
                i += connections
                async with http.post(
                    url + "/webhook", data=body, headers={"X-Line-Signature": signature}
                ) as response:
                    await response.read()
                    statuses[response.status] += 1

        started = time.monotonic()
        await asyncio.gather(*(worker(k) for k in range(connections)))
        elapsed = time.monotonic() - started
    total = sum(statuses.values())
    return {
        "rps": total / elapsed,
        "requests": total,
        "non2xx": total - statuses[200],
        "errors": 0,
    }


async def open_loop(
    url: str, bodies: list[tuple[bytes, str]], rate: float, seconds: float
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    statuses: Counter[int | str] = Counter()
    connector = aiohttp.TCPConnector(limit=512)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one(i: int, scheduled: float) -> None:
            body, signature = bodies[i % len(bodies)]
            try:
                async with http.post(
                    url + "/webhook", data=body, headers={"X-Line-Signature": signature}
                ) as response:
                    await response.read()
                    statuses[response.status] += 1
            except aiohttp.ClientError as exc:
                statuses[type(exc).__name__] += 1
            latencies.append(loop.time() - scheduled)

        total = int(rate * seconds)
        start = loop.time() + 0.2
        tasks = []
        for i in range(total):
            scheduled = start + i / rate
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, scheduled)))
        await asyncio.gather(*tasks)
        achieved = total / (loop.time() - start)
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000

    return {
        "rate": rate,
        "achieved_rps": achieved,
        "requests": total,
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "max_ms": latencies[-1] * 1000,
        "statuses": {str(k): v for k, v in statuses.items()},
    }


async def rss_over(
    server: Server,
    bodies: list[tuple[bytes, str]],
    total: int,
    purge: Any,
) -> dict[str, Any]:
    """Closed loop with 32 connections for ``total`` requests; RSS sampled every 5,000."""
    samples: list[tuple[int, int]] = [(0, server.rss_kib())]
    statuses: Counter[int] = Counter()
    sent = 0
    connector = aiohttp.TCPConnector(limit=32)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def worker() -> None:
            nonlocal sent
            while sent < total:
                i = sent
                sent += 1
                body, signature = bodies[i % len(bodies)]
                async with http.post(
                    server.url + "/webhook", data=body, headers={"X-Line-Signature": signature}
                ) as response:
                    await response.read()
                    statuses[response.status] += 1
                done = sum(statuses.values())
                if done % 5000 == 0:
                    samples.append((done, server.rss_kib()))
                    if done % 20000 == 0:
                        await purge()

        await asyncio.gather(*(worker() for _ in range(32)))
    samples.append((sum(statuses.values()), server.rss_kib()))
    after_warmup = next(kib for n, kib in samples if n >= 10000)
    return {
        "requests": sum(statuses.values()),
        "statuses": {str(k): v for k, v in statuses.items()},
        "rss_mib_start": samples[0][1] / 1024,
        "rss_mib_at_10k": after_warmup / 1024,
        "rss_mib_end": samples[-1][1] / 1024,
        "rss_mib_max": max(k for _, k in samples) / 1024,
        "growth_10k_to_end_mib": (samples[-1][1] - after_warmup) / 1024,
        "samples_mib": [(n, round(k / 1024, 1)) for n, k in samples],
    }


async def broker_ceiling(url: str, topology: Topology, seconds: float) -> dict[str, Any]:
    """What one connection can get confirmed without any HTTP: ``Bus.publish`` of the same
    one-event messages, 160 at a time (32 connections x 5 events), from this process."""
    from soudan_ingress.events import parse_webhook
    from soudan_shared.bus import Bus, PublishFailed
    from soudan_shared.contracts import utcnow

    messages = [m for body, _ in make_bodies(1) for m in parse_webhook(body, received_at=utcnow())]
    bus = Bus(url, topology=topology, service="bench")
    bus.start()
    await bus.wait_started(30)
    confirmed = 0
    deadline = time.monotonic() + seconds

    async def worker(k: int) -> None:
        nonlocal confirmed
        i = k
        while time.monotonic() < deadline:
            try:
                await bus.publish(messages[i % len(messages)], timeout=5)
            except PublishFailed:  # a shared broker: someone closed every connection
                await asyncio.sleep(0.1)
                continue
            confirmed += 1
            i += 160

    started = time.monotonic()
    await asyncio.gather(*(worker(k) for k in range(160)))
    elapsed = time.monotonic() - started
    await bus.close()
    return {"msgs_per_s": confirmed / elapsed}


# -- orchestration -----------------------------------------------------------------------------


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record, ensure_ascii=False), flush=True)


async def main(args: argparse.Namespace) -> None:
    url = os.environ["RABBITMQ_URL"]
    generator = args.generator
    if generator == "auto":
        generator = "wrk" if shutil.which("wrk") else "python"
    namespace = f"bench{uuid.uuid4().hex[:8]}"
    topology = Topology(namespace=namespace)
    shapes = {1: make_bodies(1), 5: make_bodies(5)}
    log_dir = Path(tempfile.mkdtemp(prefix="ingress-bench-"))
    emit({"generator": generator, "cpus": os.cpu_count(), "logs": str(log_dir)})

    # Robust: the broker is shared, and other people's fault tests close every connection.
    connection = await aio_pika.connect_robust(url)
    channel = await connection.channel()

    async def purge() -> None:
        for attempt in range(10):
            try:
                for shard in range(topology.line_event_shards):
                    name = topology.queue(line_event_queue(shard))
                    queue = await channel.get_queue(name, ensure=False)
                    await queue.purge()
                return
            except (aio_pika.exceptions.AMQPError, ConnectionError) as exc:
                print(f"purge failed ({exc!r}); retrying", file=sys.stderr)
                await asyncio.sleep(1 + attempt)

    async def settle(purge: Any) -> None:
        # Let the broker finish what a saturating phase left in flight, then empty the queues.
        await asyncio.sleep(2)
        await purge()

    results: list[dict[str, Any]] = []
    try:
        for run in range(1, args.runs + 1):
            baseline = Server("baseline", namespace, log_dir)
            floor = Server("floor", namespace, log_dir)
            ingress = Server("ingress", namespace, log_dir)
            try:
                async with aiohttp.ClientSession() as http:
                    await baseline.wait_ready(http)
                    await floor.wait_ready(http)
                    await ingress.wait_ready(http)
                await throughput(ingress.url, shapes[1], 2, generator, 32)  # warm-up
                await purge()
                ceiling = await broker_ceiling(url, topology, args.duration)
                await purge()
                for events, bodies in shapes.items():
                    record: dict[str, Any] = {
                        "run": run,
                        "events_per_body": events,
                        "broker_ceiling_msgs_per_s": round(ceiling["msgs_per_s"]),
                    }
                    for connections in args.connections:
                        base = await throughput(
                            baseline.url, bodies, args.duration, generator, connections
                        )
                        least = await throughput(
                            floor.url, bodies, args.duration, generator, connections
                        )
                        await settle(purge)
                        ing = await throughput(
                            ingress.url, bodies, args.duration, generator, connections
                        )
                        await settle(purge)
                        record.update(
                            {
                                f"c{connections}_baseline_rps": round(base["rps"]),
                                f"c{connections}_floor_rps": round(least["rps"]),
                                f"c{connections}_floor_ratio": round(least["rps"] / base["rps"], 3),
                                f"c{connections}_floor_non2xx": least["non2xx"] + least["errors"],
                                f"c{connections}_ingress_rps": round(ing["rps"]),
                                f"c{connections}_ratio": round(ing["rps"] / base["rps"], 3),
                                f"c{connections}_ingress_events_per_s": round(ing["rps"] * events),
                                f"c{connections}_baseline_non2xx": base["non2xx"] + base["errors"],
                                f"c{connections}_ingress_non2xx": ing["non2xx"] + ing["errors"],
                            }
                        )
                    for rate in args.rates:
                        lat = await open_loop(ingress.url, bodies, rate, args.duration)
                        await settle(purge)
                        record.update(
                            {f"at_{rate:g}_{k}": v for k, v in lat.items() if k != "rate"}
                        )
                    results.append(record)
                    emit(record)
                if run == args.runs and args.rss_requests:
                    rss = await rss_over(ingress, shapes[1], args.rss_requests, purge)
                    await purge()
                    emit({"rss": rss})
            finally:
                baseline.stop()
                floor.stop()
                ingress.stop()
    finally:
        await connection.close()
        await delete_topology(url, topology)

    for events in shapes:
        rows = [r for r in results if r["events_per_body"] == events]
        summary: dict[str, Any] = {"median_of_runs": len(rows), "events_per_body": events}
        for key in (
            "broker_ceiling_msgs_per_s",
            *(
                f"c{c}_{k}"
                for c in args.connections
                for k in (
                    "baseline_rps",
                    "floor_rps",
                    "floor_ratio",
                    "ingress_rps",
                    "ratio",
                    "ingress_events_per_s",
                )
            ),
            *(
                f"at_{rate:g}_{p}"
                for rate in args.rates
                for p in ("achieved_rps", "p50_ms", "p99_ms")
            ),
        ):
            summary[key] = round(statistics.median(r[key] for r in rows), 3)
        for rate in args.rates:
            non200 = sum(
                n for r in rows for k, n in r[f"at_{rate:g}_statuses"].items() if k != "200"
            )
            summary[f"at_{rate:g}_non200_total"] = non200
        emit(summary)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_serve":
        serve(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument(
        "--rates",
        type=lambda v: [float(x) for x in v.split(",")],
        default=[1000.0, 200.0],
        help="open-loop request rates, comma-separated (default 1000,200)",
    )
    parser.add_argument(
        "--connections",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[32, 256],
        help="closed-loop connection counts, comma-separated (default 32,256)",
    )
    parser.add_argument("--rss-requests", type=int, default=100_000)
    parser.add_argument("--generator", choices=["auto", "wrk", "python"], default="auto")
    asyncio.run(main(parser.parse_args()))
