"""The whole service when things break (issue 8), end to end, each scenario with a ledger.

Signed webhooks go in at the ingress the way LINE sends them (a request not answered 200 is sent
again, flagged as a redelivery, with the same ``webhookEventId``); the effects are counted where
the student and the counselors see them: the texts the fake LINE platform delivered and the
messages and cases in the store. The ledger's ``published`` are the events sent, ``confirmed``
those of requests answered 200, ``consumed`` every delivery triage's handler saw and ``applied``
every effect found. Each scenario ends with lost = unexpected = duplicate effects = 0.

Scenarios: the broker's connections closed (``rabbitmqctl``) and the broker stopped and started
(a proxy in front of it for this stack only) under webhook load; triage failing after its store
write, before the ack; LINE failing in bursts (5xx, 429, timeouts, lost answers); an event
delivered three times; events out of order; a poison message in every queue.

Covered elsewhere, not repeated here: slow broker confirms answered 503 within the timeout
(``services/ingress/tests/test_webhook_faults.py``), the bus alone under connection cuts
(``shared/tests/test_bus_faults.py``), triage's crash points one by one
(``services/triage/tests/test_triage_faults.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import shutil
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from soudan_allinone.testing import Stack, running_fake_platform, start_stack
from soudan_dispatch.sending import SENT
from soudan_fakeline import new_user_id
from soudan_fakeline.platform import default_rate_limits
from soudan_shared import fact_types as F
from soudan_shared.bus import REASON_HEADER, RetryPolicy
from soudan_shared.config import load_config
from soudan_shared.records import CASES, MESSAGES, USERS, incoming_message_id
from soudan_shared.store import open_store
from soudan_shared.testing.ledger import Ledger
from soudan_shared.testing.plugin import BrokerControl, delete_topology, with_database
from soudan_shared.testing.proxy import TcpProxy
from soudan_shared.testing.waiting import wait_until
from soudan_shared.topology import (
    BROADCAST_QUEUE,
    FACTS_QUEUE,
    SEND_TEXT_QUEUE,
    Topology,
    line_event_queue,
)
from soudan_triage.app import TRIAGE
from soudan_triage.store import EVENTS as TRIAGE_EVENTS

pytestmark = [pytest.mark.fault, pytest.mark.timeout(60)]

SHIPPED_CONFIG = Path(__file__).resolve().parents[3] / "deploy" / "config"
SECRET = "fault-channel-secret"
TOKEN = "fault-access-token"
LINE_TIMEOUT = 1.0  # dispatch's per-request timeout towards LINE, so a slow LINE is quick to test
POLICY = "menu=policy"


@dataclass
class Rig:
    stack: Stack
    topology: Topology
    proxy: TcpProxy  # every service reaches the broker through it: stop it, the broker is gone


@pytest.fixture(scope="module")
async def rig(
    broker: BrokerControl,
    rabbitmq_url: str,
    mongodb_url: str,
    smtp_inbox: tuple[Any, int],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Rig]:
    """The end-to-end stack (as in ``conftest.stack``) with a short LINE request timeout, its
    five services connected to the broker through a proxy."""
    topology = Topology(namespace=f"t{uuid.uuid4().hex[:10]}")
    database = f"t_{uuid.uuid4().hex[:12]}"
    base = tmp_path_factory.mktemp("faults")
    config_dir = base / "config"
    shutil.copytree(SHIPPED_CONFIG, config_dir)
    inbox, smtp_port = smtp_inbox
    env = {
        "RABBITMQ_URL": rabbitmq_url,
        "MONGODB_URL": with_database(mongodb_url, database),
        "BUS_NAMESPACE": topology.namespace,
        "LOG_HASH_KEY": "test-hash-key",
        "LINE_CHANNEL_SECRET": SECRET,
        "LINE_CHANNEL_ACCESS_TOKEN": TOKEN,
        "LINE_REQUEST_TIMEOUT": str(LINE_TIMEOUT),
        "SOUDAN_CONFIG_DIR": str(config_dir),
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp_port),
        "SMTP_STARTTLS": "false",
        "EMERGENCY_RECIPIENTS": "section@example.jp",
        "REPORT_RECIPIENTS": "section@example.jp",
        "REPORTS_DIR": str(base / "reports"),
    }
    proxy = TcpProxy(broker.host, broker.port)
    await proxy.start()
    env["RABBITMQ_URL"] = broker.url_via(proxy.port)
    store = await open_store(env["MONGODB_URL"], database=database)
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        try:
            async with running_fake_platform(SECRET, TOKEN) as (line, seen):
                patch.setenv("LINE_API_BASE_URL", line.url)
                async with start_stack(line, seen, store, config_dir, inbox, base) as running:
                    yield Rig(running, topology, proxy)
        finally:
            await proxy.stop()
            with contextlib.suppress(Exception):
                await store.client.drop_database(database)
            await store.close()
            await delete_topology(rabbitmq_url, topology)


# -- LINE, as a sender of webhooks ---------------------------------------------------------


@dataclass
class Students:
    """Webhook events from a few students, posted like LINE posts them, with the ledger."""

    stack: Stack
    ledger: Ledger = field(default_factory=Ledger)
    answers: Counter[int] = field(default_factory=Counter)
    texts: dict[str, str] = field(default_factory=dict)  # event id -> LINE message id
    policy_asks: dict[str, list[str]] = field(default_factory=dict)  # user -> event ids
    users: set[str] = field(default_factory=set)
    writers: set[str] = field(default_factory=set)

    def text(self, user: str, text: str) -> dict[str, Any]:
        event = self.stack.line.webhook.message_event(user, text)
        self.writers.add(user)
        self.texts[event["webhookEventId"]] = event["message"]["id"]
        return self._sent(user, event)

    def ask_policy(self, user: str) -> dict[str, Any]:
        event = self.stack.line.webhook.postback_event(user, POLICY)
        self.policy_asks.setdefault(user, []).append(event["webhookEventId"])
        return self._sent(user, event)

    def _sent(self, user: str, event: dict[str, Any]) -> dict[str, Any]:
        self.users.add(user)
        self.ledger.published.add(event["webhookEventId"])
        return event

    async def deliver(self, events: list[dict[str, Any]]) -> None:
        """Post until answered 200; a 503 is redelivered, flagged so, with the same event ids."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + 30
        redelivery = False
        while True:
            result = await self.stack.line.webhook.send(
                events, url=self.stack.webhook_url, redelivery=redelivery
            )
            self.answers[result.status] += 1
            if result.status == 200:
                self.ledger.confirmed.update(e["webhookEventId"] for e in events)
                return
            assert result.status == 503, result
            assert loop.time() < give_up, "never answered 200 again"
            redelivery = True
            await asyncio.sleep(0.05)  # LINE waits before redelivering

    # -- effects --------------------------------------------------------------------------------

    def policy_deliveries(self, user: str) -> int:
        return sum(1 for t in self.stack.line.fake.texts(user) if t == self.policy_text)

    @property
    def policy_text(self) -> str:
        return load_config(self.stack.config_dir).messages.follow.policy

    async def settled(self) -> bool:
        """Every confirmed event handled to the end: done in triage and its texts delivered."""
        confirmed = list(self.ledger.confirmed)
        done = await self.stack.store.db[TRIAGE_EVENTS].count_documents(
            {"_id": {"$in": confirmed}, "state": "done"}
        )
        if done < len(confirmed):
            return False
        stored = await self.stack.store.db[MESSAGES].count_documents(
            {"_id": {"$in": [incoming_message_id(m) for m in self.texts.values()]}}
        )
        if stored < len(self.texts):
            return False
        return all(
            self.policy_deliveries(user) >= len(asks) for user, asks in self.policy_asks.items()
        )

    async def count_effects(self) -> None:
        """``applied``: a stored message per text event; a delivered policy text per question,
        given to the user's questions in order (any extra one counts on the last: a duplicate)."""
        messages = self.stack.store.db[MESSAGES]
        for event_id, line_id in self.texts.items():
            found = await messages.count_documents({"_id": incoming_message_id(line_id)})
            if found:
                self.ledger.applied[event_id] += found
        for user, asks in self.policy_asks.items():
            delivered = self.policy_deliveries(user)
            for event_id in asks[:delivered]:
                self.ledger.applied[event_id] += 1
            if delivered > len(asks):
                self.ledger.applied[asks[-1]] += delivered - len(asks)

    async def assert_once_per_user(self) -> None:
        """One case per user who wrote, and one out-of-hours reply (they all wrote at night)."""
        template = load_config(self.stack.config_dir).messages.auto_reply.out_of_hours
        opening = template.split("{next_open}")[0]
        for user in self.users:
            cases = await self.stack.store.db[CASES].count_documents({"user_id": user})
            wrote = user in self.writers
            assert cases == (1 if wrote else 0), (user, cases)
            replies = [t for t in self.stack.line.fake.texts(user) if t.startswith(opening)]
            assert len(replies) == (1 if wrote else 0), (user, replies)

    def assert_clean(self) -> None:
        summary = self.ledger.summary()
        assert self.ledger.confirmed == self.ledger.published, summary
        assert self.ledger.lost == set(), summary
        assert self.ledger.unexpected == set(), summary
        assert self.ledger.duplicate_effects == set(), summary


