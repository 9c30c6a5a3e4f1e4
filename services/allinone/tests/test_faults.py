"""The whole service when things break (issue 8), end to end, each scenario with a ledger.

Signed webhooks go in at the ingress the way LINE sends them (a request not answered 200 is sent
again, flagged as a redelivery, with the same ``webhookEventId``); the effects are counted where
the student and the counselors see them: the texts the fake LINE platform delivered and the
messages and cases in the store. The ledger's ``published`` are the events sent, ``confirmed``
those of requests answered 200, ``consumed`` every delivery triage's handler saw and ``applied``
every effect found. Each scenario ends with lost = unexpected = duplicate effects = 0.

Scenarios: the broker's connections closed (``rabbitmqctl``) and the broker stopped and started
(a proxy in front of it for this stack only) under webhook load; triage failing after its store
write, before the ack (in process: retried, then requeued); triage killed there as the broker
sees a killed process (its connection aborted, the instance discarded, a fresh one on the same
store); a ``soudan-dispatch`` process killed (SIGKILL) while LINE holds the answers to pushes it
already delivered; LINE failing in bursts (5xx, 429, timeouts, lost answers); an event delivered
three times; events out of order; a poison message in every queue.

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
import os
import signal
import sys
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import pytest
from aiohttp import web
from soudan_allinone.testing import (
    CURRENT_EVENT,
    SHIPPED_CONFIG,
    Stack,
    Students,
    check_every_event_once,
    is_ready,
    send_student_events,
    stack_on,
    watching_triage,
)
from soudan_dispatch.line import retry_key
from soudan_dispatch.sending import SENT
from soudan_fakeline import new_user_id, running_fakeline
from soudan_fakeline.platform import default_rate_limits
from soudan_shared import fact_types as F
from soudan_shared.bus import REASON_HEADER, Bus, RetryPolicy
from soudan_shared.contracts import Fact, LineEventReceived, SendText, stable_id
from soudan_shared.records import MESSAGES, USERS
from soudan_shared.runtime import BUS
from soudan_shared.testing.ledger import Ledger
from soudan_shared.testing.plugin import BrokerControl, own_vhost_fixtures
from soudan_shared.testing.proxy import TcpProxy, free_port
from soudan_shared.testing.secantus import SecantusServer, start_secantus
from soudan_shared.testing.waiting import wait_until
from soudan_shared.topology import (
    FACTS_QUEUE,
    SEND_TEXT_QUEUE,
    Topology,
)
from soudan_triage.app import TRIAGE
from soudan_triage.app import create_app as create_triage
from soudan_triage.plan import Plan
from soudan_triage.service import Triage
from soudan_triage.settings import TriageSettings
from soudan_triage.store import TriageStore

pytestmark = [pytest.mark.fault, pytest.mark.timeout(60)]

SECRET = "fault-channel-secret"
TOKEN = "fault-access-token"
LINE_TIMEOUT = 1.0  # dispatch's per-request timeout towards LINE, so a slow LINE is quick to test


broker, rabbitmq_url = own_vhost_fixtures()  # the broker-close test cuts only these


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
    proxy = TcpProxy(broker.host, broker.port)
    await proxy.start()
    try:
        async with stack_on(
            tmp_path_factory.mktemp("faults"),
            rabbitmq_url=rabbitmq_url,
            services_rabbitmq_url=broker.url_via(proxy.port),
            mongodb_url=mongodb_url,
            smtp_inbox=smtp_inbox,
            secret=SECRET,
            token=TOKEN,
            line_timeout=LINE_TIMEOUT,
        ) as (running, topology):
            yield Rig(running, topology, proxy)
    finally:
        await proxy.stop()


# -- the broker's connections closed under load ----------------------------------------------


async def test_every_webhook_answered_200_is_handled_once_when_the_brokers_connections_close(
    rig: Rig, broker: BrokerControl
) -> None:
    stack = rig.stack
    stack.at(stack.closed_moment())
    students = Students(stack)
    users = [new_user_id() for _ in range(8)]

    with watching_triage(stack, students.ledger):
        # 320 events
        senders = [asyncio.create_task(send_student_events(students, u, 40)) for u in users]
        await wait_until(
            lambda: len(students.ledger.confirmed) >= 60, timeout=20, message="traffic flowing"
        )
        await asyncio.to_thread(broker.close_all_connections)
        await asyncio.wait_for(asyncio.gather(*senders), 45)
        await students.wait_settled(timeout=90)  # every connection cut: a cap, not a target

    assert students.ledger.redeliveries > 0, "the cut caught deliveries in flight"
    await check_every_event_once(students, users)


async def test_webhooks_are_503_while_the_broker_is_down_and_each_is_handled_once_after(
    rig: Rig,
) -> None:
    stack = rig.stack
    stack.at(stack.closed_moment())
    students = Students(stack)
    users = [new_user_id() for _ in range(6)]

    with watching_triage(stack, students.ledger):
        # 180 events
        senders = [asyncio.create_task(send_student_events(students, u, 30)) for u in users]
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
        await students.wait_settled()

    await check_every_event_once(students, users)


# -- the database server killed (SIGKILL) under load and started again on its data ---------------


@dataclass
class EngineRig:
    stack: Stack
    server: SecantusServer  # the stack's own database server, a real process to kill


@pytest.fixture
async def engine_rig(
    rabbitmq_url: str, smtp_inbox: tuple[Any, int], tmp_path: Path
) -> AsyncIterator[EngineRig]:
    """A stack on a SecantusDB server of its own (WiredTiger, a separate process)."""
    server = await asyncio.to_thread(start_secantus, tmp_path / "db")
    rig = None
    try:
        async with stack_on(
            tmp_path,
            rabbitmq_url=rabbitmq_url,
            services_rabbitmq_url=rabbitmq_url,
            mongodb_url=server.url,
            smtp_inbox=smtp_inbox,
            secret=SECRET,
            token=TOKEN,
            line_timeout=LINE_TIMEOUT,
        ) as (running, _):
            rig = EngineRig(running, server)
            yield rig
    finally:
        await asyncio.to_thread((rig.server if rig else server).stop)


@pytest.mark.timeout(180)
async def test_every_event_triage_acknowledged_survives_the_database_server_killed_and_restarted(
    engine_rig: EngineRig,
) -> None:
    stack, server = engine_rig.stack, engine_rig.server
    stack.at(stack.closed_moment())
    students = Students(stack)
    users = [new_user_id() for _ in range(6)]

    with watching_triage(stack, students.ledger):
        # 180 events
        senders = [asyncio.create_task(send_student_events(students, u, 30)) for u in users]
        await wait_until(
            lambda: len(students.ledger.confirmed) >= 40, timeout=30, message="traffic flowing"
        )
        server.process.send_signal(signal.SIGKILL)  # mid-write: no shutdown, no flush
        await asyncio.to_thread(server.process.wait)
        for name in ("triage", "dispatch", "console"):
            await wait_until(
                lambda n=name: _not(is_ready(stack.urls[n])),
                timeout=20,
                message=f"{name} says not ready while the database is down",
            )
        await asyncio.sleep(2)  # webhooks keep coming meanwhile: the broker holds them
        engine_rig.server = await asyncio.to_thread(
            start_secantus, server.data_dir, port=server.port
        )
        for name in ("triage", "dispatch", "console"):
            await wait_until(
                lambda n=name: is_ready(stack.urls[n]), timeout=30, message=f"{name} ready again"
            )
        await asyncio.wait_for(asyncio.gather(*senders), 90)
        await students.wait_settled(timeout=90)

    await check_every_event_once(students, users)


@pytest.mark.timeout(120)
async def test_writes_the_database_refuses_are_retried_and_nothing_acknowledged_is_lost(
    engine_rig: EngineRig,
) -> None:
    stack = engine_rig.stack
    stack.at(stack.closed_moment())
    students = Students(stack)
    users = [new_user_id() for _ in range(4)]
    admin = stack.store.client.admin
    messages = stack.store.db[MESSAGES]

    async def fail_point(mode: Any) -> None:
        await admin.command(
            {
                "configureFailPoint": "failCommand",
                "mode": mode,
                # InterruptedAtShutdown, as a server going down or stepping down answers: the
                # driver retries once, then the services hold the event until writes pass again.
                # (A write refused for good, e.g. BadValue, is retried and then dead-lettered
                # with its reason by the queue's delivery limit: shared/tests/test_bus.py.)
                "data": {
                    "failCommands": ["insert", "update", "findAndModify"],
                    "errorCode": 11600,
                },
            }
        )

    with watching_triage(stack, students.ledger):
        await fail_point("alwaysOn")  # every write refused, reads still answered
        try:
            # 60 events
            senders = [asyncio.create_task(send_student_events(students, u, 15)) for u in users]
            await wait_until(
                lambda: sum(students.ledger.consumed.values()) >= 12,
                timeout=20,
                message="triage tried events while its writes are refused",
            )
            await asyncio.sleep(1)
            assert await messages.count_documents({}) == 0, "a write got through the fail point"
        finally:
            await fail_point("off")
        await asyncio.wait_for(asyncio.gather(*senders), 60)
        await students.wait_settled(timeout=60)

    await check_every_event_once(students, users)


async def _not(ready: Any) -> bool:
    return not await ready


# -- a failure or a kill after the store write, before the ack ---------------------------------


def _a_text_and_two_questions_each(
    stack: Stack, users: int = 4
) -> tuple[Students, list[str], list[list[dict[str, Any]]]]:
    """Out of hours, four students each write a text and ask for the policy twice."""
    stack.at(stack.closed_moment())
    students = Students(stack)
    ids = [new_user_id() for _ in range(users)]
    events = [
        [students.text(u, "きいてほしい"), students.ask_policy(u), students.ask_policy(u)]
        for u in ids
    ]
    return students, ids, events


async def test_a_triage_failing_after_storing_before_the_ack_adds_nothing_twice_when_retried(
    rig: Rig,
) -> None:
    stack = rig.stack
    students, users, events = _a_text_and_two_questions_each(stack)
    # A failure, not a kill (the next tests kill): the handler fails after its store write, on
    # every in-process retry, so the same live instance requeues the message unacked and the
    # broker delivers it again (to that instance, which kept running). Each
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
            await students.wait_settled()
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
        assert len(await stack.wait_facts(F.REPLY_SENT, 3, user_id=user)) == 3


CURRENT_TRIAGE: contextvars.ContextVar[Triage] = contextvars.ContextVar("current_triage")


@dataclass
class KillPoint:
    """Where an instance dies: right after the store write ``after`` (``apply``: the event's
    effects stored, nothing published; ``mark_done``: its commands and facts published, the
    event marked done) of the first of ``events`` to get there, before the ack."""

    after: str
    events: set[str]
    killed: str | None = None  # the event it died on


class TriageKiller:
    """Triage instances killed as the broker sees a killed process, each replaced by a fresh one.

    A doomed instance reaches the broker through a proxy of its own. At its kill point, with no
    await in between: the instance is marked dead (its handler starts nothing more), its other
    deliveries in flight are cancelled, and its proxy stops, aborting both TCP legs (no AMQP
    close, no ack, no publish; nothing listens there, so it cannot reconnect); the delivery that
    reached the point stops right there. The dead app is then shut down (nothing it does can
    reach the broker any more) and a fresh instance started on the same store, which outlives
    the process as MongoDB would; the broker redelivers everything left unacked.
    """

    def __init__(
        self, stack: Stack, broker: BrokerControl, ledger: Ledger, points: list[KillPoint]
    ) -> None:
        self.stack = stack
        self.broker = broker
        self.ledger = ledger
        self.points = list(points)  # still to come, in order
        self.dead: set[Triage] = set()
        self.in_flight: dict[Triage, set[asyncio.Task[Any]]] = defaultdict(set)
        self.proxy: TcpProxy | None = None
        self.died = asyncio.Event()
        self.refused = 0  # deliveries a dead instance had already read from its socket

    @contextlib.contextmanager
    def patched(self) -> Iterator[None]:
        """Every triage instance, from its first delivery: counted (``consumed``), killable."""
        handle, apply, mark_done = Triage.handle, TriageStore.apply, TriageStore.mark_done

        async def counted_handle(triage: Triage, event: LineEventReceived) -> None:
            if triage in self.dead:
                self.refused += 1
                raise asyncio.CancelledError  # a dead process runs nothing
            self.ledger.consumed[event.webhook_event_id] += 1
            CURRENT_EVENT.set(event.webhook_event_id)
            CURRENT_TRIAGE.set(triage)
            task = asyncio.current_task()
            assert task is not None
            self.in_flight[triage].add(task)
            try:
                await handle(triage, event)
            finally:
                self.in_flight[triage].discard(task)

        async def apply_or_die(store: TriageStore, plan: Plan, *, guard_case: bool = True) -> bool:
            applied: bool = await apply(store, plan, guard_case=guard_case)
            await self._point("apply")
            return applied

        async def mark_done_or_die(store: TriageStore, event_id: str) -> None:
            await mark_done(store, event_id)
            await self._point("mark_done")

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(Triage, "handle", counted_handle)
            patch.setattr(TriageStore, "apply", apply_or_die)
            patch.setattr(TriageStore, "mark_done", mark_done_or_die)
            yield

    async def _point(self, after: str) -> None:
        triage, event_id = CURRENT_TRIAGE.get(None), CURRENT_EVENT.get(None)
        if not self.points or triage is None or triage in self.dead:
            return
        point = self.points[0]
        if point.after != after or event_id not in point.events:
            return
        self.points.pop(0)
        point.killed = event_id
        self.dead.add(triage)
        this = asyncio.current_task()
        for task in self.in_flight[triage]:
            if task is not this:
                task.cancel()
        assert self.proxy is not None
        await self.proxy.stop()  # aborts every connection before its first await
        self.died.set()
        raise asyncio.CancelledError  # killed here: after the store write, before the ack

    async def _start(self) -> None:
        """A fresh instance: doomed (through its own proxy) while kill points remain, else the
        stack's usual one (through the rig's proxy), left running for the next tests."""
        doomed = bool(self.points)
        settings = TriageSettings()
        if doomed:
            self.proxy = TcpProxy(self.broker.host, self.broker.port)
            await self.proxy.start()
            settings = TriageSettings(rabbitmq_url=self.broker.url_via(self.proxy.port))
        self.died.clear()
        app = create_triage(settings, clock=self.stack.now)
        # A doomed instance may die on its backlog before it would answer ready.
        await self.stack.start_service("triage", app, wait_ready=not doomed)

    async def run(self) -> None:
        """Start, kill and replace instances until every kill point is used; then the usual."""
        while self.points:
            await self._start()
            await asyncio.wait_for(self.died.wait(), 20)
            app = self.stack.apps["triage"]
            assert app[TRIAGE] in self.dead

            def quiet(app: web.Application = app) -> bool:
                return not app[BUS].is_ready and not self.in_flight[app[TRIAGE]]

            await wait_until(quiet, message="the killed instance cut off, its tasks ended")
            await self.stack.stop_service("triage")  # its port freed; it reaches nothing
            self.proxy = None  # stopped at the kill
        await self._start()

    async def restore(self) -> None:
        """After a failure too, leave the stack's usual triage instance running."""
        self.points.clear()
        if self.proxy is not None:  # a doomed instance, dead or not, is still the stack's
            if "triage" in self.stack.runners:
                await self.stack.stop_service("triage")
            await self.proxy.stop()
            self.proxy = None
        if "triage" not in self.stack.runners:
            await self._start()


