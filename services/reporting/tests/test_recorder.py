"""The recorder: every fact stored once in ``events``, with its Tokyo calendar fields."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from pymongo.errors import ConnectionFailure
from soudan_reporting.app import create_app
from soudan_reporting.recorder import EVENTS, FactRecorder, event_document, record_fact
from soudan_reporting.settings import ReportingSettings
from soudan_shared.bus import Bus
from soudan_shared.contracts import Fact
from soudan_shared.facts import Facts
from soudan_shared.runtime import start_site
from soudan_shared.store import Store
from soudan_shared.testing.plugin import BrokerControl
from soudan_shared.testing.proxy import TcpProxy, free_port
from soudan_shared.testing.waiting import wait_until


@pytest.mark.unit
def test_a_fact_is_filed_under_its_tokyo_month_day_weekday_and_hour() -> None:
    # 15:30 UTC on Saturday 31 October is 00:30 JST on Sunday 1 November.
    fact = Fact(type="case.opened", service="triage", at=datetime(2026, 10, 31, 15, 30, tzinfo=UTC))
    doc = event_document(fact)
    assert doc["_id"] == fact.id
    assert doc["jst"] == {"month": "2026-11", "day": "2026-11-01", "weekday": 7, "hour": 0}
    assert doc["at"] == fact.at


@contextlib.asynccontextmanager
async def _running(settings: ReportingSettings) -> AsyncIterator[str]:
    port = free_port()
    runner = await start_site(create_app(settings), port, "127.0.0.1")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def reporting(service_env: dict[str, str]) -> AsyncIterator[str]:
    async with _running(ReportingSettings()) as url:
        yield url


async def _ready(base: str) -> bool:
    async with aiohttp.ClientSession() as http, http.get(f"{base}/readyz") as response:
        return response.status == 200


@pytest.mark.integration
async def test_a_fact_delivered_twice_is_recorded_once(
    reporting: str, make_bus: Callable[..., Bus], store: Store
) -> None:
    await wait_until(lambda: _ready(reporting), message="reporting ready")
    publisher = make_bus("triage")
    publisher.start()
    await publisher.wait_started(10)
    fact = Fact(type="case.opened", service="triage", data={"case_id": "c1"})
    other = Fact(type="case.closed", service="console", data={"case_id": "c1"})
    await publisher.publish(fact)
    await publisher.publish(fact)  # a redelivery: same id
    await publisher.publish(other)
    events = store.db[EVENTS]
    await wait_until(
        lambda: events.find_one({"_id": other.id}), message="the fact after the duplicate"
    )
    recorded = await events.find({}).sort("at", 1).to_list()
    starts = [e for e in recorded if e["type"] == "service.started"]
    assert [e["_id"] for e in recorded if e not in starts] == [fact.id, other.id]
    assert recorded[len(starts)]["data"] == {"case_id": "c1"}
    assert await events.count_documents({"_id": fact.id}) == 1


@pytest.mark.integration
@pytest.mark.fault
async def test_reporting_started_before_the_broker_becomes_ready_when_it_comes_up(
    service_env: dict[str, str], broker: BrokerControl, store: Store, make_bus: Callable[..., Bus]
) -> None:
    proxy = TcpProxy(broker.host, broker.port)
    settings = ReportingSettings(rabbitmq_url=broker.url_via(proxy.port))
    async with _running(settings) as base:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/healthz") as response:
                assert response.status == 200
            async with http.get(f"{base}/readyz") as response:
                assert response.status == 503
                assert (await response.json())["failing"] == ["broker"]
        await proxy.start()
        try:
            await wait_until(
                lambda: _ready(base), timeout=20, message="ready once the broker is up"
            )
            publisher = make_bus("triage")
            publisher.start()
            await publisher.wait_started(10)
            fact = Fact(type="line.followed", service="triage")
            await publisher.publish(fact)
            await wait_until(
                lambda: store.db[EVENTS].find_one({"_id": fact.id}), message="fact recorded"
            )
        finally:
            await proxy.stop()


@pytest.mark.integration
async def test_a_fact_republished_for_the_same_cause_is_recorded_once(
    reporting: str, make_bus: Callable[..., Bus], store: Store
) -> None:
    """A handler that runs twice (redelivery) publishes its fact twice with the same id."""
    await wait_until(lambda: _ready(reporting), message="reporting ready")
    publisher = make_bus("triage")
    publisher.start()
    await publisher.wait_started(10)
    facts = Facts(publisher, "triage")
    first = await facts.publish("message.received", {"case_id": "c1"}, cause="line-msg-1")
    again = await facts.publish("message.received", {"case_id": "c1"}, cause="line-msg-1")
    other = await facts.publish("message.received", {"case_id": "c1"}, cause="line-msg-2")
    assert first.id == again.id != other.id
    events = store.db[EVENTS]
    await wait_until(lambda: events.find_one({"_id": other.id}), message="last fact recorded")
    assert await events.count_documents({"type": "message.received"}) == 2


class _CountingEvents:
    """The ``events`` collection, counting the writes sent to the store and failing the first
    ``fail`` of them as a store that went away would."""

    def __init__(self, events: Any, *, fail: int = 0) -> None:
        self.events = events
        self.writes = 0
        self.fail = fail

    async def insert_many(self, documents: list[dict[str, Any]], **kw: Any) -> Any:
        self.writes += 1
        if self.fail:
            self.fail -= 1
            raise ConnectionFailure("store gone")
        return await self.events.insert_many(documents, **kw)

    async def insert_one(self, document: dict[str, Any], **kw: Any) -> Any:
        self.writes += 1
        return await self.events.insert_one(document, **kw)


@pytest.mark.integration
async def test_facts_that_arrive_together_are_written_in_one_round_trip_and_each_kept_once(
    store: Store,
) -> None:
    events = _CountingEvents(store.db[EVENTS])
    recorder = FactRecorder(events)
    earlier = Fact(type="case.opened", service="triage", data={"case_id": "c0"})
    assert await record_fact(store.db[EVENTS], earlier)
    burst = [Fact(type="message.received", service="triage", data={"n": n}) for n in range(8)]
    # a redelivery of one of them in the same burst, and one of a fact recorded long ago
    delivered = [*burst, burst[3], earlier]
    outcomes = await asyncio.gather(*(recorder.record(fact) for fact in delivered))
    assert outcomes == [True] * 8 + [False, False]
    assert events.writes == 1
    stored = await store.db[EVENTS].find({"type": "message.received"}).to_list()
    assert sorted(doc["data"]["n"] for doc in stored) == list(range(8))
    assert await store.db[EVENTS].count_documents({}) == 9


@pytest.mark.integration
async def test_facts_the_store_did_not_take_fail_their_handlers_and_are_kept_once_when_retried(
    store: Store,
) -> None:
    events = _CountingEvents(store.db[EVENTS], fail=1)
    recorder = FactRecorder(events)
    burst = [Fact(type="reply.sent", service="dispatch", data={"n": n}) for n in range(5)]
    outcomes = await asyncio.gather(
        *(recorder.record(fact) for fact in burst), return_exceptions=True
    )
    assert all(isinstance(outcome, ConnectionFailure) for outcome in outcomes)
    assert await store.db[EVENTS].count_documents({}) == 0
    # the bus delivers them again: now stored, each once
    again = await asyncio.gather(*(recorder.record(fact) for fact in burst))
    assert again == [True] * 5
    assert await store.db[EVENTS].count_documents({}) == 5
    # and one more redelivery of them all is recognised as already recorded
    assert await asyncio.gather(*(recorder.record(fact) for fact in burst)) == [False] * 5
    assert await store.db[EVENTS].count_documents({}) == 5
