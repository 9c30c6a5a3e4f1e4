"""The RabbitMQ bus (aio-pika): connect, declare, publish with confirms, consume safely.

Connecting: ``url`` may name several brokers (the nodes of a cluster), separated by commas. The
connection is robust (aio-pika reconnects it and restores its channels and consumers) and moves
to the next address each time a connection is lost or an attempt fails, so a service fails
over to a live node by itself; quorum queues keep their messages while a majority of their
nodes lives, whichever node a client reaches them through.

Publishing: publisher confirms **and** ``mandatory``; a returned (unroutable) message raises;
every publish has a timeout, because during an outage a robust connection waits rather than
fails. Any failure surfaces as :class:`PublishFailed`.

Consuming (:meth:`Bus.consume`): a message is acked only after its handler returned, i.e. after
the handler's effects are stored. What a handler cannot ever handle is dead-lettered with a reason
(:class:`Permanent`, or a body that does not parse); anything else is retried in process a few
times and then requeued, and the queue's delivery limit dead-letters a message that never
succeeds. Messages that share an ordering key are handled one after another, in delivery order.

Facts may come one per message or several in one :class:`~soudan_shared.contracts.FactBatch`
(the facts of one handled event): a consumer of facts never sees the batch. Its handler is called
once per fact (those matching its bindings, for a live view), concurrently, and the batch is
acknowledged when all of them are handled; if one fails, the whole batch is tried again (handlers
are idempotent) or dead-lettered whole, with the reason.

A consumer may name a ``priority`` test: among the messages it holds (up to ``prefetch``), those
that pass it start first, ahead of other keys' messages delivered earlier; the order within one
key never changes (a key's earlier messages go first with it). Triage uses it so an urgent text
jumps a backlog (after an outage, or under a burst) instead of waiting its turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar, cast
from urllib.parse import urlsplit

import aio_pika
import aiormq
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aiormq.abc import FieldTable
from prometheus_client import CollectorRegistry, Counter
from pymongo.errors import ConnectionFailure
from yarl import URL

from soudan_shared.contracts import (
    Fact,
    FactBatch,
    Message,
    MessageRejected,
    new_id,
    parse_message,
    stable_id,
)
from soudan_shared.fact_types import BUS_DEAD_LETTERED
from soudan_shared.topology import FACT_BATCHES, Topology

log = structlog.get_logger(__name__)

M = TypeVar("M", bound=Message)
Handler = Callable[[M], Awaitable[None]]

REASON_HEADER = "x-soudan-reason"


def broker_urls(url: str | Sequence[str]) -> list[str]:
    """The broker addresses of ``url``: one ``amqp://`` or ``amqps://`` URL, several separated by
    commas (a comma in a password is written ``%2C``), or a list of them."""
    parts = url.split(",") if isinstance(url, str) else list(url)
    urls = [part.strip() for part in parts if part.strip()]
    if not urls:
        raise ValueError("no broker address (amqp://user:password@host:5672/)")
    for n, candidate in enumerate(urls, 1):
        if urlsplit(candidate).scheme not in ("amqp", "amqps"):
            # The address itself is not repeated: it may hold a password.
            raise ValueError(f"broker address {n} of {len(urls)} is not an amqp:// or amqps:// URL")
    return urls


class FailoverConnection(aio_pika.RobustConnection):
    """A robust connection over several broker addresses, round robin.

    aio-pika's robust connection reconnects to the one URL it was made with; this one points
    itself at the next address whenever a connection closes or an attempt fails (aio-pika calls
    ``_on_connection_close`` in both cases), before the reconnect that follows.
    """

    def __init__(self, url: Any, *args: Any, addresses: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(url, *args, **kwargs)
        self.addresses = [URL(a) for a in addresses] or [self.url]
        self._index = self.addresses.index(self.url) if self.url in self.addresses else 0

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        if len(self.addresses) > 1 and not self.close_called:
            self._index = (self._index + 1) % len(self.addresses)
            self.url = self.addresses[self._index]
        await super()._on_connection_close(closing)


class PublishFailed(Exception):
    """The broker did not take the message: down, refused, unroutable or too slow to confirm."""


class Permanent(Exception):
    """A handler's verdict that this message can never succeed: dead-letter it with this reason."""


class Transient(Exception):
    """A handler's verdict that this message may succeed later: retry it."""


