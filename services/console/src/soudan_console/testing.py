"""Helpers of the console's tests (kept in the package so test modules can import them)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aio_pika
from argon2 import PasswordHasher
from soudan_shared.contracts import Fact, SendText, new_id, utcnow
from soudan_shared.records import CASES, MESSAGES, USERS, Case, StoredMessage, User
from soudan_shared.store import Store
from soudan_shared.testing.waiting import wait_until
from soudan_shared.topology import SEND_TEXT_QUEUE, Topology

from soudan_console.core import Console
from soudan_console.domain import STAFF, Staff
from soudan_console.security import use_hasher
from soudan_console.settings import ConsoleSettings
from soudan_console.staff import create_staff
from soudan_console.web import CONSOLE

PASSWORD = "sakura-tsuki-hoshi-42"  # noqa: S105 - test accounts only
CHROMIUM = "/usr/bin/chromium"  # Debian's; `playwright install` cannot run here
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--lang=ja-JP",
]


def use_cheap_password_hashing() -> None:
    """argon2id still, with small parameters: the production ones cost ~0.3 s a hash here."""
    use_hasher(PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1))


@asynccontextmanager
async def launched_chromium() -> AsyncIterator[Any]:
    """Headless Chromium driven by Playwright, closed at the end of the block."""
    if not Path(CHROMIUM).exists():  # noqa: ASYNC240 - once per browser
        raise RuntimeError(f"{CHROMIUM} is missing: apt-get install chromium")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class RunningConsole:
    url: str
    app: Any
    store: Store
    settings: ConsoleSettings
    facts: list[Fact] = field(default_factory=list)

    @property
    def console(self) -> Console:
        return self.app[CONSOLE]  # type: ignore[no-any-return]

    async def add_staff(
        self, role: str, *, email: str | None = None, name: str | None = None, **fields: Any
    ) -> Staff:
        staff = await create_staff(
            self.console,
            email=email or f"{role}-{new_id()[:6]}@example.jp",
            name=name or f"{role}さん",
            role=role,
            password=PASSWORD,
            by="test",
            must_change=False,
        )
        if fields:
            await self.store.db[STAFF].update_one({"_id": staff.id}, {"$set": fields})
        return staff

    def facts_of(self, type: str) -> list[Fact]:
        return [f for f in self.facts if f.type == type]

    async def wait_fact(self, fact_type: str, /, **data: Any) -> Fact:
        def match() -> Fact | None:
            for fact in self.facts_of(fact_type):
                if all(fact.data.get(k) == v for k, v in data.items()):
                    return fact
            return None

        found: Fact = await wait_until(match, timeout=10, message=f"fact {fact_type} {data}")
        return found


async def seed_case(
    store: Store,
    *,
    urgent: bool = False,
    keywords: tuple[str, ...] = (),
    texts: tuple[str, ...] = ("こんばんは。相談したいことがあります。",),
    waited: timedelta = timedelta(minutes=1),
    user_id: str | None = None,
    school_type: str | None = "public_junior_high",
    out_of_scope: bool = False,
    state: str = "waiting",
    **fields: Any,
) -> Case:
    now = utcnow()
    user_id = user_id or "U" + new_id()
    if await store.db[USERS].find_one({"_id": user_id}) is None:
        user = User.model_validate(
            {
                "_id": user_id,
                "followed_at": now - timedelta(days=3),
                "school_type": school_type,
                "eligible": not out_of_scope,
            }
        )
        await store.db[USERS].insert_one(user.to_document())
    case = Case.model_validate(
        {
            "user_id": user_id,
            "state": state,
            "urgent": urgent,
            "keywords": list(keywords),
            "out_of_scope": out_of_scope,
            "school_type": school_type,
            "opened_at": now - waited,
            "waiting_since": now - waited,
            "last_message_at": now - waited,
            "flagged_urgent_at": now - waited if urgent else None,
            **fields,
        }
    )
    await store.db[CASES].insert_one(case.to_document())
    for i, text in enumerate(texts):
        message = StoredMessage.model_validate(
            {
                "_id": f"line:{new_id()}",
                "case_id": case.id,
                "user_id": user_id,
                "direction": "in",
                "text": text,
                "at": now - waited + timedelta(seconds=i),
            }
        )
        await store.db[MESSAGES].insert_one(message.to_document())
    return case


async def login(page: Any, url: str, email: str, password: str = PASSWORD) -> None:
    await page.goto(f"{url}/login")
    await page.fill("input[name=email]", email)
    await page.fill("input[name=password]", password)
    await page.click("button.primary")
    await page.wait_for_load_state()


def path_of(page: Any) -> str:
    return re.sub(r"^https?://[^/]+", "", page.url)


class _FormFields(HTMLParser):
    def __init__(self, form_id: str) -> None:
        super().__init__()
        self.form_id = form_id
        self.inside = False
        self.fields: dict[str, str] = {}
        self._select: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.inside = a.get("id") == self.form_id
        if not self.inside or "name" not in a:
            if tag == "option" and self._select and "selected" in a:
                self.fields[self._select] = a.get("value", "")
            return
        kind = a.get("type", "text")
        if tag == "input" and kind not in ("checkbox", "radio", "submit", "button"):
            self.fields[a["name"]] = a.get("value", "")
        elif tag == "input" and kind in ("checkbox", "radio") and "checked" in a:
            self.fields[a["name"]] = a.get("value", "on")
        elif tag == "select":
            self._select = a["name"]

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self.inside = False
        if tag == "select":
            self._select = None


def form_fields(html: str, form_id: str) -> dict[str, str]:
    """What a browser would send from the form ``form_id`` of ``html`` as it is shown (inputs,
    ticked boxes, the selected option; no submit button)."""
    parser = _FormFields(form_id)
    parser.feed(html)
    return parser.fields


CSRF = re.compile(r'data-csrf="([^"]*)"')
REPLY_FORM_ID = re.compile(r'name="command_id" value="([^"]+)"')


def reply_form_id(page: str) -> str:
    """The id of the reply form on a case page (bound by the console to the case and the staff
    member: the id a reply posts as ``command_id``)."""
    match = REPLY_FORM_ID.search(page)
    assert match is not None, "no reply form on the page"
    return match.group(1)


class Browserless:
    """A staff member's session driven over plain HTTP (aiohttp), for tests without a browser."""

    def __init__(self, url: str) -> None:
        import aiohttp

        self.url = url
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.csrf = ""

    async def close(self) -> None:
        await self.http.close()

    async def get(self, path: str, **kw: Any) -> tuple[int, str, str]:
        async with self.http.get(self.url + path, **kw) as response:
            text = await response.text()
            found = CSRF.search(text)
            if found and found.group(1):
                self.csrf = found.group(1)
            return response.status, response.url.path_qs, text

    async def post(self, path: str, data: dict[str, Any] | None = None) -> tuple[int, str, str]:
        """POST a form; a list value is sent as that field repeated (ticked checkboxes)."""
        fields = {"csrf_token": self.csrf, **(data or {})}
        form = [
            (name, item)
            for name, value in fields.items()
            for item in (value if isinstance(value, list) else [value])
        ]
        async with self.http.post(self.url + path, data=form) as response:
            text = await response.text()
            found = CSRF.search(text)
            if found and found.group(1):
                self.csrf = found.group(1)
            return response.status, response.url.path_qs, text

    async def login(self, email: str, password: str = PASSWORD) -> tuple[int, str, str]:
        await self.get("/login")
        return await self.post("/login", {"email": email, "password": password})


async def queued_send_texts(rabbitmq_url: str, topology: Topology) -> list[SendText]:
    """What the console asked dispatch to send, taken off the send-text queue."""
    connection = await aio_pika.connect(rabbitmq_url)
    found = []
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(topology.queue(SEND_TEXT_QUEUE))
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            found.append(SendText.model_validate_json(message.body))
    return found
