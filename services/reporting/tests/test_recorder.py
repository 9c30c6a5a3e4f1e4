"""The recorder: every fact stored once in ``events``, with its Tokyo calendar fields."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import aiohttp
import pytest
from soudan_reporting.app import create_app
from soudan_reporting.recorder import EVENTS, event_document
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
