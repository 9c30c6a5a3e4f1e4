"""The bus against the real RabbitMQ: confirms, dead-letters, redelivery, order."""

from __future__ import annotations

import asyncio
import gc
import random
import warnings
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aio_pika
import pytest
from pymongo.errors import ServerSelectionTimeoutError
from soudan_shared.bus import (
    REASON_HEADER,
    Bus,
    Permanent,
    PublishFailed,
    RetryPolicy,
    Transient,
    topic_matches,
)
from soudan_shared.contracts import Fact, FactBatch, LineEventReceived
from soudan_shared.fact_types import BUS_DEAD_LETTERED
from soudan_shared.facts import Facts
from soudan_shared.testing.waiting import wait_until
from soudan_shared.topology import FACTS_QUEUE, Topology, line_event_queue

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def _fact(n: int = 0) -> Fact:
    return Fact(type="test.happened", service="test", data={"n": n})


def _event(user: str, seq: int) -> LineEventReceived:
    return LineEventReceived(
        destination="Udest",
        webhook_event_id=f"{user}-{seq}",
        user_id=user,
        event_type="message",
        timestamp_ms=1_700_000_000_000 + seq,
        received_at=datetime.now(UTC),
        event={"type": "message", "source": {"type": "user", "userId": user}},
    )


