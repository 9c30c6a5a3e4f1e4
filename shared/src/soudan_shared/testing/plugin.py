"""Pytest fixtures: a real RabbitMQ always, MongoDB where there is one, fresh names per test.

- Broker: ``RABBITMQ_URL`` if set, else a broker answering on 127.0.0.1:5672 (guest/guest, as
  Debian's rabbitmq-server and the CI machine have it), else a testcontainers RabbitMQ (needs a
  Docker engine).
- Store: ``MONGODB_URL`` if set, else a testcontainers MongoDB where Docker runs, else the
  in-process fake (``memory://``). ``--secantus`` starts a SecantusDB server for the run and
  points ``MONGODB_URL`` at it; ``--store-tests-only`` keeps the tests that reach the store. The
  header names what answers at ``MONGODB_URL`` from its buildInfo (SecantusDB or MongoDB x.y).
- Cluster: ``rabbitmq_cluster`` starts three RabbitMQ nodes of their own (Debian's
  ``rabbitmq-server``, free ports, a temporary directory) joined in one cluster, for the tests
  marked ``cluster``; never the broker above.
- Every test gets its own bus namespace (queues and exchanges) and its own database, removed
  afterwards, so tests never see each other's data.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import aio_pika
import aiormq
import pymongo
import pytest

from soudan_shared.bus import Bus, broker_urls
from soudan_shared.store import MEMORY_URL, Store, open_store
from soudan_shared.testing.cluster import Cluster, ClusterUnavailable, start_cluster
from soudan_shared.topology import Topology

RABBITMQ_IMAGE = "rabbitmq:4.1.4-management"
MONGODB_IMAGE = "mongo:8.0.15"


LOCAL_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"


def _local_broker_answers() -> bool:
    """Whether an AMQP 0-9-1 broker answers on 127.0.0.1:5672 (Connection.Start within 2 s)."""
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=2) as sock:
            sock.sendall(b"AMQP\x00\x00\x09\x01")
            frame = sock.recv(7)
    except OSError:
        return False
    return len(frame) == 7 and frame[0] == 1  # a method frame on channel 0


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
        elif _local_broker_answers():
            broker = "local"
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
        "local": f"real RabbitMQ answering at {_redact(LOCAL_RABBITMQ_URL)} (guest/guest; "
        "no RABBITMQ_URL)",
        "testcontainers": f"real RabbitMQ in a testcontainers container ({RABBITMQ_IMAGE})",
        "none": "NONE: set RABBITMQ_URL, start RabbitMQ on 127.0.0.1:5672 or run a "
        "Docker engine; broker tests will fail",
    }[choice.broker]
    mongodb = _describe_server(os.environ["MONGODB_URL"]) if choice.store == "MONGODB_URL" else ""
    store = {
        "MONGODB_URL": mongodb,
        "testcontainers": f"real MongoDB in a testcontainers container ({MONGODB_IMAGE})",
        "memory": "in-process fake (mongomock behind soudan_shared.store.MemoryClient); "
        "no MONGODB_URL and no Docker engine",
    }[choice.store]
    workers = getattr(config.option, "numprocesses", None)
    if _secantus is not None and workers:
        store += f"; each of the {workers} worker processes starts one of its own"
    return [f"soudan broker: {broker}", f"soudan store:  {store}"]


def _describe_server(url: str) -> str:
    """What answers at ``url``, from its buildInfo: SecantusDB names itself there (5 s at most)."""
    try:
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            url, serverSelectionTimeoutMS=5000, connectTimeoutMS=5000, socketTimeoutMS=5000
        )
        try:
            info = client.admin.command("buildInfo")
        finally:
            client.close()
    except Exception as exc:
        return f"MONGODB_URL {_redact(url)}, not answering ({type(exc).__name__})"
    if info.get("secantusVersion"):
        return (
            f"SecantusDB {info['secantusVersion']} (reports MongoDB {info.get('version')}; "
            f"NOT MongoDB) at {_redact(url)}"
        )
    return f"MongoDB {info.get('version')} at {_redact(url)}"


# -- options: the SecantusDB pass ---------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("soudan")
    group.addoption(
        "--secantus",
        action="store_true",
        help="start a SecantusDB server (secantusd-py) on a free port with its data in a "
        "temporary directory, point MONGODB_URL at it, stop it at the end",
    )
    group.addoption(
        "--store-tests-only",
        action="store_true",
        help="run only the tests that use the store (those whose fixtures reach mongodb_url)",
    )


_secantus: Any = None


def pytest_configure(config: pytest.Config) -> None:
    """With ``--secantus``, start the run's SecantusDB server. Under pytest-xdist (``-n``) every
    worker process starts one of its own (a server is one Python process: shared, it would hold
    both workers up) and the controller's answers only the run header's question."""
    global _secantus
    # The test SMTP servers (aiosmtpd) log every connection at INFO from a thread of their own,
    # which may outlive the test whose captured output the handler writes to.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    if config.getoption("secantus", False) and _secantus is None:
        import tempfile
        from pathlib import Path

        from soudan_shared.testing.secantus import start_secantus

        data_dir = Path(tempfile.mkdtemp(prefix="soudan-secantus-"))
        _secantus = start_secantus(data_dir)
        os.environ["MONGODB_URL"] = _secantus.url


def pytest_unconfigure(config: pytest.Config) -> None:
    global _secantus
    if _secantus is not None:
        _secantus.stop()
        shutil.rmtree(_secantus.data_dir, ignore_errors=True)
        _secantus = None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("store_tests_only", False):
        return
    keep = [item for item in items if "mongodb_url" in getattr(item, "fixturenames", ())]
    config.hook.pytest_deselected(items=[item for item in items if item not in keep])
    items[:] = keep


def _redact(url: str | None) -> str:
    if not url:
        return ""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


# -- broker -------------------------------------------------------------------------------------


class BrokerControl:
    """Fault injection on the broker itself, for the whole broker or for one virtual host."""

    def __init__(self, url: str, container: Any = None, vhost: str | None = None) -> None:
        self.url = url
        self._container = container
        self.vhost = vhost  # None: the URL's own (the default one); the cut reaches everyone

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

    @contextlib.contextmanager
    def own_vhost(self) -> Iterator[BrokerControl]:
        """A virtual host of its own, for the URL's user, deleted afterwards: connections cut
        there (``close_all_connections``) are only the ones made through it, so a fault test
        never reaches another test's connections, in this process or in a parallel run."""
        name = f"soudan-fault-{uuid.uuid4().hex[:10]}"
        user = unquote(urlsplit(self.url).username or "guest")
        self._rabbitmqctl("add_vhost", name)
        try:
            self._rabbitmqctl("set_permissions", "-p", name, user, ".*", ".*", ".*")
            url = urlsplit(self.url)._replace(path="/" + quote(name, safe="")).geturl()
            yield BrokerControl(url, self._container, vhost=name)
        finally:
            self._rabbitmqctl("delete_vhost", name)

    def close_all_connections(self) -> None:
        """Have the broker close every client connection (``rabbitmqctl close_all_connections``)
        of this control's virtual host, or of the whole broker for the default one."""
        scope = ["--vhost", self.vhost] if self.vhost else []
        self._rabbitmqctl("close_all_connections", *scope, "soudan fault test")

    def describe(self) -> str:
        """The broker's view of this control's virtual host (queues with their ready and
        unacknowledged counts and consumers, the consumers, the connections), for a failure's
        message: what a test that waits on a delivery saw on the other side."""
        scope = ["-p", self.vhost or "/"]
        parts = []
        for args in (
            (
                "list_queues",
                *scope,
                "name",
                "messages_ready",
                "messages_unacknowledged",
                "consumers",
            ),
            ("list_consumers", *scope, "queue_name", "channel_pid", "consumer_tag", "active"),
            ("list_connections", "vhost", "name", "state", "channels"),
        ):
            try:
                parts.append(f"$ rabbitmqctl {' '.join(args)}\n{self._rabbitmqctl(*args, '-q')}")
            except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
                parts.append(f"rabbitmqctl {args[0]} failed: {exc}")
        return "\n".join(parts)

    def _rabbitmqctl(self, *args: str) -> str:
        command = ["rabbitmqctl", *args]
        if self._container is not None:
            code, out = self._container.exec(command)
            if code != 0:
                raise RuntimeError(f"rabbitmqctl {args[0]} failed in the container: {out!r}")
            return out.decode(errors="replace") if isinstance(out, bytes) else str(out)
        if shutil.which("rabbitmqctl") is None:
            raise RuntimeError(f"rabbitmqctl is not on PATH; cannot run rabbitmqctl {args[0]}")
        done = subprocess.run(command, check=True, capture_output=True, timeout=60)  # noqa: S603
        return done.stdout.decode(errors="replace")


