"""``make screenshots``: PNGs of the console for the README (queue, conversation, emergency).

Runs the console in this process on the real broker (``RABBITMQ_URL``, default the local
guest account) with the in-process store, seeds a small evening of made-up consultations and
photographs the pages in Debian's headless Chromium. Needs ``chromium`` and a Japanese font
(``fonts-noto-cjk``).
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from datetime import timedelta
from pathlib import Path

from soudan_shared.testing.proxy import free_port

OUT = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshots")
NAMESPACE = f"shots{uuid.uuid4().hex[:8]}"
SMTP_PORT = free_port()
os.environ.setdefault("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
os.environ.update(
    MONGODB_URL="memory:///screenshots",
    BUS_NAMESPACE=NAMESPACE,
    LOG_HASH_KEY=uuid.uuid4().hex,
    CONSOLE_DEVELOPMENT="true",
    LOG_LEVEL="WARNING",
    SMTP_HOST="127.0.0.1",
    SMTP_PORT=str(SMTP_PORT),
    SMTP_STARTTLS="false",
    EMERGENCY_RECIPIENTS="section@example.jp",
)

from aiosmtpd.controller import Controller  # noqa: E402
from playwright.async_api import async_playwright  # noqa: E402
from soudan_console import cases as case_ops  # noqa: E402
from soudan_console import emergencies as emergency_ops  # noqa: E402
from soudan_console.app import create_app  # noqa: E402
from soudan_console.domain import CANNED, Canned  # noqa: E402
from soudan_console.settings import ConsoleSettings  # noqa: E402
from soudan_console.staff import all_staff  # noqa: E402
from soudan_console.testing import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    RunningConsole,
    login,
    seed_case,
)
from soudan_console.web import CONSOLE  # noqa: E402
from soudan_shared.contracts import utcnow  # noqa: E402
from soudan_shared.records import MESSAGES  # noqa: E402
from soudan_shared.runtime import STORE, setup_logging, start_site  # noqa: E402
from soudan_shared.testing.plugin import delete_topology  # noqa: E402
from soudan_shared.topology import Topology  # noqa: E402


class Sink:
    """Takes the emergency e-mail, so the page can say it went out."""

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        return "250 OK"


async def seed(running: RunningConsole) -> tuple[str, str, str]:
    store = running.store
    counselor = await running.add_staff("counselor", email="sato@example.jp", name="佐藤 みどり")
    await running.add_staff("counselor", email="tanaka@example.jp", name="田中 ひろし")
    await running.add_staff("supervisor", email="suzuki@example.jp", name="鈴木 かおる")
    for i, (title, text) in enumerate(
        (
            (
                "はじめのあいさつ",
                "メッセージをありがとう。相談員の佐藤です。ゆっくりでいいので、お話を聞かせてね。",
            ),
            ("気持ちを受け止める", "話してくれてありがとう。それはとてもつらかったね。"),
            (
                "終わりのあいさつ",
                "今日は話してくれてありがとう。また話したくなったら、いつでもメッセージを送ってね。",
            ),
        )
    ):
        await store.db[CANNED].insert_one(Canned(title=title, text=text, order=i).to_document())
    await seed_case(
        store,
        urgent=True,
        keywords=("死に", "消えたい"),
        texts=("もう学校に行きたくない", "消えたいって毎日思う。死にたい"),
        waited=timedelta(minutes=3),
        school_type="public_high",
    )
    await seed_case(
        store,
        texts=("部活の先輩との関係でなやんでいます",),
        waited=timedelta(minutes=14),
    )
    await seed_case(
        store,
        texts=("友だちにむしされている気がする。いじめなのかな",),
        keywords=(),
        waited=timedelta(minutes=9),
        school_type="private",
    )
    await seed_case(
        store,
        texts=("進路のことで親とけんかした",),
        waited=timedelta(minutes=6),
        school_type="sapporo_city",
        out_of_scope=True,
    )
    earlier = await seed_case(
        store,
        state="closed",
        texts=("クラスの子に悪口を言われた",),
        waited=timedelta(days=12),
        categories=["bullying", "friendships"],
        outcome="continuing",
        grade="jh2",
    )
    case = await seed_case(
        store,
        user_id=earlier.user_id,
        texts=(
            "こんばんは。また相談してもいいですか",
            "この前話した子たちに、今日も悪口を言われた",
        ),
        waited=timedelta(minutes=25),
    )
    staff = running.console
    people = {s.email: s for s in await all_staff(staff)}
    sato = people["sato@example.jp"]
    claimed = await case_ops.claim(staff, case.id, sato)
    assert claimed is not None
    await case_ops.reply(
        staff,
        claimed,
        sato,
        [
            "こんばんは。また話しに来てくれてありがとう。",
            "今日はどんなことを言われたのか、よかったら教えてね。",
        ],
        await case_ops.issue_reply_form(staff, claimed, sato),
    )
    # what dispatch records once LINE has taken them (no dispatch runs here): shown 送信済み
    await store.db[MESSAGES].update_many(
        {"case_id": claimed.id, "direction": "out", "delivery": "sending"},
        {"$set": {"delivery": "sent", "delivery_at": utcnow(), "delivery_problem": None}},
    )
    await case_ops.add_note(
        staff, claimed, sato, "前回（12日前）も同じグループからの悪口。学校名はまだ聞いていない。"
    )
    danger = await seed_case(
        store,
        urgent=True,
        keywords=("自殺",),
        texts=("今夜、自殺しようと思っています",),
        waited=timedelta(minutes=2),
    )
    danger_claimed = await case_ops.claim(staff, danger.id, sato)
    assert danger_claimed is not None
    emergency, task = await emergency_ops.raise_emergency(
        staff, danger_claimed, sato, "suicide_notice"
    )
    await task
    await emergency_ops.record_contact(
        staff,
        emergency,
        sato,
        agency="生徒指導・学校安全課（夜間・休日の緊急連絡先）",
        result="referred",
        memo="当番の方に状況を伝えた。折り返し待ち。",
        contacted_at=None,
    )
    return counselor.email, case.id, emergency.id


async def main() -> None:
    smtp = Controller(Sink(), hostname="127.0.0.1", port=SMTP_PORT)
    smtp.start()
    settings = ConsoleSettings()
    setup_logging(settings, "console")
    app = create_app(settings)
    port = free_port()
    runner = await start_site(app, port, "127.0.0.1")
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(400):
            if CONSOLE in app and app[CONSOLE].bus.is_ready:
                break
            await asyncio.sleep(0.05)
        running = RunningConsole(url, app, app[STORE], settings)
        email, case_id, emergency_id = await seed(running)
        OUT.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before the browser
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            context = await browser.new_context(
                locale="ja-JP", viewport={"width": 1366, "height": 768}, device_scale_factor=1
            )
            page = await context.new_page()
            await login(page, url, email)
            await page.goto(f"{url}/queue")
            await page.wait_for_selector("body[data-live-state=open]")
            await page.screenshot(path=str(OUT / "console-queue.png"), full_page=True)
            await page.goto(f"{url}/cases/{case_id}")
            await page.screenshot(path=str(OUT / "console-conversation.png"), full_page=True)
            await page.goto(f"{url}/emergencies/{emergency_id}")
            await page.screenshot(path=str(OUT / "console-emergency.png"), full_page=True)
            await browser.close()
    finally:
        await runner.cleanup()
        smtp.stop()
        await delete_topology(os.environ["RABBITMQ_URL"], Topology(namespace=NAMESPACE))
    for name in ("console-queue.png", "console-conversation.png", "console-emergency.png"):
        print(OUT / name)


if __name__ == "__main__":
    asyncio.run(main())