CURRENT_EVENT: contextvars.ContextVar[str] = contextvars.ContextVar("current_event")


@contextlib.contextmanager
def watching_triage(stack: Stack, ledger: Ledger) -> Iterator[Any]:
    """Count every delivery triage's handler sees (``consumed``); yields triage."""
    triage = stack.apps["triage"][TRIAGE]
    original = triage.handle

    async def handle(event: Any) -> None:
        ledger.consumed[event.webhook_event_id] += 1
        CURRENT_EVENT.set(event.webhook_event_id)
        await original(event)

    triage.handle = handle
    try:
        yield triage
    finally:
        del triage.handle


# -- the broker's connections closed under load ----------------------------------------------


async def _student(students: Students, user: str, events: int) -> None:
    """One student's events in requests of 1 to 3, one request at a time; every fifth event
    asks for the policy (one reply each), the others are texts."""
    n = 0
    while n < events:
        batch = [
            students.ask_policy(user) if (n + i) % 5 == 4 else students.text(user, f"m{n + i}")
            for i in range(min(1 + n % 3, events - n))
        ]
        n += len(batch)
        await students.deliver(batch)


async def _check_every_event_once(students: Students, users: list[str]) -> None:
    await students.count_effects()
    print(students.ledger.summary(), dict(students.answers))
    students.assert_clean()
    await students.assert_once_per_user()
    for user in users:
        assert students.policy_deliveries(user) == len(students.policy_asks[user])


