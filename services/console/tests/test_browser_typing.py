"""既読 and "入力中…" from the case page, in headless Chromium against the console on the real
broker: what the console asks dispatch for (``MarkRead``, ``StartLoading``), taken off their
queues, and what it never asks for (reading is not typing)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any, TypeVar

import aio_pika
import pytest
from soudan_console.testing import Browserless, RunningConsole, login, seed_case
from soudan_shared.bus import Bus
from soudan_shared.contracts import Fact, MarkRead, Message, StartLoading, new_id, utcnow
from soudan_shared.records import MESSAGES, READ_TOKEN, Case
from soudan_shared.testing.waiting import wait_until
from soudan_shared.topology import LOADING_QUEUE, MARK_READ_QUEUE, Topology

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

M = TypeVar("M", bound=Message)


class Queued:
    """The commands the console put on one of dispatch's queues (taken off as they come)."""

    def __init__(self, rabbitmq_url: str, topology: Topology, name: str, model: type[M]) -> None:
        self.url = rabbitmq_url
        self.queue = topology.queue(name)
        self.model = model
        self.taken: list[Any] = []

    async def take(self) -> list[Any]:
        connection = await aio_pika.connect(self.url)
        async with connection:
            channel = await connection.channel()
            queue = await channel.get_queue(self.queue)
            while (message := await queue.get(no_ack=True, fail=False)) is not None:
                self.taken.append(self.model.model_validate_json(message.body))
        return self.taken

    async def wait(self, n: int) -> list[Any]:
        async def enough() -> bool:
            return len(await self.take()) >= n

        await wait_until(enough, timeout=15, message=f"{n} command(s) on {self.queue}")
        return self.taken


async def _incoming(running: RunningConsole, case: Case, text: str, token: str) -> str:
    """A new message of the student, as triage keeps it (with its read token)."""
    message_id = f"line:{new_id()}"
    await running.store.db[MESSAGES].insert_one(
        {
            "_id": message_id,
            "case_id": case.id,
            "user_id": case.user_id,
            "direction": "in",
            "kind": "text",
            "text": text,
            "at": utcnow(),
            READ_TOKEN: token,
        }
    )
    return message_id


async def _with_tokens(running: RunningConsole, case: Case) -> list[str]:
    docs = await running.store.db[MESSAGES].find({"case_id": case.id}).sort("at", 1).to_list()
    for n, doc in enumerate(docs):
        await running.store.db[MESSAGES].update_one(
            {"_id": doc["_id"]}, {"$set": {READ_TOKEN: f"read-token-{n}"}}
        )
    return [d["_id"] for d in docs]


async def test_typing_in_the_reply_box_starts_the_typing_indicator_at_most_every_few_seconds(
    running: RunningConsole, new_page: Any, rabbitmq_url: str, topology: Topology
) -> None:
    counselor = await running.add_staff("counselor")
    case = await seed_case(
        running.store, state="active", claimed_by=counselor.id, texts=("きいて", "つらい")
    )
    await _with_tokens(running, case)
    loading = Queued(rabbitmq_url, topology, LOADING_QUEUE, StartLoading)
    page = await new_page()
    typed: list[str] = []
    page.on("request", lambda r: typed.append(r.url) if r.url.endswith("/typing") else None)
    await login(page, running.url, counselor.email)
    await page.goto(f"{running.url}/cases/{case.id}")

    # Reading, scrolling, clicking into the box: no indicator.
    await page.mouse.wheel(0, 400)
    await page.click("#text-0")
    await page.click("#messages")
    await asyncio.sleep(1.5)
    assert await loading.take() == []
    assert typed == []

    # Typing for about three seconds: one start, however many keys.
    await page.click("#text-0")
    await page.keyboard.type("いまの気持ちを、ゆっくりでいいので教えてください。", delay=100)
    (started,) = await loading.wait(1)
    assert len(typed) == 1
    assert (started.user_id, started.case_id, started.staff_id) == (
        case.user_id,
        case.id,
        counselor.id,
    )
    assert started.seconds == 10
    assert utcnow() - started.requested_at < timedelta(seconds=10)

    # Still typing after the renewal interval: renewed, once.
    await asyncio.sleep(5)
    await page.keyboard.type("まってるね", delay=50)
    await loading.wait(2)
    await asyncio.sleep(0.5)
    assert len(await loading.take()) == 2
    assert len(typed) == 2


