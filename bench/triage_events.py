"""Triage end to end: LINE events per second, from the shard queues to the store and the bus.

    RABBITMQ_URL=amqp://guest:guest@127.0.0.1:5672/ .venv/bin/python bench/triage_events.py \\
        [--events 2000] [--users 200] [--runs 3]

Each run publishes ``--events`` events of ``--users`` students to a fresh bus namespace (about
80 % texts, some urgent, 10 % follows, 5 % stickers, 5 % school-type answers, all in hours),
then starts the real triage app (``create_app``) and times it draining the backlog: every event
decided, stored, its commands and facts published with confirms, and marked done. The store is
``MONGODB_URL`` if set, else the in-process fake (mongomock, itself the slowest part). As a
baseline from the same run, a bare consumer of the same queues (same prefetch and per-user
ordering, no work) drains the same number of events: the ratio shows what triage's work costs
over the bus alone on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from soudan_shared.bus import Bus
from soudan_shared.contracts import LineEventReceived
from soudan_shared.logging import configure_logging
from soudan_shared.runtime import BUS, STORE, start_site
from soudan_shared.store import MEMORY_URL, open_store
from soudan_shared.testing.plugin import delete_topology, with_database
from soudan_shared.testing.proxy import free_port
from soudan_shared.topology import Topology, line_event_queue, ordering_key
from soudan_triage.app import create_app
from soudan_triage.settings import TriageSettings
from soudan_triage.store import EVENTS

CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "config"
IN_HOURS = datetime(2026, 12, 24, 9, 0, tzinfo=UTC)  # Thursday 18:00 JST
TEXTS = [
    "きょう学校でともだちとけんかしちゃって、どうしたらいいかわからない",
    "テストの点がわるくて親におこられた",
    "部活やめたいけどみんなに言えない",
    "はい",
    "ありがとう",
    "ねむれない",
    "し　に　た　い",
    "いじめられてる",
]


def events(count: int, users: int, seed: int) -> list[LineEventReceived]:
    rng = random.Random(seed)  # noqa: S311 - a reproducible workload, not security
    people = ["U" + uuid.UUID(int=rng.getrandbits(128)).hex for _ in range(users)]
    out = []
    for n in range(count):
        user = rng.choice(people)
        at = IN_HOURS + timedelta(milliseconds=n * 50)
        roll = rng.random()
        raw: dict[str, Any] = {"replyToken": uuid.uuid4().hex}
        if roll < 0.10:
            kind, raw["follow"] = "follow", {"isUnblocked": False}
        elif roll < 0.15:
            kind = "message"
            raw["message"] = {"id": str(10**15 + n), "type": "sticker", "packageId": "1"}
        elif roll < 0.20:
            kind, raw["postback"] = "postback", {"data": "school_type=public_high"}
        else:
            kind = "message"
            raw["message"] = {"id": str(10**15 + n), "type": "text", "text": rng.choice(TEXTS)}
        event_id = f"01BENCH{n:019d}"
        raw.update(
            type=kind,
            mode="active",
            timestamp=int(at.timestamp() * 1000),
            source={"type": "user", "userId": user},
            webhookEventId=event_id,
            deliveryContext={"isRedelivery": False},
        )
        out.append(
            LineEventReceived(
                destination="U" + "0" * 32,
                webhook_event_id=event_id,
                user_id=user,
                event_type=kind,
                timestamp_ms=raw["timestamp"],
                received_at=at,
                event=raw,
            )
        )
    return out


async def publish(url: str, topology: Topology, batch: list[LineEventReceived]) -> None:
    bus = Bus(url, topology=topology, service="bench")
    bus.start()
    await bus.wait_started(30)
    try:
        for n in range(0, len(batch), 200):
            await asyncio.gather(*(bus.publish(e, timeout=30) for e in batch[n : n + 200]))
    finally:
        await bus.close()


async def drain_with_triage(url: str, store_url: str, batch: list[LineEventReceived]) -> float:
    topology = Topology(namespace=f"bench{uuid.uuid4().hex[:8]}")
    database = f"bench_{uuid.uuid4().hex[:8]}"
    os.environ.update(
        RABBITMQ_URL=url,
        MONGODB_URL=with_database(store_url, database),
        BUS_NAMESPACE=topology.namespace,
        LOG_HASH_KEY="bench",
        SOUDAN_CONFIG_DIR=str(CONFIG),
    )
    try:
        await publish(url, topology, batch)
        app = create_app(TriageSettings(), clock=lambda: IN_HOURS)
        runner = await start_site(app, free_port(), "127.0.0.1")
        try:
            await app[BUS].wait_started(30)
            started = time.perf_counter()
            events = app[STORE].db[EVENTS]
            while await events.count_documents({"state": "done"}) < len(batch):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            return time.perf_counter() - started
        finally:
            await runner.cleanup()
    finally:
        await delete_topology(url, topology)
        store = await open_store(store_url)
        await store.client.drop_database(database)
        await store.close()


async def drain_bare(url: str, batch: list[LineEventReceived]) -> float:
    topology = Topology(namespace=f"bench{uuid.uuid4().hex[:8]}")
    try:
        await publish(url, topology, batch)
        seen = 0
        done = asyncio.Event()

        async def handle(_: LineEventReceived) -> None:
            nonlocal seen
            seen += 1
            if seen == len(batch):
                done.set()

        # the same held and concurrent events as the service (its settings' defaults, or the
        # TRIAGE_HELD_EVENTS / TRIAGE_CONCURRENCY it would read)
        fields = TriageSettings.model_fields
        held = int(os.environ.get("TRIAGE_HELD_EVENTS", fields["triage_held_events"].default))
        concurrency = int(
            os.environ.get("TRIAGE_CONCURRENCY", fields["triage_concurrency"].default)
        )
        bus = Bus(url, topology=topology, service="bench-bare")
        for shard in range(topology.line_event_shards):
            bus.consume(
                line_event_queue(shard),
                LineEventReceived,
                handle,
                prefetch=held,
                concurrency=concurrency,
                ordering_key=ordering_key,
            )
        started = time.perf_counter()
        bus.start()
        await done.wait()
        elapsed = time.perf_counter() - started
        await bus.close()
        return elapsed
    finally:
        await delete_topology(url, topology)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    url = os.environ.get("RABBITMQ_URL")
    if not url:
        sys.exit("set RABBITMQ_URL")
    store_url = os.environ.get("MONGODB_URL", MEMORY_URL)
    configure_logging(service="bench", level="WARNING", hash_key=b"bench")

    triage_rates, bare_rates = [], []
    for run in range(args.runs):
        batch = events(args.events, args.users, seed=run)
        bare_rates.append(len(batch) / await drain_bare(url, batch))
        triage_rates.append(len(batch) / await drain_with_triage(url, store_url, batch))
        print(
            f"run {run + 1}: triage {triage_rates[-1]:,.0f} events/s, "
            f"bare consumer {bare_rates[-1]:,.0f} events/s"
        )
    triage, bare = statistics.median(triage_rates), statistics.median(bare_rates)
    store = "MongoDB at MONGODB_URL" if store_url != MEMORY_URL else "in-process fake (mongomock)"
    print(
        f"{args.events} events of {args.users} users, store: {store}\n"
        f"triage: median {triage:,.0f} events/s over {args.runs} runs "
        f"(min {min(triage_rates):,.0f}, max {max(triage_rates):,.0f})\n"
        f"bare consumer: median {bare:,.0f} events/s; triage / bare = {triage / bare:.2f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
