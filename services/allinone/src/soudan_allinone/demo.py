"""``soudan-demo``: the whole service on one machine, a scripted conversation, then the console.

Runs without Docker: the five services in this process (as ``soudan-all``), a SecantusDB child
process as the store (its data in ``SOUDAN_DATA_DIR``, default ~/.local/share/soudan/demo, kept
across restarts, printed at start; ``--fresh`` starts it empty; ``MONGODB_URL=memory://`` uses the
in-process store instead, lost at exit), the fake LINE platform of ``tools/fakeline`` and the
RabbitMQ at ``RABBITMQ_URL`` (default ``amqp://guest:guest@127.0.0.1:5672/``, namespace
``BUS_NAMESPACE``, default ``demo``). Then one student, through signed webhooks of the fake:

1. adds the account (the greeting, the policy and the school-type question come back);
2. answers the school-type question (the acknowledgement);
3. writes while the service is closed (the out-of-hours reply naming the next opening);
4. writes something urgent, still closed (the reply with the 24-hour help lines);
5. the demo admin signs in to the console over HTTP and opens the service for today (the hours
   section, saved through the console's own settings form; triage picks it up at once from the
   ``settings.changed`` fact);
6. the student writes again, now in hours (a case for the counselors, no automatic answer);
7. the demo counselor signs in and takes the next case of the queue: the case page opens and the
   student's messages show 既読 at the fake platform; the counselor starts writing (the page's
   typing call, as ``typing.js`` makes it) and the student's chat shows LINE's loading animation
   ("入力中…"); the answer, sent through the case page's reply form (CSRF token and all),
   reaches the student and ends the animation;
8. the counselor closes the case through the case page's close form (two categories, 学年, the
   rest left 不明), and triage's timers send the student the check-in question
   (``messages.yaml`` → ``checkin``) with its answers as buttons;
9. the student taps the first answer (the check-in's thanks comes back).

How "closed, then open" is made: the demo runs with a copy of the configuration directory
(``SOUDAN_CONFIG_DIR``, default ``deploy/config``) in a temporary directory, whose ``hours.yaml``
has a special day closing today (Asia/Tokyo). In step 5 the admin gives that special day the hours
00:00-23:59 in the console's hours form and saves, exactly as a person would. Nothing fakes a clock.
The copy also has no check-in quiet hours (so the check-in of step 8 goes at any time of day, the
transcript says so) and triage sweeps its timers every second (``TRIAGE_TIMERS_INTERVAL``).

Run again on kept data, the demo starts the same way: a new student each run, the console's
stored hours edit of the earlier run removed before the services start (so today is closed again),
the demo accounts kept as they were (their printed passwords, unless someone changed them in the
console). The earlier runs' conversations stay in the console.

The transcript (what the student sent, what the student received) is printed, then the
console's address and the demo sign-ins; the services keep running until Ctrl-C so a person can
look around. ``--once`` exits after the transcript (tests). The demo accounts are made with the
console's own :func:`~soudan_console.staff.create_staff`, without the forced password change of
an account an admin creates, since their passwords are printed here anyway. Demo only: it never
runs on a real store (a ``mongodb://`` ``MONGODB_URL`` is refused).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import yaml
from aiohttp import web
from soudan_console.domain import STAFF
from soudan_console.staff import create_staff
from soudan_console.web import CONSOLE
from soudan_fakeline import FakeLineServer, free_port, new_user_id, running_fakeline
from soudan_shared.config_store import delete_override
from soudan_shared.contracts import utcnow
from soudan_shared.runtime import run_async, setup_logging, start_site
from soudan_shared.settings import load_settings
from soudan_shared.store import MEMORY_URL, is_memory_url, open_store
from soudan_triage.app import TRIAGE
from soudan_triage.hours import Hours

from soudan_allinone.main import SERVICES, development_store

TOKYO = ZoneInfo("Asia/Tokyo")
DEFAULT_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_PORTS = {
    "ingress": 8080,
    "console": 8081,
    "triage": 8082,
    "dispatch": 8083,
    "reporting": 8084,
}
CHANNEL_SECRET = "demo-channel-secret"  # noqa: S105 - the fake LINE platform's, demo only
ACCESS_TOKEN = "demo-channel-access-token"  # noqa: S105 - the fake LINE platform's, demo only


@dataclass(frozen=True)
class Account:
    email: str
    password: str
    name: str
    role: str


# Printed at the end for a person to sign in with; they exist only in the demo's own store.
COUNSELOR = Account(
    "counselor@demo.soudan.example", "demo-counselor-pass", "相談員デモ", "counselor"
)
ADMIN = Account("admin@demo.soudan.example", "demo-admin-password", "管理者デモ", "admin")

FIRST_TEXT = "こんにちは。ちょっと聞いてほしいことがあります。"
URGENT_TEXT = "もう死にたいです。"
IN_HOURS_TEXT = "いま話せますか。友だちとうまくいかなくて、つらいです。"
COUNSELOR_REPLY = (
    "メッセージを送ってくれてありがとう。相談員です。"
    "つらい気持ちを、ここで少しずつ話してくれたらうれしいです。"
    "あなたのペースでだいじょうぶですよ。"
)


#: what the demo counselor records at the close (categories.yaml keys)
CLOSE_FORM: dict[str, str | list[str]] = {
    "categories": ["friendships", "school_life"],
    "outcome": "resolved",
    "grade": "jh2",
    "gender": "",
}

READ_NOTE = "生徒のメッセージに「既読」がつきました（相談員が読みました）"
CLOSE_NOTE = (
    "相談員が相談を終えました（分類・学年を記録）。終わったあとの問いかけが届きます"
    "（デモ用の設定で、寝ている時間にも送ります）"
)
TYPING_NOTE = "生徒のトークに「入力中…」が出ています（相談員が返信を書いています）"


class DemoError(RuntimeError):
    """A step of the scripted conversation did not happen."""


@dataclass
class Transcript:
    lines: list[tuple[str, str]] = field(default_factory=list)

    def sent(self, text: str) -> None:
        self.lines.append(("生徒 →", text))

    def received(self, texts: list[str]) -> None:
        self.lines.extend(("生徒 ←", text) for text in texts)

    def note(self, text: str) -> None:
        self.lines.append(("", text))

    def render(self) -> str:
        out: list[str] = []
        for who, text in self.lines:
            if not who:
                out.append(f"  〔{text}〕")
                continue
            first, *rest = text.split("\n")
            out.append(f"  {who}  {first}")
            out.extend((" " * 10 + line).rstrip() for line in rest)
        return "\n".join(out)


# -- configuration --------------------------------------------------------------------------------


def source_config_dir() -> Path:
    configured = os.environ.get("SOUDAN_CONFIG_DIR")
    if configured:
        return Path(configured)
    local = Path("deploy/config")
    if local.is_dir():
        return local
    return Path(__file__).resolve().parents[4] / "deploy" / "config"


def closed_today(hours: dict[str, Any]) -> dict[str, Any]:
    """``hours`` (the hours.yaml mapping) with today (Asia/Tokyo) a special day without hours."""
    today = datetime.now(TOKYO).date().isoformat()
    overrides = [o for o in hours.get("overrides") or [] if str(o.get("date")) != today]
    overrides.append({"date": today, "sessions": [], "note": "デモ: 今日は休み"})
    return {**hours, "overrides": overrides}


OPEN_ALL_DAY = {"open": "00:00", "last": "23:58", "close": "23:59"}  # as the form's fields


def prepare_config(target: Path) -> None:
    """Copy the configuration into ``target`` with today closed (a special day without hours)."""
    source = source_config_dir()
    for path in source.glob("*.yaml"):
        shutil.copyfile(path, target / path.name)
    hours = yaml.safe_load((source / "hours.yaml").read_text(encoding="utf-8"))
    closed = closed_today(hours)
    (target / "hours.yaml").write_text(
        yaml.safe_dump(closed, allow_unicode=True, sort_keys=False), encoding="utf-8"
    )
    messages = yaml.safe_load((source / "messages.yaml").read_text(encoding="utf-8"))
    (target / "messages.yaml").write_text(
        yaml.safe_dump(without_quiet_hours(messages), allow_unicode=True, sort_keys=False),
        encoding="utf-8",
    )


def without_quiet_hours(messages: dict[str, Any]) -> dict[str, Any]:
    """``messages`` (the messages.yaml mapping) with the check-in's quiet hours empty (start
    equal to end), so the demo's close gets its check-in whatever the time of day."""
    checkin = {**(messages.get("checkin") or {}), "quiet_hours": {"start": "00:00", "end": "00:00"}}
    return {**messages, "checkin": checkin}