async def test_every_webhook_answered_200_is_handled_once_when_the_brokers_connections_close(
    rig: Rig, broker: BrokerControl
) -> None:
    stack = rig.stack
    stack.at(stack.closed_moment())
    students = Students(stack)
    users = [new_user_id() for _ in range(8)]

    with watching_triage(stack, students.ledger):
        senders = [asyncio.create_task(_student(students, u, 40)) for u in users]  # 320 events
        await wait_until(
            lambda: len(students.ledger.confirmed) >= 60, timeout=20, message="traffic flowing"
        )
        await asyncio.to_thread(broker.close_all_connections)
        await asyncio.wait_for(asyncio.gather(*senders), 45)
        await wait_until(students.settled, timeout=30, message="every confirmed event handled")

    assert students.ledger.redeliveries > 0, "the cut caught deliveries in flight"
    await _check_every_event_once(students, users)


async def test_webhooks_are_503_while_the_broker_is_down_and_each_is_handled_once_after(
    rig: Rig,
) -> None:
    stack = rig.stack
    stack.at(stack.closed_moment())
    students = Students(stack)
    users = [new_user_id() for _ in range(6)]

    with watching_triage(stack, students.ledger):
        senders = [asyncio.create_task(_student(students, u, 30)) for u in users]  # 180 events
        await wait_until(
            lambda: len(students.ledger.confirmed) >= 40, timeout=20, message="traffic flowing"
        )
        await rig.proxy.stop()  # the broker stopped: connections cut, nothing listening
        try:
            await wait_until(
                lambda: students.answers[503] >= 10, timeout=15, message="503 in the outage"
            )
            probe = await stack.line.webhook.text(new_user_id(), "ていでん", url=stack.webhook_url)
            assert probe.status == 503
        finally:
            await rig.proxy.start()  # and started again: the same processes carry on
        await asyncio.wait_for(asyncio.gather(*senders), 40)
        await wait_until(students.settled, timeout=30, message="every confirmed event handled")

    await _check_every_event_once(students, users)