@dataclass(frozen=True)
class RetryPolicy:
    """In-process retries before a failing message is requeued to the broker.

    A failure that says a dependency is unreachable (``unavailable``: by default the store's
    connection failures, server selection timeouts included, and a publish the broker did not
    take) is retried in process for as long as it lasts, with the delay capped at
    ``unavailable_max_delay``: requeueing could not help, and would spend the queue's delivery
    limit, which is for messages that can never succeed, so a long database outage, or a
    broker node failing over (a handler's publishes refused for seconds, the message and those
    of its key behind it requeued again and again), would dead-letter students' messages that
    are fine.
    """

    attempts: int = 3
    first_delay: float = 0.1
    max_delay: float = 2.0
    unavailable: tuple[type[BaseException], ...] = (ConnectionFailure, PublishFailed)
    unavailable_max_delay: float = 5.0

    def delay(self, attempt: int, *, cap: float | None = None) -> float:
        base: float = min(cap or self.max_delay, self.first_delay * 2**attempt)
        return base / 2 + random.uniform(0, base / 2)  # noqa: S311 - jitter, not security


class BusMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        registry = registry or CollectorRegistry()
        self.published = Counter(
            "soudan_bus_published",
            "Messages confirmed by the broker",
            ["routing"],
            registry=registry,
        )
        self.publish_failures = Counter(
            "soudan_bus_publish_failures",
            "Publishes the broker did not confirm",
            ["reason"],
            registry=registry,
        )
        self.consumed = Counter(
            "soudan_bus_consumed",
            "Messages handled, by outcome",
            ["queue", "outcome"],
            registry=registry,
        )