def demo_environment(config_dir: Path, ports: dict[str, int], mongodb_url: str) -> dict[str, str]:
    env = {
        "MONGODB_URL": mongodb_url,
        "BUS_NAMESPACE": os.environ.get("BUS_NAMESPACE", "demo"),
        "RABBITMQ_URL": os.environ.get("RABBITMQ_URL", DEFAULT_RABBITMQ_URL),
        "LOG_HASH_KEY": secrets.token_hex(16),
        "LOG_LEVEL": os.environ.get("LOG_LEVEL", "WARNING"),
        "LINE_CHANNEL_SECRET": CHANNEL_SECRET,
        "LINE_CHANNEL_ACCESS_TOKEN": ACCESS_TOKEN,
        "SOUDAN_CONFIG_DIR": str(config_dir),
        "CONSOLE_DEVELOPMENT": "true",  # plain http on localhost: no Secure flag on the cookie
        "CONSOLE_SESSION_SECRET": secrets.token_hex(32),
        "BROADCAST_SCHEDULE": "false",
        "TRIAGE_TIMERS_INTERVAL": "1",  # the check-in after the close comes within a second
    }
    env.update({f"{name.upper()}_PORT": str(port) for name, port in ports.items()})
    return env


# -- the services ---------------------------------------------------------------------------------


