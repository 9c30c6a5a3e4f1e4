"""Pytest fixtures: a real RabbitMQ always, MongoDB where there is one, fresh names per test.

- Broker: ``RABBITMQ_URL`` if set, else a testcontainers RabbitMQ (needs a Docker engine).
- Store: ``MONGODB_URL`` if set, else a testcontainers MongoDB where Docker runs, else the
  in-process fake (``memory://``). The run's header says which of each is in use, and names
  soudan-fakemongo (tools/fakemongo: mongomock behind the wire protocol) when ``MONGODB_URL``
  points at one rather than at MongoDB.
- Every test gets its own bus namespace (queues and exchanges) and its own database, removed
  afterwards, so tests never see each other's data.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import pymongo
import pytest

from soudan_shared.bus import Bus
from soudan_shared.store import MEMORY_URL, Store, open_store
from soudan_shared.topology import Topology

RABBITMQ_IMAGE = "rabbitmq:4.1.4-management"
MONGODB_IMAGE = "mongo:8.0.15"


def _docker_available() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=3)
        client.ping()
        client.close()
    except Exception:
        return False
    return True


@dataclass(frozen=True)
class BackendChoice:
    broker: str
    store: str


_choice: BackendChoice | None = None


def backend_choice() -> BackendChoice:
    global _choice
    if _choice is None:
        docker_ok: bool | None = None
        if os.environ.get("RABBITMQ_URL"):
            broker = "RABBITMQ_URL"
        else:
            docker_ok = _docker_available()
            broker = "testcontainers" if docker_ok else "none"
        if os.environ.get("MONGODB_URL"):
            store = "MONGODB_URL" if os.environ["MONGODB_URL"] != MEMORY_URL else "memory"
        else:
            docker_ok = _docker_available() if docker_ok is None else docker_ok
            store = "testcontainers" if docker_ok else "memory"
        _choice = BackendChoice(broker, store)
    return _choice


def pytest_report_header(config: pytest.Config) -> list[str]:
    choice = backend_choice()
    broker = {
        "RABBITMQ_URL": f"real RabbitMQ at {_redact(os.environ.get('RABBITMQ_URL'))}",
        "testcontainers": f"real RabbitMQ in a testcontainers container ({RABBITMQ_IMAGE})",
        "none": "NONE: set RABBITMQ_URL or run a Docker engine; broker tests will fail",
    }[choice.broker]
    mongodb = f"real MongoDB at {_redact(os.environ.get('MONGODB_URL'))}"
    if choice.store == "MONGODB_URL" and _is_fakemongo(os.environ["MONGODB_URL"]):
        mongodb = (
            "soudan-fakemongo (mongomock behind the MongoDB wire protocol; NOT MongoDB) at "
            + _redact(os.environ["MONGODB_URL"])
        )
    store = {
        "MONGODB_URL": mongodb,
        "testcontainers": f"real MongoDB in a testcontainers container ({MONGODB_IMAGE})",
        "memory": "in-process fake (mongomock behind soudan_shared.store.MemoryClient); "
        "no MONGODB_URL and no Docker engine",
    }[choice.store]
    return [f"soudan broker: {broker}", f"soudan store:  {store}"]


# soudan-fakemongo (tools/fakemongo) puts this field in its hello; a MongoDB server never does.
FAKEMONGO_MARKER = "soudanFakemongo"


def _is_fakemongo(url: str) -> bool:
    """Whether the server at ``url`` answers hello as soudan-fakemongo (1 s at most)."""
    try:
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            url, serverSelectionTimeoutMS=1000, connectTimeoutMS=1000, socketTimeoutMS=1000
        )
        try:
            hello = client.admin.command("hello")
        finally:
            client.close()
    except Exception:
        return False
    return bool(hello.get(FAKEMONGO_MARKER))


def _redact(url: str | None) -> str:
    if not url:
        return ""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


# -- broker -------------------------------------------------------------------------------------


class BrokerControl:
    """Fault injection on the broker itself."""

    def __init__(self, url: str, container: Any = None) -> None:
        self.url = url
        self._container = container

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 5672

    def url_via(self, port: int) -> str:
        """The broker's URL with its address replaced by a local port (a proxy in front)."""
        parts = urlsplit(self.url)
        netloc = parts.netloc.rsplit("@", 1)
        creds = netloc[0] + "@" if len(netloc) == 2 else ""
        return parts._replace(netloc=f"{creds}127.0.0.1:{port}").geturl()

    def close_all_connections(self) -> None:
        """Have the broker close every client connection (``rabbitmqctl close_all_connections``)."""
        args = ["rabbitmqctl", "close_all_connections", "soudan fault test"]
        if self._container is not None:
            code, out = self._container.exec(args)
            if code != 0:
                raise RuntimeError(f"rabbitmqctl failed in the container: {out!r}")
            return
        if shutil.which("rabbitmqctl") is None:
            raise RuntimeError("rabbitmqctl is not on PATH; cannot close the broker's connections")
        subprocess.run(args, check=True, capture_output=True, timeout=60)  # noqa: S603