async def test_a_triage_killed_after_storing_before_the_ack_adds_nothing_twice_on_redelivery(
    rig: Rig, broker: BrokerControl
) -> None:
    stack = rig.stack
    students, users, events = _a_text_and_two_questions_each(stack)
    # Two kills, each of a whole instance: the first dies right after storing the effects of
    # a text or a first question (case, message, plan; nothing published), its successor right
    # after marking a second question done (its policy text already published to dispatch).
    points = [
        KillPoint("apply", {e[i]["webhookEventId"] for e in events for i in (0, 1)}),
        KillPoint("mark_done", {e[2]["webhookEventId"] for e in events}),
    ]
    killer = TriageKiller(stack, broker, students.ledger, points)

    with killer.patched():
        await stack.stop_service("triage")  # the events wait in the broker meanwhile
        try:
            for user_events in events:
                await students.deliver(user_events)
            await killer.run()
        finally:
            await killer.restore()
        await students.wait_settled()

    # Handled by the instance that died, then by a fresh one. The successor may see the
    # redelivery after everything else has settled (an event killed after ``mark_done`` adds
    # nothing the ledger waits for), so wait for it rather than race it.
    for point in points:
        assert point.killed is not None, point
        try:
            await wait_until(
                lambda event=point.killed: students.ledger.consumed[event] >= 2,
                timeout=30,
                message=f"{point} redelivered to a fresh instance",
            )
        except AssertionError as exc:
            seen = await asyncio.to_thread(broker.describe)
            raise AssertionError(f"{exc}\nthe broker's view:\n{seen}") from None
    assert students.ledger.redeliveries >= 2
    await students.count_effects()
    print(students.ledger.summary(), f"refused_by_the_dead={killer.refused}")
    students.assert_clean()
    await students.assert_once_per_user()
    for user in users:
        assert students.policy_deliveries(user) == 2

        async def recorded(user: str = user) -> list[dict[str, Any]] | None:
            sent = await stack.facts(F.REPLY_SENT, user_id=user)
            return sent if len(sent) >= 3 else None

        sent = await wait_until(recorded, message="reply.sent recorded")
        assert len(sent) == 3, sent  # one per command: the recorder keeps a fact id once