# -- a crash after the store write, before the ack --------------------------------------------


async def test_a_triage_killed_after_storing_before_the_ack_adds_nothing_twice_on_redelivery(
    rig: Rig,
) -> None:
    stack = rig.stack
    stack.at(stack.closed_moment())
    students = Students(stack)
    users = [new_user_id() for _ in range(4)]
    events = [
        [students.text(u, "きいてほしい"), students.ask_policy(u), students.ask_policy(u)]
        for u in users
    ]
    # A kill, as the broker sees it: the handler fails after its store write, on every
    # in-process retry, so the message is never acked and the broker delivers it again. Each
    # student's text and first question die right after their effects are stored (case,
    # message, plan; nothing published yet), the second question after being marked done
    # (commands published).
    after_apply = {e[i]["webhookEventId"] for e in events for i in (0, 1)}
    after_done = {e[2]["webhookEventId"] for e in events}
    doomed = after_apply | after_done
    kills: Counter[str] = Counter()
    in_process = RetryPolicy().attempts

    with watching_triage(stack, students.ledger) as triage:
        store = triage.store
        apply = store.apply

        def killed(among: set[str]) -> None:
            event_id = CURRENT_EVENT.get()
            if event_id in among and kills[event_id] < in_process:
                kills[event_id] += 1
                raise ConnectionError("killed after the store write, before the ack")

        async def apply_then_die(plan: Any, *, guard_case: bool = True) -> bool:
            result: bool = await apply(plan, guard_case=guard_case)
            killed(after_apply)
            return result

        watched = triage.handle

        async def handle_then_die(event: Any) -> None:
            await watched(event)  # done: marked so in triage_events, commands published
            killed(after_done)

        store.apply = apply_then_die
        triage.handle = handle_then_die
        try:
            for user_events in events:
                await students.deliver(user_events)
            await wait_until(students.settled, timeout=30, message="every event handled")
            await wait_until(
                lambda: all(students.ledger.consumed[e] > in_process for e in doomed),
                timeout=30,
                message="every killed event delivered again by the broker",
            )
        finally:
            del store.apply

    assert set(kills) == doomed
    for event_id in doomed:  # handled in process, then once more from the broker
        assert students.ledger.consumed[event_id] >= in_process + 1, event_id
    await students.count_effects()
    print(students.ledger.summary())
    students.assert_clean()
    await students.assert_once_per_user()
    for user in users:
        assert students.policy_deliveries(user) == 2
        assert len(await stack.facts(F.REPLY_SENT, user_id=user)) == 3


# -- LINE failing in bursts --------------------------------------------------------------------


async def _dead_letters(channel: aio_pika.abc.AbstractChannel, queue: str) -> list[Any]:
    """Take every message out of ``queue`` (a dead-letter queue)."""
    dead = await channel.declare_queue(queue, passive=True)
    taken = []
    while (message := await dead.get(no_ack=True, fail=False)) is not None:
        taken.append(message)
    return taken


