"""The whole service under test: the five apps in the running loop, the fake LINE platform.

Used by ``services/allinone/tests`` (the end-to-end scenarios, and the fault scenarios' students
with their ledger); not by the service. Settings
come from the environment the caller set (bus namespace, database, LINE, SMTP); triage decides
with the fake platform's clock, so moving that clock (:meth:`Stack.at`) moves the service to an
open or a closed moment; ingress stamps events and dispatch measures reply tokens' age with the
same clock, so :meth:`Stack.later` ages a student's reply token without waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import shutil
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web
from soudan_console.app import create_app as create_console
from soudan_console.settings import ConsoleSettings
from soudan_console.testing import RunningConsole
from soudan_dispatch.app import create_app as create_dispatch
from soudan_dispatch.settings import DispatchSettings
from soudan_fakeline import FakeLineServer
from soudan_fakeline import create_app as create_fakeline
from soudan_fakeline.api import SENDER
from soudan_ingress.app import create_app as create_ingress
from soudan_ingress.settings import IngressSettings
from soudan_reporting.app import create_app as create_reporting
from soudan_reporting.recorder import EVENTS
from soudan_reporting.settings import ReportingSettings
from soudan_shared.config import load_config
from soudan_shared.records import CASES, MESSAGES, incoming_message_id
from soudan_shared.runtime import start_site
from soudan_shared.store import Store, open_store
from soudan_shared.testing.ledger import Ledger
from soudan_shared.testing.plugin import delete_topology, with_database
from soudan_shared.testing.proxy import free_port
from soudan_shared.testing.waiting import wait_until
from soudan_shared.topology import Topology
from soudan_triage.app import TRIAGE
from soudan_triage.app import create_app as create_triage
from soudan_triage.hours import Hours
from soudan_triage.settings import TriageSettings
from soudan_triage.store import EVENTS as TRIAGE_EVENTS
from soudan_triage.testing import SHIPPED_CONFIG

HOST = "127.0.0.1"


@dataclass
class Stack:
    line: FakeLineServer
    seen: SeenPaths
    store: Store
    console: RunningConsole
    webhook_url: str
    urls: dict[str, str]
    config_dir: Path
    inbox: Any
    reports_dir: Path
    hours: Hours
    reporting_settings: ReportingSettings
    apps: dict[str, web.Application] = field(default_factory=dict)
    runners: dict[str, web.AppRunner] = field(default_factory=dict)

    async def stop_service(self, name: str) -> None:
        """Shut service ``name``'s instance down (its app's cleanup), freeing its port."""
        await self.runners.pop(name).cleanup()

    async def start_service(
        self, name: str, app: web.Application, *, wait_ready: bool = True
    ) -> None:
        """Serve ``app`` as a new instance of service ``name`` on its port (ready, by default)."""
        url = self.urls[name]
        self.runners[name] = await start_site(app, urlsplit(url).port or 0, HOST)
        self.apps[name] = app
        if wait_ready:
            await wait_until(lambda: is_ready(url), timeout=30, message=f"{name} ready")

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.line.fake.now(), UTC)

    def at(self, moment: datetime) -> None:
        """Put the fake platform's clock (and with it triage's) at ``moment``."""
        self.line.fake.advance(moment.timestamp() - self.line.fake.now())

    def later(self, seconds: float) -> None:
        """Move the fake platform's clock (and the stack's) ``seconds`` on."""
        self.line.fake.advance(seconds)

    def open_moment(self) -> datetime:
        """A moment of the current month, as near to now as possible, when new cases are taken."""
        return self._find(datetime.now(UTC), accepting=True)

    def closed_moment(self) -> datetime:
        """The first closed moment after :meth:`open_moment` (cases left waiting then are newer
        than the in-hours ones, so they never make the in-hours scenarios look congested)."""
        return self._find(self.open_moment(), accepting=False, forward_first=True)

    def _find(self, start: datetime, *, accepting: bool, forward_first: bool = False) -> datetime:
        start = start.replace(minute=0, second=0, microsecond=0)
        back = [-h for h in range(1, 24 * 31)]
        ahead = list(range(1, 24 * 31))
        for hours in (ahead + back) if forward_first else (back + ahead):
            moment = start + timedelta(hours=hours, minutes=15)
            if (moment.year, moment.month) != (start.year, start.month):
                continue
            if self.hours.status(moment).accepting == accepting:
                return moment
        raise AssertionError(f"no {'open' if accepting else 'closed'} hour this month")

    async def facts(self, fact_type: str, **data: Any) -> list[dict[str, Any]]:
        """The recorded facts (``events``) of ``fact_type`` whose data has ``data``."""
        query: dict[str, Any] = {"type": fact_type}
        query.update({f"data.{k}": v for k, v in data.items()})
        return await self.store.db[EVENTS].find(query).to_list()

    async def wait_fact(self, fact_type: str, **data: Any) -> dict[str, Any]:
        return (await self.wait_facts(fact_type, 1, **data))[0]

    async def wait_facts(self, fact_type: str, count: int, **data: Any) -> list[dict[str, Any]]:
        """The recorded facts of ``fact_type`` with ``data`` once there are ``count`` of them
        (the recorder stores facts a moment after their effects are seen elsewhere); the
        caller asserts there are not more."""

        async def enough() -> list[dict[str, Any]] | None:
            facts = await self.facts(fact_type, **data)
            return facts if len(facts) >= count else None

        facts: list[dict[str, Any]] = await wait_until(
            enough, timeout=15, message=f"{count} fact(s) {fact_type} {data}"
        )
        return facts


async def is_ready(url: str) -> bool:
    """Whether the service at ``url`` answers 200 on /readyz."""
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{url}/readyz") as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


@dataclass(frozen=True)
class SeenPaths:
    """Every path the fake platform was asked for, answered or not (404s included)."""

    paths: list[str] = field(default_factory=list)


@contextlib.asynccontextmanager
async def running_fake_platform(
    secret: str, token: str
) -> AsyncIterator[tuple[FakeLineServer, SeenPaths]]:
    """The fake LINE platform on a free port, recording every request path it sees."""
    app, fake = create_fakeline(secret, [token])
    seen = SeenPaths()

    async def note(request: web.Request, _: web.StreamResponse) -> None:
        seen.paths.append(request.path)

    app.on_response_prepare.append(note)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, HOST, port).start()
    try:
        yield FakeLineServer(f"http://{HOST}:{port}", port, fake, app[SENDER]), seen
    finally:
        await runner.cleanup()


@dataclass(frozen=True)
class StackPlan:
    """What a test stack is started from: its own bus namespace, database and configuration."""

    topology: Topology
    database: str
    config_dir: Path
    reports_dir: Path
    env: dict[str, str]


def plan_stack(
    base: Path, *, rabbitmq_url: str, mongodb_url: str, smtp_port: int, secret: str, token: str
) -> StackPlan:
    """A fresh namespace and database, a copy of the shipped configuration under ``base``, and
    the environment the five services of the stack read their settings from."""
    topology = Topology(namespace=f"t{uuid.uuid4().hex[:10]}")
    database = f"t_{uuid.uuid4().hex[:12]}"
    config_dir = base / "config"
    shutil.copytree(SHIPPED_CONFIG, config_dir)
    reports_dir = base / "reports"
    env = {
        "RABBITMQ_URL": rabbitmq_url,
        "MONGODB_URL": with_database(mongodb_url, database),
        "BUS_NAMESPACE": topology.namespace,
        "LOG_HASH_KEY": "test-hash-key",
        "LINE_CHANNEL_SECRET": secret,
        "LINE_CHANNEL_ACCESS_TOKEN": token,
        "SOUDAN_CONFIG_DIR": str(config_dir),
        "SMTP_HOST": HOST,
        "SMTP_PORT": str(smtp_port),
        "SMTP_STARTTLS": "false",
        "EMERGENCY_RECIPIENTS": "section@example.jp",
        "REPORT_RECIPIENTS": "section@example.jp",
        "REPORTS_DIR": str(reports_dir),
    }
    return StackPlan(topology, database, config_dir, reports_dir, env)


@contextlib.asynccontextmanager
async def start_stack(
    line: FakeLineServer,
    seen: SeenPaths,
    store: Store,
    config_dir: Path,
    inbox: Any,
    base: Path,
) -> AsyncIterator[Stack]:
    """The five services on free ports, ready; stopped in reverse order on exit."""

    def clock() -> datetime:
        return datetime.fromtimestamp(line.fake.now(), UTC)

    reporting_settings = ReportingSettings()
    console_settings = ConsoleSettings(console_development=True)
    apps = {
        "ingress": create_ingress(IngressSettings(), clock=clock),
        "triage": create_triage(TriageSettings(), clock=clock),
        "dispatch": create_dispatch(
            DispatchSettings(
                broadcast_schedule=False,
                richmenu_auto=False,
                send_backoff_seconds=0.02,
                line_api_data_base_url=line.url,
            ),
            clock=clock,
        ),
        "console": create_console(console_settings, tick=0.5),
        "reporting": create_reporting(reporting_settings),
    }
    runners: dict[str, web.AppRunner] = {}
    urls: dict[str, str] = {}
    try:
        for name, app in apps.items():
            port = free_port()
            runners[name] = await start_site(app, port, HOST)
            urls[name] = f"http://{HOST}:{port}"
        for name, url in urls.items():
            await wait_until(lambda u=url: is_ready(u), timeout=30, message=f"{name} ready")
        console = RunningConsole(urls["console"], apps["console"], store, console_settings)
        yield Stack(
            line=line,
            seen=seen,
            store=store,
            console=console,
            webhook_url=f"{urls['ingress']}/webhook",
            urls=urls,
            config_dir=config_dir,
            inbox=inbox,
            reports_dir=base / "reports",
            hours=Hours(load_config(config_dir).hours),
            reporting_settings=reporting_settings,
            apps=apps,
            runners=runners,
        )
    finally:
        for runner in reversed(list(runners.values())):
            with contextlib.suppress(Exception):
                await runner.cleanup()


# -- the fault scenarios' stack and students (services/allinone/tests/test_*faults.py) --------


POLICY = "menu=policy"  # the postback asking for the policy text


@contextlib.asynccontextmanager
async def stack_on(
    base: Path,
    *,
    rabbitmq_url: str,
    services_rabbitmq_url: str,
    mongodb_url: str,
    smtp_inbox: tuple[Any, int],
    secret: str,
    token: str,
    line_timeout: float,
    env: dict[str, str] | None = None,
) -> AsyncIterator[tuple[Stack, Topology]]:
    """A stack of its own (namespace, database, configuration) with dispatch's LINE request
    timeout ``line_timeout``; the services reach the broker at ``services_rabbitmq_url`` (one
    address or several, comma-separated), with ``env`` added to their environment; the bus
    namespace is deleted afterwards through ``rabbitmq_url``."""
    inbox, smtp_port = smtp_inbox
    plan = plan_stack(
        base,
        rabbitmq_url=rabbitmq_url,
        mongodb_url=mongodb_url,
        smtp_port=smtp_port,
        secret=secret,
        token=token,
    )
    env = {**plan.env, **(env or {})}
    env["LINE_REQUEST_TIMEOUT"] = str(line_timeout)
    env["RABBITMQ_URL"] = services_rabbitmq_url
    store = await open_store(env["MONGODB_URL"], database=plan.database)
    with pytest.MonkeyPatch.context() as patch:  # the services read their settings from it
        for key, value in env.items():
            patch.setenv(key, value)
        try:
            async with running_fake_platform(secret, token) as (line, seen):
                patch.setenv("LINE_API_BASE_URL", line.url)
                async with start_stack(line, seen, store, plan.config_dir, inbox, base) as running:
                    yield running, plan.topology
        finally:
            with contextlib.suppress(Exception):
                await store.client.drop_database(plan.database)
            await store.close()
            await delete_topology(rabbitmq_url, plan.topology)


# -- LINE, as a sender of webhooks ---------------------------------------------------------


@dataclass
class Students:
    """Webhook events from a few students, posted like LINE posts them, with the ledger."""

    stack: Stack
    ledger: Ledger = field(default_factory=Ledger)
    give_up_after: float = 30.0  # seconds of 503s after which a request counts as never taken
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
        give_up = loop.time() + self.give_up_after
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
        return not await self.unsettled()

    async def unsettled(self) -> dict[str, Any]:
        """What is still missing (empty when settled): the confirmed events triage has not
        finished, by their state, the texts not stored, the policy answers not delivered."""
        confirmed = list(self.ledger.confirmed)
        states = {
            doc["_id"]: doc.get("state")
            async for doc in self.stack.store.db[TRIAGE_EVENTS].find(
                {"_id": {"$in": confirmed}}, {"state": 1}
            )
        }
        pending = Counter(states.get(e, "absent") for e in confirmed if states.get(e) != "done")
        if pending:
            return {"events_not_done": dict(pending)}
        wanted = [incoming_message_id(m) for m in self.texts.values()]
        stored = await self.stack.store.db[MESSAGES].count_documents({"_id": {"$in": wanted}})
        if stored < len(wanted):
            return {"texts_not_stored": len(wanted) - stored}
        short = {
            user: len(asks) - self.policy_deliveries(user)
            for user, asks in self.policy_asks.items()
            if self.policy_deliveries(user) < len(asks)
        }
        return {"policy_answers_missing": short} if short else {}

    async def wait_settled(self, timeout: float = 30) -> None:
        """Wait until settled; fail naming what is missing and the ledger so far."""
        try:
            await wait_until(self.settled, timeout=timeout, message="every confirmed event handled")
        except AssertionError as exc:
            missing = await self.unsettled()
            raise AssertionError(f"{exc}: {missing}; {self.ledger.summary()}") from None

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


async def send_student_events(
    students: Students, user: str, events: int, *, pause: float = 0.0
) -> None:
    """One student's events in requests of 1 to 3, one request at a time (``pause`` seconds
    between two); every fifth event asks for the policy (one reply each), the others are
    texts."""
    n = 0
    while n < events:
        batch = [
            students.ask_policy(user) if (n + i) % 5 == 4 else students.text(user, f"m{n + i}")
            for i in range(min(1 + n % 3, events - n))
        ]
        n += len(batch)
        await students.deliver(batch)
        if pause and n < events:
            await asyncio.sleep(pause)


async def check_every_event_once(students: Students, users: list[str]) -> None:
    await students.count_effects()
    print(students.ledger.summary(), dict(students.answers))
    students.assert_clean()
    await students.assert_once_per_user()
    for user in users:
        assert students.policy_deliveries(user) == len(students.policy_asks[user])