# -- dispatch, a real process, killed (SIGKILL) while LINE holds its answers -------------------

DISPATCH = Path(sys.executable).parent / "soudan-dispatch"
# LINE holds the answer to each user's first push at most this long (released after the kill),
# under dispatch's request timeout, so the first process never tries again before it is killed.
HOLD = 20.0
DISPATCH_LINE_TIMEOUT = 30.0


async def _answers_200(url: str) -> bool:
    try:
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


@contextlib.asynccontextmanager
async def _dispatch_processes(env: dict[str, str], log: Path) -> AsyncIterator[Callable[[], Any]]:
    """Start ``soudan-dispatch`` processes (each ready, its own memory store) with ``start()``;
    any still running at the end is stopped."""
    processes: list[asyncio.subprocess.Process] = []

    async def start() -> asyncio.subprocess.Process:
        port = free_port()
        with log.open("ab") as out:
            process = await asyncio.create_subprocess_exec(
                str(DISPATCH),
                env={**env, "DISPATCH_PORT": str(port)},
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
            )
        processes.append(process)

        async def ready() -> bool:
            assert process.returncode is None, f"soudan-dispatch exited: see {log}"
            return await _answers_200(f"http://127.0.0.1:{port}/readyz")

        await wait_until(ready, timeout=30, message="soudan-dispatch ready")
        return process

    try:
        yield start
    finally:
        for process in processes:
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), 15)
                except TimeoutError:
                    process.kill()
                    await process.wait()


