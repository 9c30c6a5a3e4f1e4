"""The bus when the broker misbehaves, checked with a ledger: lost = unexpected = duplicates = 0."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from pymongo.errors import DuplicateKeyError
from soudan_shared.bus import Bus, PublishFailed
from soudan_shared.contracts import Fact
from soudan_shared.store import Store
from soudan_shared.testing.ledger import Ledger
from soudan_shared.testing.plugin import BrokerControl, own_vhost_fixtures
from soudan_shared.testing.proxy import TcpProxy, free_port
from soudan_shared.testing.waiting import wait_until
from soudan_shared.topology import FACTS_QUEUE

broker, rabbitmq_url = own_vhost_fixtures()  # the cuts here reach only this module

pytestmark = [pytest.mark.fault, pytest.mark.integration]

MESSAGES = 1200


async def _publish_until_confirmed(bus: Bus, fact: Fact, ledger: Ledger, deadline: float) -> None:
    """What a producer does: keep offering the same message (same id) until it is confirmed."""
    loop = asyncio.get_running_loop()
    ledger.published.add(fact.id)
    while True:
        try:
            await bus.publish(fact, timeout=2.0)
        except PublishFailed:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.05)
            continue
        ledger.confirmed.add(fact.id)
        return


@pytest.mark.timeout(180)
async def test_publisher_and_consumer_recover_when_the_broker_closes_their_connections(
    make_bus: Callable[..., Bus], broker: BrokerControl, store: Store
) -> None:
    ledger = Ledger()
    effects = store.db["effects"]

    async def apply(fact: Fact) -> None:
        ledger.consumed[fact.id] += 1
        await asyncio.sleep(0.002)  # simulated work, so deliveries are in flight at the cut
        try:
            await effects.insert_one({"_id": fact.id, "n": fact.data["n"]})
        except DuplicateKeyError:
            # A redelivery: the effect is already stored. If no earlier delivery recorded it,
            # that one was cancelled by the cut after its write reached the store (a real
            # store client awaits the server): the store's unique _id made it the one effect.
            if fact.id not in ledger.applied:
                ledger.applied[fact.id] += 1
            return
        ledger.applied[fact.id] += 1

    consumer = make_bus("consumer")
    consumer.consume(FACTS_QUEUE, Fact, apply, prefetch=50)
    consumer.start()
    publisher = make_bus("publisher")
    publisher.start()
    await asyncio.gather(consumer.wait_started(10), publisher.wait_started(10))

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 120
    batch = 20
    cuts: list[asyncio.Future[None]] = []
    for start in range(0, MESSAGES, batch):
        if start in (200, 700):
            # rabbitmqctl takes a moment to start: the cut lands while later batches are in
            # flight and the consumer holds unacked deliveries.
            cuts.append(asyncio.ensure_future(asyncio.to_thread(broker.close_all_connections)))
        await asyncio.gather(
            *(
                _publish_until_confirmed(
                    publisher,
                    Fact(type="test.ledger", service="test", data={"n": n}),
                    ledger,
                    deadline,
                )
                for n in range(start, start + batch)
            )
        )
    await asyncio.gather(*cuts)

    await wait_until(
        lambda: not ledger.lost,
        timeout=60,
        message=f"every confirmed message applied ({ledger.summary()})",
    )
    print(ledger.summary())
    assert len(ledger.confirmed) == MESSAGES
    assert ledger.lost == set()
    assert ledger.unexpected == set()
    assert ledger.duplicate_effects == set()
    assert await effects.count_documents({}) == MESSAGES


@pytest.mark.timeout(60)
async def test_a_bus_started_before_the_broker_connects_when_the_broker_comes_up(
    make_bus: Callable[..., Bus], broker: BrokerControl
) -> None:
    proxy = TcpProxy(broker.host, broker.port, listen_port=free_port())
    received: list[Fact] = []

    async def handle(fact: Fact) -> None:
        received.append(fact)

    bus = make_bus("early", url=broker.url_via(proxy.port))
    bus.consume(FACTS_QUEUE, Fact, handle)
    bus.start()  # its first attempts meet a closed port
    assert not bus.is_ready
    with pytest.raises(PublishFailed):
        await bus.publish(Fact(type="test.early", service="test"))
    await proxy.start()
    try:
        await bus.wait_started(15)
        fact = Fact(type="test.late", service="test")
        await bus.publish(fact)
        await wait_until(lambda: received == [fact], message="consumed after the broker came up")
    finally:
        await bus.close()
        await proxy.stop()


@pytest.mark.timeout(60)
async def test_a_bus_given_two_addresses_moves_to_the_other_when_its_broker_goes_away(
    make_bus: Callable[..., Bus], broker: BrokerControl
) -> None:
    # Two "nodes": two proxies in front of the one broker; the first stops, as a node dies.
    first, second = (TcpProxy(broker.host, broker.port) for _ in range(2))
    received: list[Fact] = []

    async def handle(fact: Fact) -> None:
        received.append(fact)

    await first.start()
    await second.start()
    try:
        urls = ",".join(broker.url_via(proxy.port) for proxy in (first, second))
        bus = make_bus("failover", url=urls)
        bus.consume(FACTS_QUEUE, Fact, handle)
        bus.start()
        await bus.wait_started(15)
        before = Fact(type="test.before", service="test")
        await bus.publish(before)
        await wait_until(lambda: received == [before], message="consumed through the first")

        await first.stop()  # connections cut, nothing listening there any more
        after = Fact(type="test.after", service="test")
        deadline = asyncio.get_running_loop().time() + 20
        await _publish_until_confirmed(bus, after, Ledger(), deadline)  # as a producer does
        await wait_until(
            lambda: received[-1:] == [after],
            timeout=30,  # the consumer is back once its channel is restored on the second
            message=f"consumed through the second (received {[f.type for f in received]})",
        )
        # ``before`` may come twice: its ack can be cut with the connection (at least once).
        assert {f.id for f in received} == {before.id, after.id}
        assert [f.id for f in received].count(after.id) == 1
    finally:
        await first.stop()
        await second.stop()


async def test_a_bus_whose_first_address_never_answers_connects_to_the_next(
    make_bus: Callable[..., Bus], broker: BrokerControl
) -> None:
    dead = broker.url_via(free_port())  # nothing listens there
    bus = make_bus("second-choice", url=f"{dead}, {broker.url}")
    bus.start()
    await bus.wait_started(15)
    await bus.publish(Fact(type="test.second", service="test"))