async def test_line_failing_in_bursts_delivers_every_text_once_or_dead_letters_it_with_a_reason(
    rig: Rig, raw_channel: aio_pika.abc.AbstractChannel
) -> None:
    stack = rig.stack
    fake = stack.line.fake
    stack.at(stack.open_moment())
    students = Students(stack)
    users = [new_user_id() for _ in range(30)]
    dead: dict[str, str] = {}  # user -> reason
    dead_queue = rig.topology.dead_letter_queue(SEND_TEXT_QUEUE)

    fake.inject("reply", status=500, times=6)
    fake.inject("reply", status=503, times=3, after_processing=True)  # sent, the answer lost
    fake.inject("reply", status=429, times=6)
    fake.set_latency(LINE_TIMEOUT + 0.5, "reply", times=4)  # past dispatch's timeout
    fake.set_rate_limit("reply", 50, burst=5)
    try:
        await asyncio.gather(*(students.deliver([students.ask_policy(u)]) for u in users))

        async def accounted() -> bool:
            for message in await _dead_letters(raw_channel, dead_queue):
                command = json.loads(message.body)
                dead[command["to"]] = str((message.headers or {}).get(REASON_HEADER))
            sent = await stack.store.db[SENT].distinct(
                "to", {"to": {"$in": users}, "state": "sent"}
            )
            return all(u in dead or (u in sent and students.policy_deliveries(u)) for u in users)

        await wait_until(accounted, timeout=40, message="every text sent or dead-lettered")
    finally:
        fake.clear_faults()
        fake.rate_limits = default_rate_limits()

    ambiguous = 0
    failures = [r for r in fake.requests if r.status >= 429]
    for status in (0, 429, 500, 503):  # 0: dispatch's timeout; every kind of burst was felt
        await stack.wait_fact(F.LINE_API_ERROR, endpoint="reply", status=status)
    for user in users:
        delivered = students.policy_deliveries(user)
        if user in dead:
            # A reply whose answer was lost (5xx after processing, a timeout) may have reached
            # the student before later tries were refused: dead-lettered, never sent twice.
            assert delivered <= 1, (user, dead[user], fake.received(user))
            ambiguous += delivered
            assert dead[user].startswith("LINE refused the message"), dead[user]
            if delivered:
                # The operator must not read it as unsent and send it again.
                assert "may have been delivered" in dead[user], dead[user]
                await stack.wait_fact(F.REPLY_FAILED, user_id=user, maybe_delivered=True)
            else:
                await stack.wait_fact(F.REPLY_FAILED, user_id=user)
        else:
            assert delivered == 1, (user, stack.line.fake.received(user))
    await students.count_effects()
    for user in dead:  # dead-lettered with a reason: accounted for, not lost
        students.ledger.applied[students.policy_asks[user][0]] = 1
    print(
        students.ledger.summary(),
        f"dead={len(dead)} delivered_and_dead={ambiguous} line_failures={len(failures)}",
    )
    students.assert_clean()


# -- duplicates and disorder -------------------------------------------------------------------


async def test_an_event_delivered_three_times_has_one_effect(rig: Rig) -> None:
    stack = rig.stack
    stack.at(stack.closed_moment())
    students = Students(stack)
    user = new_user_id()
    events = [students.text(user, "だれかいますか"), students.ask_policy(user)]

    with watching_triage(stack, students.ledger):
        for redelivery in (False, True, True):
            result = await stack.line.webhook.send(
                events, url=stack.webhook_url, redelivery=redelivery
            )
            assert result.status == 200
            students.ledger.confirmed.update(e["webhookEventId"] for e in events)
        await wait_until(
            lambda: sum(students.ledger.consumed.values()) >= 6, message="all three consumed"
        )
        await wait_until(students.settled, message="handled")

    assert all(n == 3 for n in students.ledger.consumed.values()), students.ledger.consumed
    await students.count_effects()
    students.assert_clean()
    await students.assert_once_per_user()
    assert students.policy_deliveries(user) == 1
    assert len(await stack.facts(F.MESSAGE_RECEIVED, user_id=user)) == 1