async def test_a_dispatch_killed_while_line_holds_its_pushes_sends_each_text_once_after_restart(
    rabbitmq_url: str,
    topology: Topology,
    make_bus: Callable[..., Bus],
    raw_channel: aio_pika.abc.AbstractChannel,
    tmp_path: Path,
) -> None:
    # Counselors' replies are pushes with a retry key (the command's id). The first process is
    # killed while LINE holds the answers to pushes it already delivered; the second, with an
    # empty store, pushes them again: LINE answers 409 and each counts as sent. Reply-token
    # sends are not tested here: a token is single-use and has no retry key, so after a kill
    # that loses the store a reply the student already got fails 400 and is pushed (a
    # duplicate); with the store kept, ``reply_tried_at`` makes that 400 count as sent while
    # the token is under 50 s old (``soudan_dispatch.sending``).
    users = [new_user_id() for _ in range(4)]
    ledger = Ledger()
    commands: dict[str, SendText] = {}
    facts: list[Fact] = []

    def announced(process: asyncio.subprocess.Process) -> bool:
        return any(f.type == F.SERVICE_STARTED and f.data["pid"] == process.pid for f in facts)

    watcher = make_bus("fact-watcher")  # reporting's place: every fact on this namespace

    async def keep(fact: Fact) -> None:
        facts.append(fact)

    watcher.consume(FACTS_QUEUE, Fact, keep)
    console = make_bus("console")
    for bus in (watcher, console):
        bus.start()
        await bus.wait_started(10)

    async def reply(user: str, n: int) -> None:
        """A counselor's reply, published as the console does (no reply token: a push)."""
        command = SendText(
            to=user,
            texts=[f"せんせいより {n}"],
            purpose="counselor_reply",
            case_id=f"case-{user[-6:]}",
            staff_id="staff-1",
        )
        commands[command.id] = command
        ledger.published.add(command.id)
        await console.publish(command)
        ledger.confirmed.add(command.id)

    async with running_fakeline(SECRET, [TOKEN]) as line:
        fake = line.fake
        env = {
            **os.environ,
            "RABBITMQ_URL": rabbitmq_url,
            "BUS_NAMESPACE": topology.namespace,
            "MONGODB_URL": "memory:///dispatch",  # in the process: lost with it
            "LOG_HASH_KEY": "test-hash-key",
            "LINE_CHANNEL_ACCESS_TOKEN": TOKEN,
            "LINE_API_BASE_URL": line.url,
            "LINE_REQUEST_TIMEOUT": str(DISPATCH_LINE_TIMEOUT),
            "SEND_BACKOFF_SECONDS": "0.02",
            "BROADCAST_SCHEDULE": "false",
            "SOUDAN_CONFIG_DIR": str(SHIPPED_CONFIG),
        }
        async with _dispatch_processes(env, tmp_path / "dispatch.log") as start_dispatch:
            first = await start_dispatch()
            await wait_until(lambda: announced(first), message="the first process announced")
            # Each user's first push is delivered, its answer held; the second waits behind it
            # (one user's commands go one at a time).
            fake.inject("push", status=0, hold=HOLD, times=len(users))
            for n in (1, 2):
                for user in users:
                    await reply(user, n)
            await wait_until(lambda: fake.held == len(users), message="every first push held")
            assert all(fake.texts(u) == ["せんせいより 1"] for u in users)

            first.send_signal(signal.SIGKILL)  # its store (the sent records) dies with it
            assert await asyncio.wait_for(first.wait(), 10) == -signal.SIGKILL
            fake.release_held()  # answered to nobody
            assert fake.faults == []
            for user in users:  # sent while dispatch is down: they wait in the queue
                await reply(user, 3)

            second = await start_dispatch()  # a fresh process, an empty store

            def all_sent() -> bool:
                done = {f.data["command_id"] for f in facts if f.type == F.REPLY_SENT}
                return done >= set(commands)

            await wait_until(all_sent, timeout=30, message="reply.sent for every command")
            await wait_until(lambda: announced(second), message="the second process announced")
            stopped = [f for f in facts if f.type == F.SERVICE_STOPPED]

    keys = {retry_key(command_id): command_id for command_id in commands}
    for request in fake.requests_to("push"):  # every push a dispatch made for a command
        ledger.consumed[keys.get(str(request.retry_key), "?")] += 1
    for delivery in fake.deliveries:  # the effect: a text at the student
        ledger.applied[keys.get(str(delivery.retry_key), f"unknown:{delivery.request_id}")] += 1
    print(ledger.summary())
    assert ledger.confirmed == ledger.published
    assert ledger.lost == set(), ledger.summary()
    assert ledger.unexpected == set(), ledger.summary()
    assert ledger.duplicate_effects == set(), ledger.summary()
    assert ledger.redeliveries == len(users), ledger.consumed  # only the held pushes, again
    for user in users:
        assert fake.texts(user) == [f"せんせいより {n}" for n in (1, 2, 3)]
        first_push = next(c for c in commands.values() if c.to == user)
        statuses = [
            r.status for r in fake.requests_to("push") if r.retry_key == retry_key(first_push.id)
        ]
        assert statuses == [200, 409], statuses  # delivered (answer held), then "already accepted"

    # Facts: one reply.sent per command, under the id derived from the command. A kill after
    # the fact was published and before the ack may legitimately publish it again, under the
    # same id (the recorder keeps one); here the first process died before any answer, so each
    # came once, from the second, a 409 counting as sent with the request id that delivered it.
    sent: dict[str, list[Fact]] = defaultdict(list)
    for fact in facts:
        if fact.type == F.REPLY_SENT:
            sent[fact.data["command_id"]].append(fact)
    delivered_by = {keys[str(d.retry_key)]: d.request_id for d in fake.deliveries}
    for command_id, found in sent.items():
        assert [f.id for f in found] == [stable_id(F.REPLY_SENT, command_id)], found
        assert found[0].data["method"] == "push"
        assert found[0].data["request_id"] == delivered_by[command_id]
    assert not [f for f in facts if f.type in (F.REPLY_FAILED, F.LINE_API_ERROR)]
    assert stopped == [], "the first was killed: it never said it stopped"
    dead_letters = await raw_channel.declare_queue(
        topology.dead_letter_queue(SEND_TEXT_QUEUE), passive=True
    )
    assert dead_letters.declaration_result.message_count == 0


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
        await students.wait_settled(timeout=10)

    assert all(n == 3 for n in students.ledger.consumed.values()), students.ledger.consumed
    await students.count_effects()
    students.assert_clean()
    await students.assert_once_per_user()
    assert students.policy_deliveries(user) == 1
    assert len(await stack.wait_facts(F.MESSAGE_RECEIVED, 1, user_id=user)) == 1


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
        await students.wait_settled(timeout=10)

    incoming = {"user_id": user, "direction": "in"}  # dispatch keeps the replies sent too
    stored = await stack.store.db[MESSAGES].find(incoming).sort("at", 1).to_list()
    assert [m["text"] for m in stored] == ["さいしょ", "つぎ"]
    assert stored[0]["at"] < stored[1]["at"]
    profile = await stack.store.db[USERS].find_one({"_id": user})
    assert (profile["school_type"], profile["eligible"]) == ("sapporo_city", False)
    chosen = await stack.wait_facts(F.SCHOOL_TYPE_SET, 1, user_id=user)
    assert [f["data"]["school_type"] for f in chosen] == ["sapporo_city"]
    assert len(await stack.wait_facts(F.MESSAGE_RECEIVED, 2, user_id=user)) == 2
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
    # Every queue the topology declares (a queue added later is covered too), reached by a
    # routing key its binding takes.
    routes = {
        spec.bindings[0].replace("#", "x.y"): topology.queue(spec.name) for spec in topology.queues
    }
    assert len(set(routes.values())) == len(topology.queues)
    assert topology.queue(SEND_TEXT_QUEUE) in routes.values()
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