class Bus:
    """One robust connection per service: a confirmed publishing channel and consumer channels."""

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        topology: Topology,
        service: str,
        publish_timeout: float = 5.0,
        metrics_registry: CollectorRegistry | None = None,
    ) -> None:
        self._urls = broker_urls(url)
        self._next_url = 0  # where the next fresh connection starts; moves on after a failure
        self.topology = topology
        self.service = service
        self.publish_timeout = publish_timeout
        self.metrics = BusMetrics(metrics_registry)
        self._connection: AbstractRobustConnection | None = None
        self._publish_channel: AbstractChannel | None = None
        self._renewing: asyncio.Task[None] | None = None
        self._renewed_at = 0.0
        self._exchange: AbstractExchange | None = None
        self._dead_exchange: AbstractExchange | None = None
        self._consumers: list[_Consumer[Any]] = []
        self._pending_consumers: list[_Consumer[Any]] = []
        self._connect_task: asyncio.Task[None] | None = None
        self._closing = False
        self._log = log.bind(service=service)
        self.started = asyncio.Event()

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background, retrying until the broker is up; then start consumers."""
        if self._connect_task is None:
            self._connect_task = asyncio.create_task(self._connect_forever(), name="bus-connect")

    async def wait_started(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self.started.wait(), timeout)

    async def _connect_forever(self) -> None:
        delay = 0.25
        while True:
            try:
                connection = await self._connect()
            except (TimeoutError, OSError, aiormq.exceptions.AMQPError) as exc:
                self._log.warning(
                    "broker_unreachable",
                    address=self._next_url + 1,
                    retry_in=round(delay, 2),
                    error=repr(exc)[:200],
                )
                self._next_url = (self._next_url + 1) % len(self._urls)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._connection = connection
            try:
                await self._set_up(connection)
                break
            except Exception:
                # The connection dropped while declaring (the broker restarting, an operator
                # closing connections), or the broker refused a declaration: start again on a
                # fresh connection rather than stay connected and never ready.
                self._log.exception("broker_setup_failed", retry_in=round(delay, 2))
                self._connection = self._exchange = self._dead_exchange = None
                self._publish_channel = None
                with contextlib.suppress(Exception):
                    await connection.close()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        connection.reconnect_callbacks.add(self._on_reconnect)
        connection.close_callbacks.add(self._on_close)
        self._consumers.extend(self._pending_consumers)
        self._pending_consumers.clear()
        self._log.info("broker_connected")
        self.started.set()

    async def _connect(self) -> AbstractRobustConnection:
        made: list[AbstractRobustConnection] = []

        def make(*args: Any, **kwargs: Any) -> AbstractRobustConnection:
            made.append(FailoverConnection(*args, addresses=self._urls, **kwargs))
            return made[-1]

        try:
            connection: AbstractRobustConnection = await aio_pika.connect_robust(
                self._urls[self._next_url],
                client_properties={"connection_name": f"soudan-{self.service}"},
                reconnect_interval=1.0,
                timeout=10,
                connection_class=cast(Any, make),
            )
        except BaseException:
            # A half-open connection left to the garbage collector would try to close itself
            # from __del__, too late ("coroutine ... was never awaited"): close it here.
            for half_open in made:
                with contextlib.suppress(Exception):
                    await half_open.close()
            raise
        return connection

    async def _set_up(self, connection: AbstractRobustConnection) -> None:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await declare_topology(channel, self.topology)
        self._publish_channel = channel
        self._exchange = await channel.get_exchange(self.topology.exchange, ensure=False)
        self._dead_exchange = await channel.get_exchange(
            self.topology.dead_letter_exchange, ensure=False
        )
        for consumer in self._pending_consumers:
            await consumer.start(connection)

    def _on_reconnect(self, *_: Any) -> None:
        self._log.info("broker_reconnected")

    def _on_close(self, *_: Any) -> None:
        if self.started.is_set() and not self._closing:
            self._log.warning("broker_connection_lost")

    async def close(self) -> None:
        """Stop consuming (in-flight handlers get a moment to finish) and close. Idempotent."""
        if self._closing:
            return
        self._closing = True
        if self._connect_task is not None and not self._connect_task.done():
            self._connect_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._connect_task
        if self._renewing is not None:
            self._renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._renewing
        for consumer in self._consumers:
            await consumer.stop()
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()

    @property
    def is_ready(self) -> bool:
        """Connected right now (a robust connection may be between reconnects).

        True as soon as the topology is declared, before the consumers start, so a handler
        working through a start-up backlog can already publish.
        """
        connection = self._connection
        return (
            self._exchange is not None
            and connection is not None
            and not connection.is_closed
            and connection.connected.is_set()
        )

    # -- publishing ---------------------------------------------------------------------------

    async def publish(self, message: Message, *, timeout: float | None = None) -> None:
        """Publish and wait for the broker's confirm; raise :class:`PublishFailed` otherwise."""
        routing_key = self.topology.routing_key(message)
        await self._publish_raw(
            self._exchange,
            routing_key,
            _amqp_message(message, self.service),
            timeout=self.publish_timeout if timeout is None else timeout,
        )
        self.metrics.published.labels(routing_key.split(".", 1)[0]).inc()

    async def _publish_raw(
        self,
        exchange: AbstractExchange | None,
        routing_key: str,
        message: aio_pika.Message,
        *,
        timeout: float,
    ) -> None:
        if exchange is None or not self.is_ready:
            self.metrics.publish_failures.labels("not_connected").inc()
            raise PublishFailed("not connected to the broker")
        try:
            confirmation = await asyncio.wait_for(
                exchange.publish(message, routing_key=routing_key, mandatory=True, timeout=timeout),
                timeout,
            )
        except aiormq.exceptions.DeliveryError as exc:
            reason = "unroutable" if exc.message and exc.message.delivery is not None else "nacked"
            self.metrics.publish_failures.labels(reason).inc()
            if reason == "nacked":
                self._renew_publishing()
            raise PublishFailed(f"{reason}: {routing_key}") from exc
        except TimeoutError as exc:
            self.metrics.publish_failures.labels("timeout").inc()
            raise PublishFailed(f"no confirm within {timeout:g}s") from exc
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this task is being cancelled: let it go
            # aiormq hands a publish caught by a connection reset its cancelled reader task's
            # CancelledError; to the caller that is a publish that failed, like any other loss.
            self.metrics.publish_failures.labels("error").inc()
            raise PublishFailed("the connection was lost while publishing") from exc
        except Exception as exc:
            self.metrics.publish_failures.labels("error").inc()
            raise PublishFailed(f"{type(exc).__name__}: {exc}"[:300]) from exc
        if not isinstance(confirmation, aiormq.spec.Basic.Ack):
            self.metrics.publish_failures.labels("nacked").inc()
            self._renew_publishing()
            raise PublishFailed(f"broker answered {type(confirmation).__name__}")

    def _renew_publishing(self) -> None:
        """Publish on a fresh channel from now on (at most once a second), the current one
        closed once the new one is open.

        RabbitMQ 3.10 nacks every publish of a channel whose first publish to a quorum queue
        came while that queue had no leader (its node just died), even after a new leader is
        elected; a new channel publishes normally. A nack for any other reason (a full queue)
        costs only a channel.
        """
        loop = asyncio.get_running_loop()
        if self._renewing is not None or loop.time() - self._renewed_at < 1.0 or self._closing:
            return
        self._renewed_at = loop.time()
        self._renewing = asyncio.create_task(self._open_publishing(), name="bus-renew-publishing")

    async def _open_publishing(self) -> None:
        old, connection = self._publish_channel, self._connection
        try:
            if connection is None:
                return
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            exchange = await channel.get_exchange(self.topology.exchange, ensure=False)
            dead = await channel.get_exchange(self.topology.dead_letter_exchange, ensure=False)
            self._publish_channel, self._exchange, self._dead_exchange = channel, exchange, dead
            self._log.info("publish_channel_renewed")
            if old is not None:
                with contextlib.suppress(Exception):
                    await old.close()
        except Exception as exc:  # between reconnects: the next nack tries again
            self._log.warning("publish_channel_renewal_failed", error=type(exc).__name__)
        finally:
            self._renewing = None

    async def dead_letter(self, queue: str, incoming: AbstractIncomingMessage, reason: str) -> None:
        """Put a copy of ``incoming`` in ``queue``'s dead-letter queue with ``reason``."""
        headers = dict(incoming.headers or {})
        headers.update(
            {
                REASON_HEADER: reason[:500],
                "x-soudan-queue": queue,
                "x-soudan-dead-at": datetime.now(UTC).isoformat(),
                "x-soudan-original-routing-key": incoming.routing_key or "",
            }
        )
        copy = aio_pika.Message(
            incoming.body,
            headers=headers,
            content_type=incoming.content_type,
            message_id=incoming.message_id,
            correlation_id=incoming.correlation_id,
            type=incoming.type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        await self._publish_raw(self._dead_exchange, queue, copy, timeout=self.publish_timeout)

    # -- consuming ----------------------------------------------------------------------------

    def consume(
        self,
        queue: str,
        model: type[M],
        handler: Handler[M],
        *,
        prefetch: int = 32,
        ordering_key: Callable[[M], str | None] | None = None,
        retry: RetryPolicy | None = None,
        priority: Callable[[M], bool] | None = None,
        concurrency: int | None = None,
        consumer_priority: int | None = None,
    ) -> None:
        """Handle every message of ``queue`` (a name relative to the namespace) with ``handler``.

        With an ``ordering_key``, at most ``concurrency`` handlers run at once (``prefetch`` by
        default) and one key's messages one after another; the others wait in delivery order,
        those passing ``priority`` first. ``priority`` only matters with ``concurrency`` below
        ``prefetch``: it reorders what is waiting, never what one key sent.

        ``consumer_priority`` is the consumer's ``x-priority``: of a single-active-consumer
        quorum queue's consumers, RabbitMQ 4 makes the highest-priority one active (once the
        active one's deliveries are settled, so the order holds); RabbitMQ 3 keeps the first.
        """
        if priority is not None and ordering_key is None:
            raise ValueError("priority needs an ordering_key (it reorders keys, never within one)")
        consumer = _Consumer(
            self,
            self.topology.queue(queue),
            model,
            handler,
            prefetch=prefetch,
            ordering_key=ordering_key,
            retry=retry or RetryPolicy(),
            priority=priority,
            concurrency=concurrency,
            consumer_priority=consumer_priority,
        )
        self._register(consumer)

    def subscribe(
        self,
        bindings: tuple[str, ...],
        model: type[M],
        handler: Handler[M],
        *,
        prefetch: int = 100,
        batches: bool = True,
    ) -> None:
        """Receive every message matching ``bindings`` in this process, while it runs.

        For live views (the console's queue updates): the queue is exclusive to this connection
        and goes away with it, so nothing is kept for a process that is not running, and a
        failed handler drops the message rather than retrying it. Durable work uses
        :meth:`consume`.

        Facts are also received from batches (every batch comes, and the facts ``bindings`` do
        not match are skipped); ``batches=False`` for bindings whose facts are only ever
        published alone, to be spared that traffic.
        """
        name = self.topology.queue(f"live.{self.service}.{uuid.uuid4().hex[:12]}")
        consumer = _Consumer(
            self,
            name,
            model,
            handler,
            prefetch=prefetch,
            ordering_key=None,
            retry=RetryPolicy(attempts=1),
            live_bindings=bindings,
            batches=batches,
        )
        self._register(consumer)

    def _register(self, consumer: _Consumer[Any]) -> None:
        if self.started.is_set():
            raise RuntimeError("register consumers before the bus starts")
        self._pending_consumers.append(consumer)


async def declare_topology(channel: AbstractChannel, topology: Topology) -> None:
    """Declare every exchange, queue and binding. A mismatch with what exists fails loudly."""
    exchange = await channel.declare_exchange(
        topology.exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )
    dead = await channel.declare_exchange(
        topology.dead_letter_exchange, aio_pika.ExchangeType.DIRECT, durable=True
    )
    for spec in topology.queues:
        name = topology.queue(spec.name)
        queue = await channel.declare_queue(
            name, durable=True, arguments=topology.queue_arguments(spec)
        )
        for key in spec.bindings:
            await queue.bind(exchange, routing_key=key)
        dead_queue = await channel.declare_queue(
            topology.dead_letter_queue(spec.name),
            durable=True,
            arguments=topology.dead_letter_queue_arguments(),
        )
        await dead_queue.bind(dead, routing_key=name)


def _amqp_message(message: Message, service: str) -> aio_pika.Message:
    return aio_pika.Message(
        message.to_json(),
        content_type="application/json",
        message_id=message.id,
        correlation_id=message.correlation_id,
        type=message.type,
        app_id=service,
        headers={"schema": message.schema_version},
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


@dataclass(frozen=True, slots=True)
class _Waiting(Generic[M]):
    incoming: AbstractIncomingMessage
    message: M | FactBatch
    first: bool


class _Consumer(Generic[M]):
    def __init__(
        self,
        bus: Bus,
        queue_name: str,
        model: type[M],
        handler: Handler[M],
        *,
        prefetch: int,
        ordering_key: Callable[[M], str | None] | None,
        retry: RetryPolicy,
        live_bindings: tuple[str, ...] | None = None,
        priority: Callable[[M], bool] | None = None,
        concurrency: int | None = None,
        consumer_priority: int | None = None,
        batches: bool = True,
    ) -> None:
        self.bus = bus
        self.batches = batches
        self.consumer_priority = consumer_priority
        self.live_bindings = live_bindings
        self.queue_name = queue_name
        self.model = model
        self.handler = handler
        self.prefetch = prefetch
        self.ordering_key = ordering_key
        self.retry = retry
        self.priority = priority
        self.concurrency = max(1, concurrency or prefetch)
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        # Keyed messages: the ones delivered and not started, per key, in delivery order; the
        # keys with a handler running; the keys whose next message may start, in the order they
        # became ready (those with a priority message waiting in their own line, first).
        self._waiting: dict[str, deque[_Waiting[M]]] = {}
        self._running: set[str] = set()
        self._ready: deque[str] = deque()
        self._ready_first: deque[str] = deque()
        self._in_ready: set[str] = set()
        self._in_ready_first: set[str] = set()
        self._requeueing: set[str] = set()
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, connection: AbstractRobustConnection) -> None:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=self.prefetch)
        if self.live_bindings is not None:
            self._queue = await channel.declare_queue(
                self.queue_name,
                durable=False,
                exclusive=True,
                auto_delete=True,
                arguments={"x-queue-type": "classic"},
            )
            for key in self.live_bindings:
                await self._queue.bind(self.bus.topology.exchange, routing_key=key)
            if self._takes_batches:
                await self._queue.bind(self.bus.topology.exchange, routing_key=FACT_BATCHES)
        else:
            # Declared (passively) rather than looked up, so the robust channel restores the
            # consumer after a reconnect.
            self._queue = await channel.declare_queue(self.queue_name, passive=True)
        arguments: FieldTable | None = None
        if self.consumer_priority is not None:
            arguments = {"x-priority": self.consumer_priority}
        self._tag = await self._queue.consume(self._on_message, arguments=arguments)

    async def stop(self) -> None:
        # Nothing more starts; what is waiting was never acked and comes back to the queue, in
        # order, when the channel closes.
        self._stopping = True
        # Cancelled only while connected: a lost connection took the consumer with it, and a
        # robust channel would wait for the broker to come back; a stopping consumer does not.
        if self._queue is not None and self._tag is not None and self.bus.is_ready:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._queue.cancel(self._tag), 5)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)

    async def _on_message(self, incoming: AbstractIncomingMessage) -> None:
        # Everything before the first await runs in delivery order, so the per-key chain is
        # built in the order the broker delivered.
        structlog.contextvars.bind_contextvars(
            message_id=incoming.message_id, correlation_id=incoming.correlation_id
        )
        message: M | FactBatch
        try:
            if incoming.type == BATCH_TYPE and self._takes_batches:
                message = self._wanted(parse_message(FactBatch, incoming.body))
            else:
                message = parse_message(self.model, incoming.body)
        except MessageRejected as exc:
            await self._dead_letter(incoming, f"unparseable: {exc}")
            return
        if isinstance(message, FactBatch) and not message.facts:
            await self._settle(incoming, "handled")  # none of its facts is for this view
            return
        one = cast(M, message.facts[0] if isinstance(message, FactBatch) else message)
        key = self.ordering_key(one) if self.ordering_key else None
        if key is None:
            await self._handle(incoming, message, key)
            return
        first = self.priority is not None and self.priority(one)
        self._waiting.setdefault(key, deque()).append(_Waiting(incoming, message, first))
        if key not in self._running:
            self._make_ready(key, first)
        self._start_ready()

    def _make_ready(self, key: str, first: bool) -> None:
        if key in self._in_ready_first:
            return
        if first:
            if key in self._in_ready:  # a priority message joined its line: move it up
                self._ready.remove(key)
                self._in_ready.discard(key)
            self._ready_first.append(key)
            self._in_ready_first.add(key)
        elif key not in self._in_ready:
            self._ready.append(key)
            self._in_ready.add(key)

    def _start_ready(self) -> None:
        while not self._stopping and len(self._running) < self.concurrency:
            if self._ready_first:
                key = self._ready_first.popleft()
                self._in_ready_first.discard(key)
            elif self._ready:
                key = self._ready.popleft()
                self._in_ready.discard(key)
            else:
                return
            waiting = self._waiting[key].popleft()
            self._running.add(key)
            task = asyncio.create_task(self._run(key, waiting))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, key: str, waiting: _Waiting[M]) -> None:
        try:
            if key in self._requeueing:
                # An earlier message of this key went back to the queue: keep the order by
                # sending the later ones back behind it.
                await self._settle(waiting.incoming, "requeued", requeue=True)
            else:
                await self._handle(waiting.incoming, waiting.message, key)
        finally:
            self._running.discard(key)
            rest = self._waiting.get(key)
            if rest:
                self._make_ready(key, any(w.first for w in rest))
            else:
                self._waiting.pop(key, None)
                self._requeueing.discard(key)
            self._start_ready()

    @property
    def _takes_batches(self) -> bool:
        """Whether this consumer handles facts (and so receives them in batches too)."""
        if self.live_bindings is None:
            return issubclass(self.model, Fact)
        return self.batches and any(
            key.startswith("fact.") or key == "#" for key in self.live_bindings
        )

    def _wanted(self, batch: FactBatch) -> FactBatch:
        """``batch`` with only the facts this consumer's bindings take (all of them, for a
        durable queue: the broker routed the batch to it by its own binding)."""
        if self.live_bindings is None:
            return batch
        facts = [f for f in batch.facts if _bound(self.live_bindings, f"fact.{f.type}")]
        if len(facts) == len(batch.facts):
            return batch
        return batch.model_copy(update={"facts": facts})  # may be empty: nothing to handle

    async def _call(self, message: M | FactBatch) -> None:
        if not isinstance(message, FactBatch):
            await self.handler(message)
            return
        handler = cast(Handler[Fact], self.handler)
        results = await asyncio.gather(
            *(handler(fact) for fact in message.facts), return_exceptions=True
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            # a fact that can never be handled decides for the batch: it is dead-lettered whole
            raise next((f for f in failures if isinstance(f, Permanent)), failures[0])

    async def _handle(
        self, incoming: AbstractIncomingMessage, message: M | FactBatch, key: str | None
    ) -> None:
        structlog.contextvars.bind_contextvars(
            message_id=incoming.message_id, correlation_id=incoming.correlation_id
        )
        attempt = waits = 0
        while True:
            try:
                await self._call(message)
            except Permanent as exc:
                await self._dead_letter(incoming, str(exc) or type(exc).__name__)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.live_bindings is not None:
                    log.warning("live_handler_failed", queue=self.queue_name, error=repr(exc))
                    await self._settle(incoming, "dropped", requeue=False)
                    return
                if isinstance(exc, self.retry.unavailable) and not self._stopping:
                    if _channel_closed(incoming):
                        # The broker took it back when its channel went and delivers it again
                        # on the new one; holding this copy would hold its key's line too.
                        log.warning("handler_released", queue=self.queue_name)
                        return
                    waits += 1
                    if waits == 1 or waits % 20 == 0:
                        log.warning(
                            "handler_waiting_for_dependency",
                            queue=self.queue_name,
                            waits=waits,
                            error=type(exc).__name__,
                        )
                    cap = self.retry.unavailable_max_delay
                    await asyncio.sleep(self.retry.delay(waits, cap=cap))
                    continue
                attempt += 1
                if attempt < self.retry.attempts:
                    log.warning(
                        "handler_retry",
                        queue=self.queue_name,
                        attempt=attempt,
                        error=type(exc).__name__,
                    )
                    await asyncio.sleep(self.retry.delay(attempt))
                    continue
                log.warning(
                    "handler_requeue",
                    queue=self.queue_name,
                    attempts=attempt,
                    error=type(exc).__name__,
                    delivery_count=(incoming.headers or {}).get("x-delivery-count"),
                )
                if key is not None:
                    self._requeueing.add(key)
                await self._settle(incoming, "requeued", requeue=True)
                return
            await self._settle(incoming, "handled")
            return

    async def _dead_letter(self, incoming: AbstractIncomingMessage, reason: str) -> None:
        log.warning("dead_lettered", queue=self.queue_name, reason=reason[:300])
        if self.live_bindings is not None:
            await self._settle(incoming, "dropped")  # a live view has no dead-letter queue
            return
        try:
            await self.bus.dead_letter(self.queue_name, incoming, reason)
        except PublishFailed:
            # Not stored in the dead-letter queue yet: give it back, it will come again.
            await self._settle(incoming, "requeued", requeue=True)
            return
        await self._settle(incoming, "dead_lettered")
        fact = Fact(
            id=stable_id(BUS_DEAD_LETTERED, self.queue_name, incoming.message_id or new_id()),
            type=BUS_DEAD_LETTERED,
            service=self.bus.service,
            data={"queue": self.queue_name, "reason": reason[:300], "message_type": incoming.type},
        )
        with contextlib.suppress(PublishFailed):
            await self.bus.publish(fact)

    async def _settle(
        self, incoming: AbstractIncomingMessage, outcome: str, *, requeue: bool = False
    ) -> None:
        try:
            if outcome in ("handled", "dead_lettered"):
                await incoming.ack()
            else:
                await incoming.nack(requeue=requeue)
        except Exception as exc:
            # The channel went away: the broker redelivers the message; handlers are idempotent.
            log.warning("settle_failed", queue=self.queue_name, error=type(exc).__name__)
            return
        self.bus.metrics.consumed.labels(self.queue_name, outcome).inc()


BATCH_TYPE = FactBatch.model_fields["type"].default


@functools.lru_cache(maxsize=4096)
def topic_matches(pattern: str, routing_key: str) -> bool:
    """Whether ``routing_key`` matches the binding ``pattern`` as RabbitMQ's topic exchange
    decides it: words separated by dots, ``*`` exactly one word, ``#`` zero or more."""

    def match(p: tuple[str, ...], k: tuple[str, ...]) -> bool:
        if not p:
            return not k
        if p[0] == "#":
            return match(p[1:], k) or (bool(k) and match(p, k[1:]))
        return bool(k) and p[0] in ("*", k[0]) and match(p[1:], k[1:])

    return match(tuple(pattern.split(".")), tuple(routing_key.split(".")))


def _bound(bindings: Sequence[str], routing_key: str) -> bool:
    return any(topic_matches(pattern, routing_key) for pattern in bindings)


def _channel_closed(incoming: AbstractIncomingMessage) -> bool:
    """Whether the channel ``incoming`` came on is gone (its delivery can no longer be settled)."""
    try:
        return bool(incoming.channel.is_closed)
    except Exception:  # no channel object any more: gone too
        return True