async def test_events_out_of_order_take_effect_once_each_in_timestamp_order(rig: Rig) -> None:
    stack = rig.stack
    stack.at(stack.closed_moment())
    webhook = stack.line.webhook
    students = Students(stack)
    user = new_user_id()
    first, second = students.text(user, "さいしょ"), students.text(user, "つぎ")
    chose, changed = (
        webhook.postback_event(user, "school_type=public_high"),
        webhook.postback_event(user, "school_type=sapporo_city"),
    )
    students.ledger.published.update(e["webhookEventId"] for e in (chose, changed))
    for n, event in enumerate((first, second, chose, changed)):
        event["timestamp"] += n * 1000  # a second apart, in this order

    # Delivered newest first: the later message before the earlier one, the changed school
    # type before the first choice.
    with watching_triage(stack, students.ledger):
        for event in (second, first, changed, chose):
            await students.deliver([event])
        stale = await stack.wait_fact(
            F.LINE_EVENT_IGNORED, webhook_event_id=chose["webhookEventId"], reason="stale"
        )
        await wait_until(students.settled, message="handled")

    stored = await stack.store.db[MESSAGES].find({"user_id": user}).sort("at", 1).to_list()
    assert [m["text"] for m in stored] == ["さいしょ", "つぎ"]
    assert stored[0]["at"] < stored[1]["at"]
    profile = await stack.store.db[USERS].find_one({"_id": user})
    assert (profile["school_type"], profile["eligible"]) == ("sapporo_city", False)
    chosen = await stack.facts(F.SCHOOL_TYPE_SET, user_id=user)
    assert [f["data"]["school_type"] for f in chosen] == ["sapporo_city"]
    assert len(await stack.facts(F.MESSAGE_RECEIVED, user_id=user)) == 2
    # The effects: each text stored, the newer choice in force, the older one seen as stale.
    await students.count_effects()
    students.ledger.applied[changed["webhookEventId"]] += len(chosen)
    students.ledger.applied[chose["webhookEventId"]] += 1 if stale else 0
    assert all(n == 1 for n in students.ledger.consumed.values()), students.ledger.consumed
    students.assert_clean()
    await students.assert_once_per_user()


# -- poison ------------------------------------------------------------------------------------


async def test_a_poison_message_in_each_queue_is_dead_lettered_and_the_rest_flow(
    rig: Rig, raw_channel: aio_pika.abc.AbstractChannel
) -> None:
    stack, topology = rig.stack, rig.topology
    exchange = await raw_channel.get_exchange(topology.exchange)
    shards = range(topology.line_event_shards)
    routes = {
        **{f"line.event.{i}": topology.queue(line_event_queue(i)) for i in shards},
        "command.send_text": topology.queue(SEND_TEXT_QUEUE),
        "command.start_broadcast": topology.queue(BROADCAST_QUEUE),
        "fact.x.y": topology.queue(FACTS_QUEUE),
    }
    assert len(routes) == len(topology.queues)
    poison: dict[str, str] = {}  # message id -> queue
    for key, queue in routes.items():
        message_id = uuid.uuid4().hex
        poison[message_id] = queue
        body = b"\xff\xfe not json {" + key.encode()
        await exchange.publish(
            aio_pika.Message(body, message_id=message_id, content_type="application/json"),
            routing_key=key,
            mandatory=True,
        )

    found: dict[str, dict[str, Any]] = {}

    async def all_dead() -> bool:
        for queue in set(poison.values()) - {found[m]["x-soudan-queue"] for m in found}:
            for message in await _dead_letters(raw_channel, f"{queue}.dead"):
                if message.message_id in poison:
                    found[message.message_id] = dict(message.headers or {})
        return set(found) == set(poison)

    await wait_until(all_dead, timeout=20, message="every poison message dead-lettered")
    for message_id, headers in found.items():
        assert str(headers[REASON_HEADER]).startswith("unparseable"), headers
        assert headers["x-soudan-queue"] == poison[message_id]

    # The rest flow: a student's message, its reply, its facts.
    stack.at(stack.closed_moment())
    user = new_user_id()
    assert (await stack.line.webhook.text(user, "ねむれない", url=stack.webhook_url)).status == 200
    await wait_until(lambda: stack.line.fake.texts(user), message="the out-of-hours reply")
    await stack.wait_fact(F.MESSAGE_RECEIVED, user_id=user)
    await stack.wait_fact(F.REPLY_SENT, user_id=user, purpose="out_of_hours")
    for queue in set(poison.values()):
        await stack.wait_fact(F.BUS_DEAD_LETTERED, queue=queue)
