"""A crash anywhere between deciding and acknowledging is harmless: the redelivered event
replays the stored plan, so every effect happens once and the same commands go out."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from soudan_shared import fact_types as F
from soudan_shared.bus import PublishFailed
from soudan_shared.config_store import ConfigSource
from soudan_shared.contracts import Fact, LineEventReceived, Message, SendText, unbatched
from soudan_shared.facts import Facts
from soudan_shared.records import CASES, INDEXES, MESSAGES
from soudan_shared.store import Store
from soudan_shared.testing.ledger import Ledger
from soudan_shared.testing.plugin import BrokerControl, own_vhost_fixtures
from soudan_shared.testing.waiting import wait_until
from soudan_triage.plan import Plan
from soudan_triage.service import Triage
from soudan_triage.store import EVENTS, TriageStore
from soudan_triage.store import INDEXES as TRIAGE_INDEXES
from soudan_triage.testing import IN_HOURS, NIGHT, Downstream, Line, StartTriage

broker, rabbitmq_url = own_vhost_fixtures()  # the cuts here reach only this module

pytestmark = [pytest.mark.integration, pytest.mark.fault, pytest.mark.timeout(90)]


class FlakyPublisher:
    """Publishes into a list (a batch's facts as its consumers see them: one by one); fails
    the ``fail_on``-th publish (1-based) once."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.fail_on = fail_on
        self.calls = 0
        self.published: list[Message] = []

    async def publish(self, message: Message, *, timeout: float | None = None) -> None:
        self.calls += 1
        if self.calls == self.fail_on:
            raise PublishFailed("broker went away")
        self.published.extend(unbatched([message]))


class CrashingStore(TriageStore):
    """Dies once right after storing the plan, before applying any of it."""

    def __init__(self, db: Any) -> None:
        super().__init__(db)
        self.crash = True

    async def apply(self, plan: Plan, *, guard_case: bool = True) -> bool:
        if self.crash:
            self.crash = False
            raise ConnectionError("process killed")
        return await super().apply(plan, guard_case=guard_case)


@pytest.fixture
async def db(store: Store) -> Any:
    await store.ensure_indexes((*INDEXES, *TRIAGE_INDEXES))
    return store.db


def triage(
    db: Any,
    config_dir: Path,
    publisher: Any,
    *,
    store: TriageStore | None = None,
    clock: datetime = IN_HOURS,
) -> Triage:
    return Triage(
        store or TriageStore(db),
        ConfigSource(config_dir, db),
        Facts(publisher, "triage"),
        publisher,
        clock=lambda: clock,
    )


async def test_a_crash_after_the_effects_before_the_ack_replays_the_same_commands(
    db: Any, config_dir: Path, line: Line
) -> None:
    user = line.user()
    event = line.text(user, "しにたい", NIGHT)
    flaky = FlakyPublisher(fail_on=1)  # the SendText: the store is already changed

    with pytest.raises(PublishFailed):
        await triage(db, config_dir, flaky).handle(event)
    retry = FlakyPublisher()
    await triage(db, config_dir, retry, clock=NIGHT + timedelta(hours=1)).handle(event)
    again = FlakyPublisher()
    await triage(db, config_dir, again).handle(event)  # a third delivery: already done

    assert await db[CASES].count_documents({"user_id": user}) == 1
    assert await db[MESSAGES].count_documents({"user_id": user}) == 1
    commands = [m for m in retry.published if isinstance(m, SendText)]
    assert [c.purpose for c in commands] == ["urgent_out_of_hours"]
    facts = [m for m in retry.published if isinstance(m, Fact)]
    assert Counter(f.type for f in facts) == {
        F.CASE_OPENED: 1,
        F.CASE_FLAGGED_URGENT: 1,
        F.MESSAGE_RECEIVED: 1,
        F.AUTO_REPLY_DECIDED: 1,
    }
    assert again.published == []
    assert (await db[EVENTS].find_one({"_id": event.webhook_event_id}))["state"] == "done"


async def test_a_crash_after_deciding_replays_the_decision_not_a_new_one(
    db: Any, config_dir: Path, line: Line
) -> None:
    user = line.user()
    first = FlakyPublisher()
    crashing = CrashingStore(db)
    event = line.text(user, "こんばんは", NIGHT)

    with pytest.raises(ConnectionError):
        await triage(db, config_dir, first, store=crashing).handle(event)
    # The hours change before the redelivery: the stored decision still stands.
    hours = config_dir / "hours.yaml"
    hours.write_text(
        hours.read_text(encoding="utf-8").replace('close: "21:00"', 'close: "23:00"'),
        encoding="utf-8",
    )
    await triage(db, config_dir, first, store=crashing).handle(event)

    commands = [m for m in first.published if isinstance(m, SendText)]
    assert [c.purpose for c in commands] == ["out_of_hours"]
    assert await db[CASES].count_documents({"user_id": user}) == 1


async def test_a_case_closed_while_deciding_sends_the_message_to_a_new_case(
    db: Any, config_dir: Path, line: Line
) -> None:
    user = line.user()
    publisher = FlakyPublisher()
    handler = triage(db, config_dir, publisher)
    await handler.handle(line.text(user, "はじめまして", IN_HOURS))
    (case,) = await db[CASES].find({"user_id": user}).to_list()

    original = handler.decider.decide

    async def decide_then_counselor_closes(event: LineEventReceived, **kwargs: Any) -> Plan:
        plan = await original(event, **kwargs)
        await db[CASES].update_one({"_id": case["_id"]}, {"$set": {"state": "closed"}})
        return plan

    handler.decider.decide = decide_then_counselor_closes  # type: ignore[method-assign]
    late = line.text(user, "もうひとつ", IN_HOURS + timedelta(minutes=1))
    await handler.handle(late)

    cases = await db[CASES].find({"user_id": user}).sort("opened_at", 1).to_list()
    assert len(cases) == 2
    stored = await db[MESSAGES].find_one({"text": "もうひとつ"})
    assert stored["case_id"] == cases[1]["_id"]


async def test_a_duplicate_arriving_while_the_first_is_planned_is_handled_once(
    db: Any, config_dir: Path, line: Line
) -> None:
    publisher = FlakyPublisher()
    handler = triage(db, config_dir, publisher)
    event = line.follow(line.user(), IN_HOURS)

    await asyncio.gather(handler.handle(event), handler.handle(event))

    # Both deliveries may publish, but the same command (dispatch sends an id once).
    assert len({m.id for m in publisher.published if isinstance(m, SendText)}) == 1
    assert len({m.id for m in publisher.published if isinstance(m, Fact)}) == 2


async def test_broker_connections_cut_mid_stream_lose_nothing_and_duplicate_nothing(
    start_triage: StartTriage,
    line: Line,
    downstream: Downstream,
    broker: BrokerControl,
) -> None:
    running = await start_triage()
    users = [line.user() for _ in range(5)]
    ledger = Ledger()
    events = [
        line.text(users[n % 5], f"メッセージ {n}", IN_HOURS + timedelta(seconds=n))
        for n in range(60)
    ]

    async def publish_all() -> None:
        for event in events:
            ledger.published.add(event.webhook_event_id)
            while True:
                try:
                    await running.publisher.publish(event)
                    break
                except PublishFailed:
                    await asyncio.sleep(0.2)
            ledger.confirmed.add(event.webhook_event_id)

    publishing = asyncio.create_task(publish_all())
    await wait_until(lambda: len(ledger.confirmed) >= 20, message="first events confirmed")
    await asyncio.to_thread(broker.close_all_connections)
    await publishing

    async def all_done() -> bool:
        done = await running.store.db[EVENTS].count_documents(
            {"_id": {"$in": list(ledger.confirmed)}, "state": "done"}
        )
        return done == len(ledger.confirmed)

    await wait_until(all_done, timeout=60, message="every confirmed event handled")
    for doc in await running.store.db[MESSAGES].find({"user_id": {"$in": users}}).to_list():
        text_n = int(doc["text"].split()[1])
        ledger.applied[events[text_n].webhook_event_id] += 1
    received = await wait_until(
        lambda: (
            [f for f in downstream.facts_of(F.MESSAGE_RECEIVED) if f.data["user_id"] in users]
            if len({f.id for f in downstream.facts_of(F.MESSAGE_RECEIVED)}) >= 60
            else None
        ),
        timeout=30,
        message="every message.received fact",
    )
    summary = ledger.summary()
    assert not ledger.lost, summary
    assert not ledger.unexpected, summary
    assert not ledger.duplicate_effects, summary
    assert len({f.id for f in received}) == 60
    for user in users:
        assert await running.store.db[CASES].count_documents({"user_id": user}) == 1