async def test_opening_a_case_marks_its_newest_message_read_and_a_new_one_once_it_is_shown(
    running: RunningConsole,
    new_page: Any,
    rabbitmq_url: str,
    topology: Topology,
    fact_bus: Bus,
) -> None:
    counselor = await running.add_staff("counselor")
    case = await seed_case(
        running.store, state="active", claimed_by=counselor.id, texts=("一つ目", "二つ目")
    )
    _, newest = await _with_tokens(running, case)
    marks = Queued(rabbitmq_url, topology, MARK_READ_QUEUE, MarkRead)
    loading = Queued(rabbitmq_url, topology, LOADING_QUEUE, StartLoading)
    page = await new_page()
    await login(page, running.url, counselor.email)
    await page.goto(f"{running.url}/cases/{case.id}")
    await page.wait_for_selector("body[data-live-state=open]")

    (opened,) = await marks.wait(1)
    assert (opened.message_id, opened.token, opened.user_id) == (
        newest,
        "read-token-1",
        case.user_id,
    )
    assert opened.staff_id == counselor.id

    # The page is out of view when the student writes again: not read yet.
    await page.evaluate(
        """() => {
          Object.defineProperty(document, "visibilityState", {get: () => "hidden",
                                                              configurable: true});
          document.dispatchEvent(new Event("visibilitychange"));
        }"""
    )
    later = await _incoming(running, case, "三つ目", "read-token-2")
    await fact_bus.publish(
        Fact(
            type="message.received",
            service="triage",
            data={"case_id": case.id, "user_id": case.user_id, "message_id": later},
        )
    )

    async def shown_on_the_page() -> bool:
        return bool(await page.locator(".msg.in .bubble").last.inner_text() == "三つ目")

    await wait_until(shown_on_the_page, timeout=15, message="the new message on the page")
    await asyncio.sleep(1)
    assert len(await marks.take()) == 1

    # Back in view: now it is read.
    await page.evaluate(
        """() => {
          Object.defineProperty(document, "visibilityState", {get: () => "visible",
                                                              configurable: true});
          document.dispatchEvent(new Event("visibilitychange"));
        }"""
    )
    _, shown = await marks.wait(2)
    assert (shown.message_id, shown.token) == (later, "read-token-2")
    assert await loading.take() == []  # reading is not typing


async def test_only_whoever_may_reply_starts_the_indicator_and_only_with_the_csrf_token(
    running: RunningConsole, client: Any, rabbitmq_url: str, topology: Topology
) -> None:
    owner = await running.add_staff("counselor")
    other = await running.add_staff("counselor")
    case = await seed_case(running.store, state="active", claimed_by=owner.id)
    waiting = await seed_case(running.store)
    loading = Queued(rabbitmq_url, topology, LOADING_QUEUE, StartLoading)

    stranger: Browserless = client()
    await stranger.login(other.email)
    await stranger.get("/queue")
    assert (await stranger.post(f"/cases/{case.id}/typing"))[0] == 403
    assert (await stranger.post(f"/cases/{waiting.id}/typing"))[0] == 409

    mine: Browserless = client()
    await mine.login(owner.email)
    await mine.get("/queue")
    async with mine.http.post(f"{mine.url}/cases/{case.id}/typing") as response:
        assert response.status == 403  # no CSRF token
    status, _, body = await mine.post(f"/cases/{case.id}/typing")
    assert (status, body) == (200, '{"started": true}')
    status, _, body = await mine.post(f"/cases/{case.id}/typing")  # at once again: not renewed
    assert (status, body) == (200, '{"started": false, "reason": "recent"}')
    (started,) = await loading.wait(1)
    assert started.user_id == case.user_id
    await asyncio.sleep(0.5)
    assert len(await loading.take()) == 1
