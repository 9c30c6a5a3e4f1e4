"""``soudan-fakeline``: serve the fake LINE platform, or play a student against a running stack.

``soudan-fakeline --port 9000`` serves the fake on ``http://127.0.0.1:9000`` until interrupted.
Point dispatch at it (``LINE_API_BASE_URL=http://127.0.0.1:9000``) and give both the same channel
secret and access token (``--channel-secret``/``--access-token``, default from
``LINE_CHANNEL_SECRET`` and ``LINE_CHANNEL_ACCESS_TOKEN``).

``soudan-fakeline simulate --line http://127.0.0.1:9000 --webhook http://127.0.0.1:8080/webhook``
plays a short scripted conversation of one new student through that fake: follow, answer the
school-type question, write, tap the rich menu's hours entry, send a photo. It prints what the
student sent and what came back, and exits 1 if an answer that must come (greeting, school-type
acknowledgement, hours, text-only notice) did not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from soudan_fakeline.platform import RateLimit, new_user_id
from soudan_fakeline.server import create_app


def _serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="soudan-fakeline",
        description="Serve a fake LINE platform (tests, benchmarks, demo). "
        "`soudan-fakeline simulate --help` for the scripted student.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9000, help="listen port (default 9000)")
    parser.add_argument(
        "--channel-secret",
        default=os.environ.get("LINE_CHANNEL_SECRET", "test-channel-secret"),
        help="signs webhooks (default $LINE_CHANNEL_SECRET)",
    )
    parser.add_argument(
        "--access-token",
        action="append",
        default=None,
        help="an accepted channel access token; repeatable (default $LINE_CHANNEL_ACCESS_TOKEN)",
    )
    parser.add_argument("--webhook-url", default=None, help="default target of webhooks")
    parser.add_argument("--quota", type=int, default=None, help="monthly message limit")
    parser.add_argument(
        "--consumption", type=int, default=0, help="messages already used this month (default 0)"
    )
    parser.add_argument(
        "--multicast-rate", type=float, default=200.0, help="multicast requests/s (default 200)"
    )
    parser.add_argument(
        "--lenient-ids", action="store_true", help="accept user ids not shaped like LINE's"
    )
    return parser


async def _serve(args: argparse.Namespace) -> None:
    tokens = args.access_token or [os.environ.get("LINE_CHANNEL_ACCESS_TOKEN", "test-access-token")]
    app, fake = create_app(
        args.channel_secret,
        tokens,
        webhook_url=args.webhook_url,
        quota_limit=args.quota,
        strict_ids=not args.lenient_ids,
    )
    fake.rate_limits["multicast"] = RateLimit(args.multicast_rate)
    fake.consumption = args.consumption
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port).start()
    print(f"soudan-fakeline: serving on http://{args.host}:{args.port}", file=sys.stderr)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


# -- simulate -------------------------------------------------------------------------------------


@dataclass
class Step:
    says: str
    event: dict[str, Any]
    must_answer: bool
    answer_from_quick_reply: bool = False
    seen: list[dict[str, Any]] = field(default_factory=list)


def _script(user_id: str) -> list[Step]:
    hello = "こんばんは。ちょっと相談したいことがあります。"
    return [
        Step("(友だち追加)", {"type": "follow", "userId": user_id}, must_answer=True),
        Step("(学校の種類を選ぶ)", {}, must_answer=True, answer_from_quick_reply=True),
        Step(hello, {"type": "message", "userId": user_id, "text": hello}, must_answer=False),
        Step(
            "クラスでいじめられていて、学校に行くのがつらいです。",
            {
                "type": "message",
                "userId": user_id,
                "text": "クラスでいじめられていて、学校に行くのがつらいです。",
            },
            must_answer=False,
        ),
        Step(
            "(メニュー: 相談できる時間)",
            {"type": "postback", "userId": user_id, "data": "menu=hours"},
            must_answer=True,
        ),
        Step(
            "(写真を送る)",
            {"type": "message", "userId": user_id, "messageType": "image"},
            must_answer=True,
        ),
    ]


async def _messages(http: aiohttp.ClientSession, line: str, user_id: str) -> list[dict[str, Any]]:
    async with http.get(f"{line}/fake/v1/users/{user_id}/messages") as response:
        response.raise_for_status()
        body = await response.json()
        messages: list[dict[str, Any]] = body["messages"]
        return messages


def _quick_reply_event(user_id: str, seen: list[dict[str, Any]]) -> dict[str, Any] | None:
    for delivery in reversed(seen):
        items = (delivery.get("message") or {}).get("quickReply", {}).get("items", [])
        for item in items:
            action = item.get("action", {})
            if action.get("type") == "postback":
                return {"type": "postback", "userId": user_id, "data": action["data"]}
            if action.get("type") == "message":
                return {"type": "message", "userId": user_id, "text": action["text"]}
    return None


async def simulate(line: str, webhook: str, *, wait: float, user_id: str | None = None) -> int:
    user_id = user_id or new_user_id()
    missing = 0
    print(f"student {user_id}")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        received: list[dict[str, Any]] = await _messages(http, line, user_id)
        for step in _script(user_id):
            event = step.event
            if step.answer_from_quick_reply:
                chosen = _quick_reply_event(user_id, received)
                if chosen is None:
                    print("  (no quick reply to answer; skipped)")
                    continue
                event = chosen
                step.says = f"(ボタン: {chosen.get('data') or chosen.get('text')})"
            print(f"→ {step.says}")
            async with http.post(
                f"{line}/fake/v1/webhook", json={"url": webhook, "events": [event]}
            ) as response:
                result = await response.json()
            if result["status"] != 200:
                print(f"  webhook answered {result['status']}")
                missing += 1
                continue
            before = len(received)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                received = await _messages(http, line, user_id)
                if len(received) > before and not step.must_answer:
                    break
                if len(received) > before and step.must_answer:
                    # A little longer, for the rest of a multi-message answer.
                    await asyncio.sleep(0.5)
                    received = await _messages(http, line, user_id)
                    break
                await asyncio.sleep(0.2)
            new = received[before:]
            for delivery in new:
                text = delivery.get("text") or f"({delivery.get('type')})"
                print(f"  ← [{delivery['method']}] " + text.replace("\n", "\n    "))
            if not new:
                if step.must_answer:
                    print("  ✗ no answer")
                    missing += 1
                else:
                    print("  (no automatic answer: the case waits for a counselor)")
    print("ok" if missing == 0 else f"{missing} expected answer(s) missing")
    return 0 if missing == 0 else 1


def _simulate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="soudan-fakeline simulate",
        description="Play a scripted student conversation through a running fake and stack.",
    )
    parser.add_argument("--line", default="http://127.0.0.1:9000", help="the running fake")
    parser.add_argument(
        "--webhook", default="http://127.0.0.1:8080/webhook", help="the stack's webhook URL"
    )
    parser.add_argument("--wait", type=float, default=10.0, help="seconds to wait per answer")
    parser.add_argument("--user-id", default=None, help="the student's LINE user id")
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["simulate"]:
        args = _simulate_parser().parse_args(argv[1:])
        code = asyncio.run(simulate(args.line, args.webhook, wait=args.wait, user_id=args.user_id))
        raise SystemExit(code)
    if argv[:1] == ["serve"]:
        argv = argv[1:]
    args = _serve_parser().parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
