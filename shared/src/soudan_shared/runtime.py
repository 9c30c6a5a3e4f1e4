"""The pieces every service's composition root uses: bus, store and facts as app resources.

A service's ``create_app(settings)`` builds the base app (:mod:`soudan_shared.http`), then calls
:func:`use_store` (if it keeps state) and :func:`use_bus` with a function that registers its
consumers. The resources live in aiohttp's ``cleanup_ctx`` under typed keys: created inside the
running loop, closed on shutdown, in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from typing import Any, TypeVar

import structlog
from aiohttp import web

from soudan_shared.bus import Bus, PublishFailed
from soudan_shared.fact_types import SERVICE_STARTED, SERVICE_STOPPED
from soudan_shared.facts import Facts
from soudan_shared.http import REGISTRY, add_readiness_check
from soudan_shared.logging import configure_logging
from soudan_shared.settings import BaseServiceSettings, MongoSettings
from soudan_shared.store import IndexSpec, Store, open_store
from soudan_shared.topology import Topology

log = structlog.get_logger(__name__)

BUS: web.AppKey[Bus] = web.AppKey("bus", Bus)
STORE: web.AppKey[Store] = web.AppKey("store", Store)
FACTS: web.AppKey[Facts] = web.AppKey("facts", Facts)

ConsumerSetup = Callable[[web.Application, Bus], None]


def use_store(
    app: web.Application, settings: MongoSettings, indexes: Iterable[IndexSpec] = ()
) -> None:
    """Open the store at start-up (indexes created), close it on shutdown, check it in /readyz;
    with ``STORE_COMMAND_METRICS``, its commands counted in the app's metrics."""
    specs = tuple(indexes)
    url = settings.mongodb_url.get_secret_value()
    registry = app[REGISTRY] if settings.store_command_metrics else None

    async def store_ctx(app: web.Application) -> AsyncIterator[None]:
        store = await open_store(url, registry=registry)
        await store.ensure_indexes(specs)
        app[STORE] = store
        yield
        await store.close()

    app.cleanup_ctx.append(store_ctx)
    add_readiness_check(app, "store", lambda: app[STORE].ping())


def use_bus(
    app: web.Application,
    settings: BaseServiceSettings,
    service: str,
    *,
    consumers: ConsumerSetup | None = None,
    topology: Topology | None = None,
    publish_timeout: float = 5.0,
) -> None:
    """Connect to RabbitMQ in the background (the HTTP side is up meanwhile, not ready)."""

    async def bus_ctx(app: web.Application) -> AsyncIterator[None]:
        bus = Bus(
            settings.rabbitmq_url.get_secret_value(),
            topology=topology or settings.topology(),
            service=service,
            publish_timeout=publish_timeout,
            metrics_registry=app[REGISTRY],
        )
        facts = Facts(bus, service)
        app[BUS] = bus
        app[FACTS] = facts
        if consumers is not None:
            consumers(app, bus)
        bus.start()
        announce = asyncio.create_task(_announce_start(bus, facts))
        yield
        announce.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await announce
        if bus.is_ready:
            with contextlib.suppress(PublishFailed):
                await facts.publish(SERVICE_STOPPED, _instance())
        await bus.close()

    app.cleanup_ctx.append(bus_ctx)
    add_readiness_check(app, "broker", lambda: app[BUS].is_ready)


async def _announce_start(bus: Bus, facts: Facts) -> None:
    await bus.wait_started()
    for _ in range(10):
        try:
            await facts.publish(SERVICE_STARTED, _instance())
            return
        except PublishFailed:
            await asyncio.sleep(1)


def _instance() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def setup_logging(settings: BaseServiceSettings, service: str) -> None:
    configure_logging(
        service=service,
        level=settings.log_level,
        hash_key=settings.log_hash_key.get_secret_value().encode(),
    )


class PortInUse(SystemExit):
    """The port a service was told to listen on is taken: the process stops with one line."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(
            f"cannot listen on {host}:{port}: the port is already in use "
            "(another instance running? set a free port); stopping"
        )


def _is_address_in_use(exc: OSError) -> bool:
    return exc.errno == errno.EADDRINUSE or "address already in use" in str(exc).lower()


def _bound_socket(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything starts (so a taken port stops the process
    before it connects to the store or the broker, and no other process can take it between
    the check and the start)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if _is_address_in_use(exc):
            raise PortInUse(host, port) from None
        raise
    return sock


T = TypeVar("T")

EVENT_LOOP_ENV = "SOUDAN_EVENT_LOOP"
EVENT_LOOPS = ("uvloop", "asyncio")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The loop a service runs on: uvloop's (libuv, the same asyncio API at a lower cost per
    socket operation: docs/BENCHMARKS.md, "Cost of one message") unless ``SOUDAN_EVENT_LOOP``
    says ``asyncio``, or uvloop is not installed (it is a dependency wherever it builds)."""
    choice = os.environ.get(EVENT_LOOP_ENV, "uvloop").strip().lower() or "uvloop"
    if choice not in EVENT_LOOPS:
        allowed = ", ".join(EVENT_LOOPS)
        raise SystemExit(f"{EVENT_LOOP_ENV} must be one of {allowed}, not {choice!r}")
    if choice == "uvloop":
        try:
            import uvloop
        except ImportError:  # pragma: no cover - a platform uvloop does not build on
            log.warning("uvloop_unavailable")
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def event_loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``uvloop`` or ``asyncio``: which loop a process runs on, for its start-up log line."""
    return type(loop).__module__.split(".")[0]


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the service loop (:func:`new_event_loop`)."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)


def serve(app: web.Application, port: int, *, host: str = "0.0.0.0") -> None:  # noqa: S104
    """Run one service until SIGTERM/SIGINT, closing its resources cleanly; a port in use
    stops it at once with one line (:class:`PortInUse`), not a traceback."""
    sock = _bound_socket(host, port)
    loop = new_event_loop()
    log.info("event_loop", loop=event_loop_name(loop))
    web.run_app(app, sock=sock, print=None, access_log=None, shutdown_timeout=10, loop=loop)


async def start_site(app: web.Application, port: int, host: str = "0.0.0.0") -> web.AppRunner:  # noqa: S104
    """Start ``app`` on ``port`` inside an already running loop (tests, ``soudan-all``)."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=10)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        if _is_address_in_use(exc):
            raise PortInUse(host, port) from None
        raise
    return runner
