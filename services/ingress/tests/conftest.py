"""Ingress under test: the real app on a free port, the test's own bus namespace, a real broker.

Fixtures hand out small helper objects: ``start_ingress`` runs the service (optionally through a
proxy in front of the broker), ``bus_queues`` reads what arrived on the test topology's queues
from outside the code under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import aiohttp
import pytest
from aiohttp import web
from soudan_ingress.app import create_app
from soudan_ingress.settings import IngressSettings
from soudan_ingress.signature import line_signature
from soudan_shared.runtime import start_site
from soudan_shared.testing.plugin import BrokerControl, delete_topology
from soudan_shared.testing.proxy import free_port
from soudan_shared.testing.waiting import wait_until
from soudan_shared.topology import FACTS_QUEUE, Topology, line_event_queue

SECRET = "test-channel-secret"
DESTINATION = "U" + "0" * 32
AUTO = object()


def _sign(body: bytes, secret: str) -> str:
    return line_signature(secret.encode(), body).decode()


class LinePlatform:
    """What the LINE platform sends: signed bodies of events (unique ids and times)."""

    secret = SECRET
    destination = DESTINATION

    def __init__(self) -> None:
        self._serial = 0
        self._prefix = uuid.uuid4().hex[:8].upper()

    def sign(self, body: bytes, secret: str | None = None) -> str:
        return _sign(body, secret or self.secret)

    def body(self, events: list[dict[str, Any]], destination: str | None = None) -> bytes:
        payload = {"destination": destination or self.destination, "events": events}
        return json.dumps(payload, ensure_ascii=False).encode()

    def user(self) -> str:
        return "U" + uuid.uuid4().hex

    def event(self, type: str, user_id: str | None = None, **fields: Any) -> dict[str, Any]:
        """An event as LINE sends it: base fields first, then ``fields``."""
        self._serial += 1
        event: dict[str, Any] = {
            "type": type,
            "mode": "active",
            "timestamp": 1_780_000_000_000 + self._serial,
            "source": {"type": "user", "userId": user_id or self.user()},
            "webhookEventId": f"01J{self._prefix}{self._serial:015d}",
            "deliveryContext": {"isRedelivery": False},
        }
        event.update(fields)
        return event

    def text(self, user_id: str, text: str) -> dict[str, Any]:
        self._serial += 1
        return self.event(
            "message",
            user_id,
            replyToken=uuid.uuid4().hex,
            message={
                "id": str(500_000 + self._serial),
                "type": "text",
                "text": text,
                "quoteToken": uuid.uuid4().hex,
            },
        )

    @staticmethod
    def redelivered(event: dict[str, Any]) -> dict[str, Any]:
        return {**event, "deliveryContext": {"isRedelivery": True}}


@pytest.fixture
def line() -> LinePlatform:
    return LinePlatform()


@dataclass
class Answer:
    status: int
    json: Any


@dataclass
class Ingress:
    url: str
    port: int
    app: web.Application
    runner: web.AppRunner
    http: aiohttp.ClientSession
    secret: str

    async def post(
        self, body: bytes, *, signature: Any = AUTO, headers: dict[str, str] | None = None
    ) -> Answer:
        sent = dict(headers or {})
        sent.setdefault("Content-Type", "application/json; charset=utf-8")
        if signature is AUTO:
            sent["X-Line-Signature"] = _sign(body, self.secret)
        elif signature is not None:
            sent["X-Line-Signature"] = signature
        async with self.http.post(f"{self.url}/webhook", data=body, headers=sent) as response:
            text = await response.text()
            try:
                payload = json.loads(text)
            except ValueError:
                payload = text
            return Answer(response.status, payload)

    async def status(self, path: str) -> int:
        try:
            async with self.http.get(f"{self.url}{path}") as response:
                return response.status
        except aiohttp.ClientError:
            return 0

    async def ready(self) -> bool:
        return await self.status("/readyz") == 200

    async def metrics(self) -> str:
        async with self.http.get(f"{self.url}/metrics") as response:
            return await response.text()

    async def stop(self) -> None:
        await self.runner.cleanup()


StartIngress = Callable[..., Awaitable[Ingress]]


@pytest.fixture
async def start_ingress(rabbitmq_url: str, topology: Topology) -> AsyncIterator[StartIngress]:
    """``shards`` sets LINE_EVENT_SHARDS (default: the test topology's)."""
    started: list[Ingress] = []
    topologies: list[Topology] = []

    async def start(
        *,
        url: str | None = None,
        confirm_timeout: float = 1.0,
        secret: str = SECRET,
        wait_ready: bool = True,
        shards: int | None = None,
    ) -> Ingress:
        settings = IngressSettings(
            rabbitmq_url=url or rabbitmq_url,
            bus_namespace=topology.namespace,
            log_hash_key="test-hash-key",
            line_channel_secret=secret,
            ingress_confirm_timeout=confirm_timeout,
            line_event_shards=shards or topology.line_event_shards,
        )
        topologies.append(settings.topology())
        app = create_app(settings)
        port = free_port()
        runner = await start_site(app, port, "127.0.0.1")
        http = aiohttp.ClientSession()
        ingress = Ingress(f"http://127.0.0.1:{port}", port, app, runner, http, secret)
        started.append(ingress)
        if wait_ready:
            await wait_until(ingress.ready, timeout=20, message="ingress ready")
        return ingress

    yield start
    for ingress in started:
        await ingress.runner.cleanup()
        await ingress.http.close()
    for declared in topologies:  # the queues of other shard counts than the test topology's
        await delete_topology(rabbitmq_url, declared)


@pytest.fixture
async def ingress(start_ingress: StartIngress) -> Ingress:
    return await start_ingress()


@dataclass
class BusQueues:
    """What ingress put on the bus, consumed with a plain channel once ingress declared the
    queues (shard queues have a single active consumer: no basic.get on them)."""

    channel: aio_pika.abc.AbstractChannel
    topology: Topology
    shards: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    facts: list[dict[str, Any]] = field(default_factory=list)
    _consuming: bool = False

    async def _consume(self) -> None:
        if self._consuming:
            return
        self._consuming = True
        for shard in range(self.topology.line_event_shards):
            self.shards[shard] = []
            await self._subscribe(line_event_queue(shard), self.shards[shard])
        await self._subscribe(FACTS_QUEUE, self.facts)

    async def _subscribe(self, name: str, into: list[dict[str, Any]]) -> None:
        queue = await self.channel.declare_queue(self.topology.queue(name), passive=True)

        async def take(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            into.append(json.loads(message.body))

        await queue.consume(take, no_ack=True)

    @property
    def line_events(self) -> list[dict[str, Any]]:
        return [m for shard in sorted(self.shards) for m in self.shards[shard]]

    async def wait_line_events(self, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        """Every LINE event received so far, once there are at least ``count``."""
        await self._consume()
        await wait_until(
            lambda: len(self.line_events) >= count,
            timeout=timeout,
            message=f"{count} LINE events on the bus (have {len(self.line_events)})",
        )
        return self.line_events

    async def settle_line_events(self, quiet: float = 0.3) -> list[dict[str, Any]]:
        """Everything that arrives until nothing more came for ``quiet`` seconds."""
        await self._consume()
        loop = asyncio.get_running_loop()
        seen, last = -1, loop.time()
        while loop.time() - last < quiet:
            if len(self.line_events) != seen:
                seen, last = len(self.line_events), loop.time()
            await asyncio.sleep(0.05)
        return self.line_events

    def facts_of(self, fact_type: str) -> list[dict[str, Any]]:
        return [f for f in self.facts if f["type"] == fact_type]

    async def wait_facts(
        self, fact_type: str, count: int = 1, timeout: float = 10
    ) -> list[dict[str, Any]]:
        await self._consume()
        await wait_until(
            lambda: len(self.facts_of(fact_type)) >= count,
            timeout=timeout,
            message=f"{count} {fact_type} fact(s)",
        )
        return self.facts_of(fact_type)


@pytest.fixture
async def bus_queues(raw_channel: aio_pika.abc.AbstractChannel, topology: Topology) -> BusQueues:
    return BusQueues(raw_channel, topology)


class StallingProxy:
    """A TCP proxy in front of the broker that can hold back everything the broker sends:
    publishes still reach the broker, but no confirm comes back while it stalls."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.flowing = asyncio.Event()
        self.flowing.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    def stall(self) -> None:
        self.flowing.clear()

    def release(self) -> None:
        self.flowing.set()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers += [writer, up_writer]
        for task in (
            asyncio.create_task(self._pipe(reader, up_writer, held=False)),
            asyncio.create_task(self._pipe(up_reader, writer, held=True)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, held: bool
    ) -> None:
        try:
            while data := await src.read(65536):
                if held:
                    await self.flowing.wait()
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            dst.transport.abort()


@pytest.fixture
async def stalling_proxy(broker: BrokerControl) -> AsyncIterator[StallingProxy]:
    proxy = StallingProxy(broker.host, broker.port)
    await proxy.start()
    yield proxy
    proxy.release()
    await proxy.stop()