@pytest.fixture(scope="session")
def broker() -> Iterator[BrokerControl]:
    choice = backend_choice()
    if choice.broker == "RABBITMQ_URL":
        yield BrokerControl(os.environ["RABBITMQ_URL"])
        return
    if choice.broker == "local":
        yield BrokerControl(LOCAL_RABBITMQ_URL)
        return
    if choice.broker == "none":
        pytest.fail("no RabbitMQ: set RABBITMQ_URL or run a Docker engine for testcontainers")
    from testcontainers.rabbitmq import RabbitMqContainer

    with RabbitMqContainer(RABBITMQ_IMAGE) as container:
        host = container.get_container_host_ip()
        port = container.get_exposed_port(5672)
        yield BrokerControl(f"amqp://guest:guest@{host}:{port}/", container)


def own_vhost_fixtures() -> tuple[Any, Any]:
    """``broker, rabbitmq_url = own_vhost_fixtures()`` in a test module that cuts the broker's
    connections: the module's tests then run on a virtual host of their own (deleted after the
    module), so the cut reaches only their connections, never another test's in this run or in
    a run beside it."""

    @pytest.fixture(name="broker", scope="module")
    def module_broker(broker: BrokerControl) -> Iterator[BrokerControl]:
        with broker.own_vhost() as own:
            yield own

    @pytest.fixture(name="rabbitmq_url", scope="module")
    def module_rabbitmq_url(broker: BrokerControl) -> str:
        return broker.url

    return module_broker, module_rabbitmq_url


@pytest.fixture(scope="session")
def rabbitmq_cluster() -> Iterator[Cluster]:
    """Three RabbitMQ nodes of this machine's Debian RabbitMQ joined in a cluster, started for
    the run and stopped at its end (the ``cluster`` tests). A cluster that cannot start fails
    the tests that need it, with the reason; they are never skipped."""
    try:
        cluster = start_cluster(3)
    except ClusterUnavailable as exc:
        pytest.fail(f"the three-node RabbitMQ cluster did not start: {exc}", pytrace=False)
    atexit.register(cluster.stop)  # also when the run is interrupted before the teardown
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.base, ignore_errors=True)


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
    """Delete ``topo``'s queues and exchanges, through the first of ``url``'s brokers (one
    address, or several separated by commas) that answers."""
    addresses = broker_urls(url)
    for n, address in enumerate(addresses, 1):
        try:
            connection = await aio_pika.connect(address, timeout=10)
            break
        except (OSError, TimeoutError, aiormq.exceptions.AMQPError):
            if n == len(addresses):
                raise
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