async def _dead_letters(
    channel: aio_pika.abc.AbstractChannel, topology: Topology, queue: str
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    dlq = await channel.get_queue(topology.dead_letter_queue(queue), ensure=False)
    found = []
    while (message := await dlq.get(fail=False, no_ack=True)) is not None:
        found.append(message)
    return found


async def test_a_published_message_is_confirmed_and_consumed(
    make_bus: Callable[..., Bus],
) -> None:
    received: list[Fact] = []
    bus = make_bus()

    async def handle(fact: Fact) -> None:
        received.append(fact)

    bus.consume(FACTS_QUEUE, Fact, handle)
    bus.start()
    await bus.wait_started(10)
    sent = _fact(1)
    await bus.publish(sent)
    await wait_until(lambda: received, message="fact consumed")
    assert received == [sent]
    assert bus.metrics.published.labels("fact")._value.get() == 1


async def test_an_unroutable_message_raises_instead_of_vanishing(
    make_bus: Callable[..., Bus], raw_channel: aio_pika.abc.AbstractChannel, topology: Topology
) -> None:
    bus = make_bus()
    bus.start()
    await bus.wait_started(10)
    queue = await raw_channel.get_queue(topology.queue(FACTS_QUEUE), ensure=False)
    await queue.unbind(topology.exchange, "fact.#")
    with pytest.raises(PublishFailed, match="unroutable"):
        await bus.publish(_fact())


async def test_publishing_without_a_broker_fails_fast(make_bus: Callable[..., Bus]) -> None:
    bus = make_bus()  # never started
    with pytest.raises(PublishFailed, match="not connected"):
        await bus.publish(_fact())


async def test_a_publish_cut_by_a_connection_reset_fails_as_a_publish_and_not_as_a_cancel(
    make_bus: Callable[..., Bus], monkeypatch: pytest.MonkeyPatch
) -> None:
    # aiormq surfaces a reset connection to a publish waiting on it as its reader task's
    # CancelledError (seen when a service stopped while a cluster node restarted): a caller that
    # treats a failed publish as one (a stopping service, a handler) must get PublishFailed.
    bus = make_bus()
    bus.start()
    await bus.wait_started(10)

    async def reset(*args: object, **kwargs: object) -> None:
        raise asyncio.CancelledError

    exchange = bus._exchange
    assert exchange is not None
    monkeypatch.setattr(exchange, "publish", reset)
    with pytest.raises(PublishFailed, match="connection was lost"):
        await bus.publish(_fact())

    async def cancelled_while_publishing() -> None:
        await bus.publish(_fact())

    monkeypatch.setattr(exchange, "publish", lambda *a, **k: asyncio.sleep(10))
    task = asyncio.create_task(cancelled_while_publishing())
    await asyncio.sleep(0.05)  # waiting for its confirm
    task.cancel()  # a real cancel still cancels
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_message_that_does_not_parse_is_dead_lettered_and_the_rest_flow(
    make_bus: Callable[..., Bus], raw_channel: aio_pika.abc.AbstractChannel, topology: Topology
) -> None:
    received: list[int] = []
    reported: list[Fact] = []
    bus = make_bus()

    async def handle(fact: Fact) -> None:
        if fact.type == BUS_DEAD_LETTERED:
            reported.append(fact)
            return
        received.append(fact.data["n"])

    bus.consume(FACTS_QUEUE, Fact, handle)
    bus.start()
    await bus.wait_started(10)
    await bus.publish(_fact(1))
    exchange = await raw_channel.get_exchange(topology.exchange, ensure=False)
    await exchange.publish(aio_pika.Message(b"{not json"), routing_key="fact.test.poison")
    await bus.publish(_fact(2))
    await wait_until(lambda: received == [1, 2], message="both good facts consumed")
    dead = await wait_until(
        lambda: _dead_letters(raw_channel, topology, FACTS_QUEUE), message="dead letter"
    )
    assert [m.body for m in dead] == [b"{not json"]
    assert str(dead[0].headers[REASON_HEADER]).startswith("unparseable: body is not JSON")
    (fact,) = await wait_until(lambda: reported, message="dead-letter reported as a fact")
    assert fact.data["queue"] == topology.queue(FACTS_QUEUE)
    assert fact.data["reason"].startswith("unparseable")


async def test_a_permanent_failure_is_dead_lettered_with_the_handlers_reason(
    make_bus: Callable[..., Bus], raw_channel: aio_pika.abc.AbstractChannel, topology: Topology
) -> None:
    bus = make_bus()
    handled: list[int] = []

    async def handle(fact: Fact) -> None:
        if fact.type == BUS_DEAD_LETTERED:
            return
        if fact.data["n"] == 13:
            raise Permanent("case 13 does not exist")
        handled.append(fact.data["n"])

    bus.consume(FACTS_QUEUE, Fact, handle)
    bus.start()
    await bus.wait_started(10)
    for n in (12, 13, 14):
        await bus.publish(_fact(n))
    dead = await wait_until(
        lambda: _dead_letters(raw_channel, topology, FACTS_QUEUE), message="dead letter"
    )
    assert dead[0].headers[REASON_HEADER] == "case 13 does not exist"
    await wait_until(lambda: sorted(handled) == [12, 14], message="others handled")


@pytest.mark.parametrize("in_process_attempts", [3, 1], ids=["retried-in-process", "requeued"])
async def test_a_transient_failure_is_retried_and_its_effect_applied_once(
    make_bus: Callable[..., Bus], in_process_attempts: int
) -> None:
    attempts: dict[str, int] = defaultdict(int)
    effects: dict[str, int] = defaultdict(int)
    bus = make_bus()

    async def handle(fact: Fact) -> None:
        attempts[fact.id] += 1
        if attempts[fact.id] < 3:
            raise Transient("store not reachable yet")
        effects[fact.id] += 1

    bus.consume(
        FACTS_QUEUE, Fact, handle, retry=RetryPolicy(attempts=in_process_attempts, first_delay=0.01)
    )
    bus.start()
    await bus.wait_started(10)
    fact = _fact()
    await bus.publish(fact)
    await wait_until(lambda: effects[fact.id] == 1, message="effect applied")
    assert attempts[fact.id] == 3
    assert dict(effects) == {fact.id: 1}


async def test_a_message_that_always_fails_ends_in_the_dead_letter_queue_after_the_limit(
    make_bus: Callable[..., Bus], raw_channel: aio_pika.abc.AbstractChannel, topology: Topology
) -> None:
    bus = make_bus()
    handled: list[int] = []

    async def handle(fact: Fact) -> None:
        if fact.type == BUS_DEAD_LETTERED:
            return
        if fact.data["n"] == 0:
            raise RuntimeError("a bug")
        handled.append(fact.data["n"])

    bus.consume(FACTS_QUEUE, Fact, handle, retry=RetryPolicy(attempts=1))
    bus.start()
    await bus.wait_started(10)
    await bus.publish(_fact(0))
    await bus.publish(_fact(1))
    dead = await wait_until(
        lambda: _dead_letters(raw_channel, topology, FACTS_QUEUE),
        timeout=30,
        message="broker dead-lettered after the delivery limit",
    )
    assert len(dead) == 1
    death: Any = dead[0].headers["x-death"][0]
    assert death["reason"] == "delivery_limit"
    assert handled == [1]


async def test_a_database_outage_longer_than_the_delivery_limit_waits_instead_of_dead_lettering(
    make_bus: Callable[..., Bus], raw_channel: aio_pika.abc.AbstractChannel, topology: Topology
) -> None:
    bus = make_bus()
    down_for = 3 * topology.delivery_limit  # more failures than requeues would ever allow
    attempts: dict[str, int] = defaultdict(int)
    effects: dict[str, int] = defaultdict(int)

    async def handle(fact: Fact) -> None:
        attempts[fact.id] += 1
        if attempts[fact.id] <= down_for:
            raise ServerSelectionTimeoutError("127.0.0.1:27017: connection refused")
        effects[fact.id] += 1

    policy = RetryPolicy(attempts=1, first_delay=0.001, unavailable_max_delay=0.01)
    bus.consume(FACTS_QUEUE, Fact, handle, retry=policy)
    bus.start()
    await bus.wait_started(10)
    fact = _fact()
    await bus.publish(fact)

    await wait_until(lambda: effects[fact.id] == 1, timeout=30, message="handled once it is back")
    assert attempts[fact.id] == down_for + 1
    assert await _dead_letters(raw_channel, topology, FACTS_QUEUE) == []


async def test_one_users_events_are_handled_in_the_order_they_were_published(
    make_bus: Callable[..., Bus], topology: Topology
) -> None:
    seen: dict[str, list[int]] = defaultdict(list)
    failed_once: set[str] = set()
    bus = make_bus()

    async def handle(event: LineEventReceived) -> None:
        # Random pauses and one transient failure per user would reorder a naive consumer.
        await asyncio.sleep(random.uniform(0, 0.005))
        user = event.user_id or ""
        seq = int(event.webhook_event_id.rsplit("-", 1)[1])
        if seq == 5 and user not in failed_once:
            failed_once.add(user)
            raise Transient("once")
        seen[user].append(seq)

    for shard in range(topology.line_event_shards):
        bus.consume(
            line_event_queue(shard),
            LineEventReceived,
            handle,
            prefetch=50,
            ordering_key=lambda e: e.user_id,
            retry=RetryPolicy(attempts=2, first_delay=0.01),
        )
    bus.start()
    await bus.wait_started(10)
    users = [f"U{n:032x}" for n in range(6)]
    await asyncio.gather(*(bus.publish(_event(user, seq)) for seq in range(40) for user in users))
    await wait_until(lambda: sum(map(len, seen.values())) == 240, message="all events handled")
    for user in users:
        assert seen[user] == list(range(40)), user


async def test_a_priority_message_jumps_a_backlog_but_never_its_own_users_earlier_events(
    make_bus: Callable[..., Bus], topology: Topology
) -> None:
    """One handler at a time on a shard holding a backlog: the urgent users' events go first,
    each user's own events still in order (an urgent user's earlier event goes with it)."""
    users = [u for u in (f"U{n:032x}" for n in range(200)) if topology.shard(u) == 0][:8]
    calm, urgent = users[:6], users[6:]
    handled: list[tuple[str, int]] = []
    gate = asyncio.Event()
    bus = make_bus()

    async def handle(event: LineEventReceived) -> None:
        await gate.wait()
        handled.append((event.user_id or "", int(event.webhook_event_id.rsplit("-", 1)[1])))

    bus.consume(
        line_event_queue(0),
        LineEventReceived,
        handle,
        prefetch=100,
        concurrency=1,
        ordering_key=lambda e: e.user_id,
        priority=lambda e: e.user_id in urgent and e.timestamp_ms % 10 == 1,
    )
    bus.start()
    await bus.wait_started(10)
    # In this order: every user's event 0, then event 1 (the urgent users' 1 is the urgent one).
    for seq in (0, 1):
        for user in users:
            await bus.publish(_event(user, seq))
    await wait_until(
        lambda: sum(len(w) for w in bus._consumers[0]._waiting.values()) == 15,
        message="the backlog delivered to the consumer",
    )
    gate.set()
    await wait_until(lambda: len(handled) == 16, message="every event handled")
    # calm[0]'s first event was already running; then the urgent users, each in its own order.
    assert handled[0] == (calm[0], 0)
    assert handled[1:5] == [(urgent[0], 0), (urgent[1], 0), (urgent[0], 1), (urgent[1], 1)]
    for user in users:
        assert [seq for u, seq in handled if u == user] == [0, 1], user
    assert {u for u, _ in handled[5:]} == set(calm)


async def test_a_live_subscription_sees_matching_messages_while_it_runs(
    make_bus: Callable[..., Bus], raw_channel: aio_pika.abc.AbstractChannel, topology: Topology
) -> None:
    seen: list[str] = []
    recorded: list[str] = []
    live = make_bus("console")

    async def on_live(fact: Fact) -> None:
        seen.append(fact.type)

    async def record(fact: Fact) -> None:
        if fact.type != BUS_DEAD_LETTERED:
            recorded.append(fact.type)

    live.subscribe(("fact.case.#",), Fact, on_live)
    live.consume(FACTS_QUEUE, Fact, record)
    live.start()
    await live.wait_started(10)
    exchange = await raw_channel.get_exchange(topology.exchange, ensure=False)
    await exchange.publish(aio_pika.Message(b"garbage"), routing_key="fact.case.bad")
    for kind in ("case.opened", "reply.sent", "case.flagged_urgent"):
        await live.publish(Fact(type=kind, service="test"))
    await wait_until(lambda: len(recorded) == 3, message="durable consumer saw all three")
    await wait_until(lambda: len(seen) == 2, message="live view saw the case facts")
    assert seen == ["case.opened", "case.flagged_urgent"]


async def test_a_handler_can_publish_while_the_consumer_works_through_a_start_up_backlog(
    make_bus: Callable[..., Bus],
) -> None:
    """Messages already waiting when a service starts are delivered at once; handlers that
    publish (a fact, a command) must not find the bus "not connected" at that moment."""
    producer = make_bus("producer")
    producer.start()
    await producer.wait_started(10)
    for n in range(20):
        await producer.publish(_fact(n))
    forwarded: list[int] = []
    worker = make_bus("worker")

    async def forward(fact: Fact) -> None:
        if fact.type == "test.happened":
            await worker.publish(Fact(type="test.forwarded", service="worker", data=fact.data))
        elif fact.type == "test.forwarded":
            forwarded.append(fact.data["n"])

    async def idle(event: LineEventReceived) -> None:
        return None

    worker.consume(FACTS_QUEUE, Fact, forward, retry=RetryPolicy(attempts=1))
    # More consumers start after the first one, as in triage: deliveries to the first arrive
    # while the others are still being set up.
    for shard in range(worker.topology.line_event_shards):
        worker.consume(line_event_queue(shard), LineEventReceived, idle)
    worker.start()
    await wait_until(lambda: len(forwarded) == 20, message="every backlog message forwarded")
    assert sorted(forwarded) == list(range(20))
    queue = worker.topology.queue(FACTS_QUEUE)
    assert worker.metrics.consumed.labels(queue, "requeued")._value.get() == 0
    assert worker.metrics.publish_failures.labels("not_connected")._value.get() == 0


async def test_a_bus_closed_while_still_connecting_leaves_no_half_open_connection(
    make_bus: Callable[..., Bus],
) -> None:
    """A service stopped during its first seconds: nothing is left for the garbage collector to
    close too late (no "coroutine ... was never awaited" warnings)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(30):
            bus = make_bus()
            bus.start()
            await asyncio.sleep(step * 0.0005)
            await bus.close()
        # One collection for all 30 (each one costs the whole heap's walk, seconds late in a
        # full run): a connection left half-open by any of them warns here.
        await asyncio.sleep(0.1)
        gc.collect()
    leaks = [str(w.message) for w in caught if "never awaited" in str(w.message)]
    assert leaks == []


async def test_a_bus_whose_set_up_fails_tries_again_until_it_is_ready(
    make_bus: Callable[..., Bus], raw_channel: aio_pika.abc.AbstractChannel, topology: Topology
) -> None:
    """The broker refuses a declaration (here: a queue left with other arguments): the service
    stays not ready and keeps trying, instead of staying connected and never ready."""
    name = topology.queue(FACTS_QUEUE)
    await raw_channel.declare_queue(name, durable=False, arguments={"x-queue-type": "classic"})
    bus = make_bus()
    bus.start()
    with pytest.raises(TimeoutError):
        await bus.wait_started(1.5)
    assert not bus.is_ready

    await raw_channel.queue_delete(name)  # the operator removes the stray queue
    await bus.wait_started(15)
    assert bus.is_ready
    await bus.publish(_fact(7))  # and it works


# -- the facts of one event in one message (FactBatch) ------------------------------------------


def _facts_of_one_event(service: str = "triage") -> list[Fact]:
    kinds = ("case.opened", "message.received", "auto_reply.decided")
    return [Fact(type=kind, service=service, data={"n": n}) for n, kind in enumerate(kinds)]


async def test_the_facts_of_one_event_go_in_one_message_and_arrive_one_by_one(
    make_bus: Callable[..., Bus],
) -> None:
    recorded: list[Fact] = []
    live: list[str] = []
    triage = make_bus("triage")
    triage.start()
    await triage.wait_started(10)
    watcher = make_bus("console")

    async def record(fact: Fact) -> None:
        recorded.append(fact)

    async def show(fact: Fact) -> None:
        live.append(fact.type)

    watcher.consume(FACTS_QUEUE, Fact, record)
    watcher.subscribe(("fact.case.#", "fact.message.#"), Fact, show)
    watcher.start()
    await watcher.wait_started(10)

    facts = _facts_of_one_event()
    await Facts(triage, "triage").publish_together(facts)

    await wait_until(lambda: len(recorded) == 3, message="the recorder got every fact")
    assert sorted(recorded, key=lambda f: f.data["n"]) == facts  # each whole, ids kept
    await wait_until(lambda: len(live) == 2, message="the live view got the facts it binds")
    assert sorted(live) == ["case.opened", "message.received"]
    assert triage.metrics.published.labels("facts")._value.get() == 1  # one publish, one confirm
    assert triage.metrics.published.labels("fact")._value.get() == 0


async def test_a_batch_with_a_failing_fact_is_handled_again_whole_and_each_effect_is_kept_once(
    make_bus: Callable[..., Bus],
) -> None:
    attempts: dict[str, int] = defaultdict(int)
    effects: dict[str, int] = defaultdict(int)
    bus = make_bus()

    async def handle(fact: Fact) -> None:  # idempotent, as every fact handler is
        attempts[fact.id] += 1
        if fact.type == "message.received" and attempts[fact.id] < 3:
            raise Transient("store not reachable yet")
        effects[fact.id] = 1

    bus.consume(FACTS_QUEUE, Fact, handle, retry=RetryPolicy(attempts=1, first_delay=0.01))
    bus.start()
    await bus.wait_started(10)
    facts = _facts_of_one_event()
    await Facts(bus, "triage").publish_together(facts)
    await wait_until(lambda: len(effects) == 3, message="every effect")
    assert {f.id: attempts[f.id] for f in facts} == {
        facts[0].id: 3,  # redelivered with the batch, and applied once
        facts[1].id: 3,
        facts[2].id: 3,
    }


async def test_a_batch_with_a_fact_that_can_never_be_handled_is_dead_lettered_whole(
    make_bus: Callable[..., Bus], raw_channel: aio_pika.abc.AbstractChannel, topology: Topology
) -> None:
    bus = make_bus()

    async def handle(fact: Fact) -> None:
        if fact.type == "message.received":
            raise Permanent("case does not exist")

    bus.consume(FACTS_QUEUE, Fact, handle)
    bus.start()
    await bus.wait_started(10)
    await Facts(bus, "triage").publish_together(_facts_of_one_event())
    dead = await wait_until(
        lambda: _dead_letters(raw_channel, topology, FACTS_QUEUE), message="dead letter"
    )
    assert dead[0].headers[REASON_HEADER] == "case does not exist"
    kept = FactBatch.model_validate_json(dead[0].body)
    assert [f.type for f in kept.facts] == ["case.opened", "message.received", "auto_reply.decided"]


def test_bindings_match_fact_types_as_the_brokers_topic_exchange_does() -> None:
    assert topic_matches("fact.case.#", "fact.case.opened")
    assert topic_matches("fact.case.#", "fact.case")
    assert topic_matches("fact.#", "fact.security.login_failed")
    assert topic_matches("fact.*.opened", "fact.case.opened")
    assert topic_matches("#", "fact.case.opened")
    assert topic_matches("fact.security.password_changed", "fact.security.password_changed")
    assert not topic_matches("fact.case.#", "fact.cases.opened")
    assert not topic_matches("fact.*", "fact.case.opened")
    assert not topic_matches("fact.security.password_changed", "fact.security.password")


def test_a_batch_holds_one_services_facts_and_its_id_follows_from_theirs() -> None:
    facts = _facts_of_one_event()
    assert FactBatch.of(facts).id == FactBatch.of(list(facts)).id
    assert FactBatch.of(facts).id != FactBatch.of(facts[:2]).id
    with pytest.raises(ValueError, match="one service"):
        FactBatch.of([*facts, Fact(type="reply.sent", service="dispatch")])


@pytest.mark.parametrize(
    ("bindings", "batches", "alone"),
    [
        (("fact.staff.#",), True, "staff.disabled"),  # bound to none of the batch's facts
        (("fact.case.#",), False, "case.closed"),  # bound to some, but declines batches
    ],
    ids=["bound-to-none-of-them", "declines-batches"],
)
async def test_a_live_view_gets_no_fact_of_a_batch_it_does_not_take(
    make_bus: Callable[..., Bus], bindings: tuple[str, ...], batches: bool, alone: str
) -> None:
    seen: list[str] = []
    watcher = make_bus("console")

    async def show(fact: Fact) -> None:
        seen.append(fact.type)

    watcher.subscribe(bindings, Fact, show, batches=batches)
    watcher.start()
    await watcher.wait_started(10)
    publisher = make_bus("triage")
    publisher.start()
    await publisher.wait_started(10)
    await Facts(publisher, "triage").publish_together(_facts_of_one_event())
    await publisher.publish(Fact(type=alone, service="triage"))
    # One publisher, one queue: the fact published alone comes after the batch, whose facts
    # (were it delivered) are filtered before anything later is handled.
    await wait_until(lambda: seen, message="the fact published alone")
    assert seen == [alone]