@dataclass
class Stack:
    runners: list[web.AppRunner]
    apps: dict[str, web.Application]


async def start_services(host: str) -> Stack:
    loaded = [(e, load_settings(e.settings_class, "soudan-demo")) for e in SERVICES]
    setup_logging(loaded[0][1], "demo")
    stack = Stack([], {})
    try:
        for entry, settings in loaded:
            app = entry.create_app(settings)
            stack.runners.append(await start_site(app, getattr(settings, entry.port_field), host))
            stack.apps[entry.name] = app
    except BaseException:
        await stop_services(stack)
        raise
    return stack


async def stop_services(stack: Stack) -> None:
    for runner in reversed(stack.runners):
        with contextlib.suppress(Exception):
            await runner.cleanup()


async def wait_for(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise DemoError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def ready(base_urls: list[str]) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as http:

        async def all_ready() -> bool:
            for base in base_urls:
                try:
                    async with http.get(f"{base}/readyz") as response:
                        if response.status != 200:
                            return False
                except aiohttp.ClientError:
                    return False
            return True

        await wait_for(all_ready, "the services to be ready", timeout=30)


async def create_accounts(stack: Stack) -> None:
    console = stack.apps["console"][CONSOLE]
    await console.bus.wait_started(15)
    for account in (ADMIN, COUNSELOR):
        if await console.db[STAFF].count_documents({"email": account.email}):
            continue  # made by an earlier run on the same data
        await create_staff(
            console,
            email=account.email,
            name=account.name,
            role=account.role,
            password=account.password,
            by="demo",
            must_change=False,
        )


# -- the console over HTTP ------------------------------------------------------------------------

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
COMMAND_ID = re.compile(r'name="command_id" value="([^"]+)"')


def _field(pattern: re.Pattern[str], html: str, what: str) -> str:
    found = pattern.search(html)
    if found is None:
        raise DemoError(f"no {what} on the console page")
    return found.group(1)


class ConsoleClient:
    """A person at the console: signs in, follows redirects, sends forms with the CSRF token."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.http = aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True),  # cookies for 127.0.0.1
            timeout=aiohttp.ClientTimeout(total=15),
        )

    async def close(self) -> None:
        await self.http.close()

    async def page(self, path: str) -> tuple[str, str]:
        async with self.http.get(self.base + path) as response:
            if response.status != 200:
                raise DemoError(f"console GET {path} answered {response.status}")
            return response.url.path, await response.text()

    async def post(self, path: str, html: str, data: dict[str, str | list[str]]) -> tuple[str, str]:
        """POST a form with the page's CSRF token; a list is the field repeated (checkboxes)."""
        fields = {"csrf_token": _field(CSRF, html, "CSRF token"), **data}
        form = [
            (name, item)
            for name, value in fields.items()
            for item in (value if isinstance(value, list) else [value])
        ]
        async with self.http.post(self.base + path, data=form) as response:
            if response.status != 200:
                raise DemoError(f"console POST {path} answered {response.status}")
            return response.url.path, await response.text()

    async def sign_in(self, account: Account) -> str:
        _, form = await self.page("/login")
        path, html = await self.post(
            "/login", form, {"email": account.email, "password": account.password}
        )
        if path in ("/login", "/password"):
            raise DemoError(f"the demo {account.role} could not sign in (landed on {path})")
        return html


class FormFields(HTMLParser):
    """What a browser would send from the page's form ``form_id``: text and time inputs,
    ticked boxes, the selected options."""

    def __init__(self, form_id: str) -> None:
        super().__init__()
        self.form_id = form_id
        self.inside = False
        self.select: str | None = None
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.inside = a.get("id") == self.form_id
        if not self.inside or ("name" not in a and tag != "option"):
            return
        if tag == "input" and a.get("type") not in ("checkbox", "submit", "button"):
            self.fields[a["name"]] = a.get("value", "")
        elif tag == "input" and a.get("type") == "checkbox" and "checked" in a:
            self.fields[a["name"]] = a.get("value", "on")
        elif tag == "select":
            self.select = a["name"]
        elif tag == "option" and self.select is not None and "selected" in a:
            self.fields[self.select] = a.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self.inside = False
        elif tag == "select":
            self.select = None


async def open_today(base: str) -> None:
    """As the demo admin: in the console's hours form, give today's special day (closed, from
    the demo's hours.yaml) the hours 00:00-23:59, and save."""
    admin = ConsoleClient(base)
    try:
        await admin.sign_in(ADMIN)
        _, html = await admin.page("/admin/settings/hours")
        parser = FormFields("hours-form")
        parser.feed(html)
        fields = parser.fields
        today = datetime.now(TOKYO).date().isoformat()
        dates = [k for k, v in fields.items() if k.endswith("-date") and v == today]
        row = dates[0].removesuffix("-date") if dates else None
        if row is None or f"{row}-0-open" not in fields:
            raise DemoError("today is not among the special days of the console's hours form")
        fields |= {f"{row}-0-{key}": clock for key, clock in OPEN_ALL_DAY.items()}
        fields[f"{row}-note"] = "デモ: 今日は受付中"
        fields.pop("csrf_token", None)
        path, saved = await admin.post("/admin/settings/hours", html, {**fields, "action": "save"})
        if path != "/admin/settings/hours" or "bad-input" in saved:
            raise DemoError("the console did not save the hours")
    finally:
        await admin.close()


async def counselor_answers(
    base: str,
    text: str,
    *,
    read: Callable[[], Awaitable[None]],
    typing: Callable[[], Awaitable[None]],
    answered: Callable[[], Awaitable[None]],
) -> None:
    """As the demo counselor: take the next case of the queue (``read`` waits for the 既読 that
    opening it brings), start writing (``typing`` waits for the loading animation), answer
    (``answered`` waits for the answer at the student's) and close the case with
    :data:`CLOSE_FORM`."""
    counselor = ConsoleClient(base)
    try:
        queue = await counselor.sign_in(COUNSELOR)

        async def claimed() -> bool:
            nonlocal queue
            path, html = await counselor.post("/queue/next", queue, {})
            if path.startswith("/cases/"):
                queue = html
                return True
            queue = html
            return False

        await wait_for(claimed, "a case in the counselor's queue")
        action = re.search(r'action="(/cases/[^"/]+)/reply"', queue)
        if action is None:
            raise DemoError("no reply form on the case page")
        case_path = action.group(1)
        await read()
        # What the case page's typing.js sends on the first keys pressed in the reply box.
        headers = {"X-CSRF-Token": _field(CSRF, queue, "CSRF token")}
        async with counselor.http.post(f"{base}{case_path}/typing", headers=headers) as response:
            if response.status != 200:
                raise DemoError(f"console POST {case_path}/typing answered {response.status}")
        await typing()
        path, _ = await counselor.post(
            f"{case_path}/reply",
            queue,
            {"text": text, "command_id": _field(COMMAND_ID, queue, "command id")},
        )
        if not path.startswith("/cases/"):
            raise DemoError("the console did not take the counselor's reply")
        await answered()
        _, page = await counselor.page(case_path)
        if f'action="{case_path}/close"' not in page:
            raise DemoError("no close form on the case page")
        path, _ = await counselor.post(f"{case_path}/close", page, CLOSE_FORM)
        if not path.startswith("/queue"):
            raise DemoError("the console did not close the case")
    finally:
        await counselor.close()


# -- the student ----------------------------------------------------------------------------------


async def received_after(
    line: FakeLineServer, user_id: str, before: int, *, at_least: int = 1, settle: float = 0.5
) -> list[str]:
    """The texts ``user_id`` received after the first ``before``, once they stop coming."""

    async def arrived() -> bool:
        return len(line.fake.texts(user_id)) >= before + at_least

    await wait_for(arrived, "an answer at the fake LINE platform")
    count = -1
    while count != len(line.fake.texts(user_id)):  # a multi-message answer comes in one request
        count = len(line.fake.texts(user_id))
        await asyncio.sleep(settle)
    texts: list[str] = line.fake.texts(user_id)[before:]
    return texts


def school_type_choice(line: FakeLineServer, user_id: str) -> tuple[str, str]:
    """The postback data and label of a school-type button (a public junior high if offered)."""
    for delivery in reversed(line.fake.received(user_id)):
        items = (delivery.message.get("quickReply") or {}).get("items", [])
        actions = [i.get("action", {}) for i in items]
        choices = [a for a in actions if str(a.get("data", "")).startswith("school_type=")]
        choices.sort(key=lambda a: "public_junior_high" not in a["data"])
        if choices:
            action = choices[0]
            return str(action["data"]), str(action.get("label") or action["data"])
    raise DemoError("the greeting had no school-type question")


def checkin_choices(line: FakeLineServer, user_id: str) -> list[tuple[str, str]]:
    """The postback data and label of each check-in answer, from the last message offering
    them (the check-in question's quick replies)."""
    for delivery in reversed(line.fake.received(user_id)):
        items = (delivery.message.get("quickReply") or {}).get("items", [])
        actions = [i.get("action", {}) for i in items]
        choices = [a for a in actions if str(a.get("data", "")).startswith("checkin=")]
        if choices:
            return [(str(a["data"]), str(a.get("label") or a["data"])) for a in choices]
    raise DemoError("the check-in question came without its answers")


async def triage_sees_open(stack: Stack) -> None:
    """Wait until triage's configuration in force has the service accepting now.

    The console's save publishes ``settings.changed``, on which triage drops its cached
    configuration; this only waits for that to have happened (at worst the cache's ttl).
    """
    source = stack.apps["triage"][TRIAGE].config

    async def accepting() -> bool:
        status = Hours((await source.get()).hours).status(utcnow())
        return bool(status.accepting)

    await wait_for(accepting, "triage to see the new hours")


async def play(stack: Stack, line: FakeLineServer, webhook: str, console_url: str) -> Transcript:
    user = new_user_id()
    t = Transcript()

    async def say(text: str, send: Callable[[], Awaitable[Any]], *, answered: bool = True) -> None:
        before = len(line.fake.texts(user))
        t.sent(text)
        result = await send()
        if result.status != 200:
            raise DemoError(f"the webhook answered {result.status}")
        if answered:
            t.received(await received_after(line, user, before))

    t.note("いまは受付時間外です（デモ用の設定で、今日は休みにしています）")
    await say("（友だち追加）", lambda: line.webhook.follow(user, url=webhook))
    choice, label = school_type_choice(line, user)
    await say(f"（ボタン: {label}）", lambda: line.webhook.postback(user, choice, url=webhook))
    await say(FIRST_TEXT, lambda: line.webhook.text(user, FIRST_TEXT, url=webhook))
    await say(URGENT_TEXT, lambda: line.webhook.text(user, URGENT_TEXT, url=webhook))

    t.note("管理者がコンソールで今日の受付時間を設定しました（今日は受付中）")
    await open_today(console_url)
    await triage_sees_open(stack)
    await say(
        "（メニュー: 相談できる時間）",
        lambda: line.webhook.postback(user, "menu=hours", url=webhook),
    )
    await say(
        IN_HOURS_TEXT, lambda: line.webhook.text(user, IN_HOURS_TEXT, url=webhook), answered=False
    )
    t.note("相談員がコンソールにログインして、相談を担当し、返信します")
    before = len(line.fake.texts(user))

    async def read() -> None:
        async def all_read() -> bool:
            sent = line.fake.sent_by(user)
            return bool(sent) and all(m.read_at is not None for m in sent)

        await wait_for(all_read, "既読 at the fake LINE platform")
        t.note(READ_NOTE)

    async def typing() -> None:
        async def shown() -> bool:
            return line.fake.loading_shown(user)

        await wait_for(shown, "the loading animation at the fake LINE platform")
        t.note(TYPING_NOTE)

    async def answered() -> None:
        nonlocal before
        t.received(await received_after(line, user, before))
        before = len(line.fake.texts(user))

    await counselor_answers(
        console_url, COUNSELOR_REPLY, read=read, typing=typing, answered=answered
    )
    t.note(CLOSE_NOTE)
    t.received(await received_after(line, user, before))
    choices = checkin_choices(line, user)
    t.note("ボタン: " + " / ".join(label for _, label in choices))
    data, label = choices[0]
    await say(f"（ボタン: {label}）", lambda: line.webhook.postback(user, data, url=webhook))
    return t


# -- main -----------------------------------------------------------------------------------------


def signin_help(console_url: str) -> str:
    return "\n".join(
        [
            f"コンソール: {console_url}/login",
            f"  相談員   {COUNSELOR.email} / {COUNSELOR.password}",
            f"  管理者   {ADMIN.email} / {ADMIN.password}",
        ]
    )


async def forget_the_earlier_runs_hours(mongodb_url: str) -> None:
    """An earlier run on kept data opened today in the console: take that edit back, so the
    service starts closed as the script expects."""
    store = await open_store(mongodb_url)
    try:
        await delete_override(store.db, "hours")
    finally:
        await store.close()


async def run(*, once: bool, host: str, free_ports: bool, mongodb_url: str) -> int:
    ports = {name: free_port() if free_ports else port for name, port in DEFAULT_PORTS.items()}
    with tempfile.TemporaryDirectory(prefix="soudan-demo-") as tmp:
        prepare_config(Path(tmp))
        os.environ.update(demo_environment(Path(tmp), ports, mongodb_url))
        await forget_the_earlier_runs_hours(mongodb_url)
        local = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104
        console_url = f"http://{local}:{ports['console']}"
        async with running_fakeline(CHANNEL_SECRET, [ACCESS_TOKEN]) as line:
            os.environ["LINE_API_BASE_URL"] = line.url
            stack = await start_services(host)
            try:
                await ready([f"http://{local}:{port}" for port in ports.values()])
                await create_accounts(stack)
                transcript = await play(
                    stack, line, f"http://{local}:{ports['ingress']}/webhook", console_url
                )
                print("\n=== デモの会話（生徒のLINE） ===")
                print(transcript.render())
                print()
                print(signin_help(console_url))
                sys.stdout.flush()
                if not once:
                    print(
                        "もう一人の生徒を試すには（別の端末で）:\n"
                        f"  .venv/bin/soudan-fakeline simulate --line {line.url} "
                        f"--webhook http://{local}:{ports['ingress']}/webhook"
                    )
                    print("Ctrl-C で終了します。")
                    sys.stdout.flush()
                    stop = asyncio.Event()
                    loop = asyncio.get_running_loop()
                    for sig in (signal.SIGINT, signal.SIGTERM):
                        loop.add_signal_handler(sig, stop.set)
                    await stop.wait()
            finally:
                await stop_services(stack)
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="soudan-demo",
        description="Run Soudan on this machine with a fake LINE platform, play a scripted "
        "conversation, print it, and keep the console up until Ctrl-C.",
    )
    parser.add_argument("--once", action="store_true", help="exit after printing the transcript")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument(
        "--free-ports",
        action="store_true",
        help="listen on free ports instead of 8080-8084",
    )
    parser.add_argument(
        "--fresh", action="store_true", help="start the demo's SecantusDB data directory empty"
    )
    args = parser.parse_args(argv)
    url = os.environ.get("MONGODB_URL")
    if url and not is_memory_url(url):
        parser.error(
            "the demo makes accounts whose passwords it prints: it never runs on MONGODB_URL's "
            "database. Unset MONGODB_URL (a SecantusDB child process) or set it to memory://"
        )
    try:
        server = development_store("soudan-demo", fresh=args.fresh, name="demo")
    except RuntimeError as exc:
        parser.error(str(exc))
    url = f"{server.url}soudan" if server is not None else MEMORY_URL
    try:
        code = run_async(
            run(once=args.once, host=args.host, free_ports=args.free_ports, mongodb_url=url)
        )
    except DemoError as exc:
        sys.exit(f"soudan-demo: {exc}")
    except OSError as exc:
        sys.exit(f"soudan-demo: {exc} (is a port of 8080-8084 taken? try --free-ports)")
    except KeyboardInterrupt:
        code = 0
    finally:
        if server is not None:
            server.stop()
    raise SystemExit(code)