@pytest.fixture(scope="session")
def broker() -> Iterator[BrokerControl]:
    choice = backend_choice()
    if choice.broker == "RABBITMQ_URL":
        yield BrokerControl(os.environ["RABBITMQ_URL"])
        return
    if choice.broker == "none":
        pytest.fail("no RabbitMQ: set RABBITMQ_URL or run a Docker engine for testcontainers")
    from testcontainers.rabbitmq import RabbitMqContainer

    with RabbitMqContainer(RABBITMQ_IMAGE) as container:
        host = container.get_container_host_ip()
        port = container.get_exposed_port(5672)
        yield BrokerControl(f"amqp://guest:guest@{host}:{port}/", container)


@pytest.fixture(scope="session")
def rabbitmq_url(broker: BrokerControl) -> str:
    return broker.url


@pytest.fixture
async def topology(rabbitmq_url: str) -> AsyncIterator[Topology]:
    """A topology under a namespace of its own, deleted after the test."""
    topo = Topology(namespace=f"t{uuid.uuid4().hex[:10]}")
    yield topo
    await delete_topology(rabbitmq_url, topo)


async def delete_topology(url: str, topo: Topology) -> None:
    connection = await aio_pika.connect(url, timeout=10)
    async with connection:
        channel = await connection.channel()
        for spec in topo.queues:
            for name in (topo.queue(spec.name), topo.dead_letter_queue(spec.name)):
                with contextlib.suppress(Exception):
                    await channel.queue_delete(name, if_unused=False, if_empty=False)
        for name in (topo.exchange, topo.dead_letter_exchange):
            with contextlib.suppress(Exception):
                await channel.exchange_delete(name)


@pytest.fixture
async def make_bus(rabbitmq_url: str, topology: Topology) -> AsyncIterator[Callable[..., Bus]]:
    """Build buses on the test's topology; each is closed after the test."""
    buses: list[Bus] = []

    def make(service: str = "test", *, url: str | None = None, **kwargs: Any) -> Bus:
        bus = Bus(
            url or rabbitmq_url,
            topology=kwargs.pop("topology", topology),
            service=service,
            **kwargs,
        )
        buses.append(bus)
        return bus

    yield make
    for bus in buses:
        await bus.close()


@pytest.fixture
async def raw_channel(rabbitmq_url: str) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A plain channel, to look at queues from outside the code under test."""
    connection = await aio_pika.connect(rabbitmq_url, timeout=10)
    async with connection:
        yield await connection.channel()


# -- store --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mongodb_url() -> Iterator[str]:
    choice = backend_choice()
    if choice.store in ("MONGODB_URL", "memory") and os.environ.get("MONGODB_URL"):
        yield os.environ["MONGODB_URL"]
        return
    if choice.store == "memory":
        yield MEMORY_URL
        return
    from testcontainers.mongodb import MongoDbContainer

    with MongoDbContainer(MONGODB_IMAGE) as container:
        yield container.get_connection_url()


@pytest.fixture
def database_name() -> str:
    """The test's own database name."""
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def store(mongodb_url: str, database_name: str) -> AsyncIterator[Store]:
    """A handle on the test's own database, dropped afterwards."""
    opened = await open_store(mongodb_url, database=database_name)
    yield opened
    await opened.client.drop_database(database_name)
    await opened.close()


def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` (the path of a MongoDB URL names the database)."""
    parts = urlsplit(url)
    if parts.scheme == "memory":
        return f"memory:///{name}"
    return parts._replace(path=f"/{name}").geturl()


@pytest.fixture
def service_env(
    rabbitmq_url: str,
    mongodb_url: str,
    topology: Topology,
    database_name: str,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, str]:
    """Environment of a service under test: the test's bus namespace and database (``store``)."""
    env = {
        "RABBITMQ_URL": rabbitmq_url,
        "MONGODB_URL": with_database(mongodb_url, database_name),
        "BUS_NAMESPACE": topology.namespace,
        "LOG_HASH_KEY": "test-hash-key",
        "LINE_CHANNEL_SECRET": "test-channel-secret",
        "LINE_CHANNEL_ACCESS_TOKEN": "test-access-token",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env
