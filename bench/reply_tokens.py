"""How many counselor replies go free by the student's reply token (issue 20, item 1).

    RABBITMQ_URL=amqp://guest:guest@127.0.0.1:5672/ .venv/bin/python bench/reply_tokens.py \
        # --conversations 10 --exchanges 4 --runs 3 --min-delay 20 --max-delay 90

A scripted conversation on the whole service in this process (``soudan_allinone.testing``: the
five services, the fake LINE platform, the in-process store, the real RabbitMQ): a student
writes, a counselor claims the case, and then ``--exchanges`` times the student writes and the
counselor answers after a delay drawn uniformly from ``--min-delay``..``--max-delay`` seconds
(seeded per run). The delay is not waited for: the stack's clock (the fake platform's, by which
ingress stamps events, dispatch ages reply tokens and the fake expires them) is moved on.

Printed per run (one JSON line): counselor replies, how many went by reply token (free) and by
push (counted against the month), the share by reply token, the share the script predicts (the
answers given within ``REPLY_TOKEN_MAX_AGE``, 50 s by default), and the fake's count of the
month's messages used by them. Then the medians over the runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from soudan_allinone.testing import Stack, plan_stack, running_fake_platform, start_stack
from soudan_console.testing import Browserless, use_cheap_password_hashing
from soudan_dispatch.settings import DispatchSettings
from soudan_fakeline import new_user_id
from soudan_shared import fact_types as F
from soudan_shared.logging import configure_logging
from soudan_shared.records import CASES, MESSAGES
from soudan_shared.store import open_store
from soudan_shared.testing.plugin import delete_topology
from soudan_shared.testing.smtp import running_smtp
from soudan_shared.testing.waiting import wait_until

SECRET = "bench-channel-secret"  # noqa: S105 - the fake's own
TOKEN = "bench-access-token"  # noqa: S105 - the fake's own


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record, ensure_ascii=False), flush=True)


async def _answer(session: Browserless, case_id: str, text: str) -> str:
    _, _, page = await session.get(f"/cases/{case_id}")
    found = re.search(r'name="command_id" value="([^"]+)"', page)
    if found is None:
        raise RuntimeError("no reply form on the case page")
    await session.post(f"/cases/{case_id}/reply", {"text": text, "command_id": found.group(1)})
    return found.group(1)


async def _incoming(stack: Stack, user: str) -> int:
    return int(await stack.store.db[MESSAGES].count_documents({"user_id": user, "direction": "in"}))


async def conversation(
    stack: Stack, session: Browserless, rng: random.Random, args: argparse.Namespace
) -> list[tuple[float, str]]:
    """One scripted case: (delay, method) of each counselor answer."""
    user = new_user_id()
    await stack.line.webhook.text(user, "相談したいことがあります", url=stack.webhook_url)
    case = await wait_until(
        lambda: stack.store.db[CASES].find_one({"user_id": user}), message="the case"
    )
    case_id = case["_id"]
    await session.post(f"/cases/{case_id}/claim")
    answers = []
    for i in range(args.exchanges):
        before = await _incoming(stack, user)
        await stack.line.webhook.text(user, f"つづきです（{i + 1}）", url=stack.webhook_url)
        await wait_until(
            lambda b=before: _more(stack, user, b), message="the student's message stored"
        )
        delay = rng.uniform(args.min_delay, args.max_delay)
        stack.later(delay)
        command_id = await _answer(session, case_id, f"うん、きかせてね（{i + 1}）")
        fact = await stack.wait_fact(F.REPLY_SENT, command_id=command_id)
        answers.append((delay, str(fact["data"]["method"])))
    await session.post(f"/cases/{case_id}/close", {"category": "other", "outcome": "resolved"})
    return answers


async def _more(stack: Stack, user: str, before: int) -> bool:
    return await _incoming(stack, user) > before


async def one_run(args: argparse.Namespace, seed: int, max_age: float) -> dict[str, Any]:
    rabbitmq_url = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
    rng = random.Random(seed)  # noqa: S311 - the script's delays, not security
    with tempfile.TemporaryDirectory() as tmp, running_smtp() as (inbox, smtp_port):
        plan = plan_stack(
            Path(tmp),
            rabbitmq_url=rabbitmq_url,
            mongodb_url="memory://",
            smtp_port=smtp_port,
            secret=SECRET,
            token=TOKEN,
        )
        saved = dict(os.environ)
        os.environ.update(plan.env)
        store = await open_store(plan.env["MONGODB_URL"], database=plan.database)
        try:
            async with running_fake_platform(SECRET, TOKEN) as (line, seen):
                os.environ["LINE_API_BASE_URL"] = line.url
                async with start_stack(line, seen, store, plan.config_dir, inbox, Path(tmp)) as s:
                    s.at(s.open_moment())
                    staff = await s.console.add_staff("counselor")
                    session = Browserless(s.console.url)
                    await session.login(staff.email)
                    used_before = line.fake.consumption
                    started = time.perf_counter()
                    answers: list[tuple[float, str]] = []
                    try:
                        for _ in range(args.conversations):
                            answers += await conversation(s, session, rng, args)
                    finally:
                        await session.close()
                    seconds = time.perf_counter() - started
                    used = line.fake.consumption - used_before
        finally:
            await store.close()
            with contextlib.suppress(Exception):
                await delete_topology(rabbitmq_url, plan.topology)
            os.environ.clear()
            os.environ.update(saved)
    by_reply = sum(1 for _, m in answers if m == "reply")
    within = sum(1 for d, _ in answers if d < max_age)
    return {
        "run": "counselor_replies",
        "seed": seed,
        "replies": len(answers),
        "by_reply_token": by_reply,
        "by_push": len(answers) - by_reply,
        "share_by_reply_token": round(by_reply / len(answers), 3),
        "share_answered_within_max_age": round(within / len(answers), 3),
        "month_messages_used": used,
        "wall_seconds": round(seconds, 1),
    }


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conversations", type=int, default=10)
    parser.add_argument("--exchanges", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--min-delay", type=float, default=20.0)
    parser.add_argument("--max-delay", type=float, default=90.0)
    args = parser.parse_args(argv)
    use_cheap_password_hashing()
    configure_logging(service="bench", level="WARNING", hash_key=b"bench")  # on stderr
    max_age = float(DispatchSettings.model_fields["reply_token_max_age"].default)
    runs = [await one_run(args, seed, max_age) for seed in range(1, args.runs + 1)]
    for record in runs:
        emit(record)
    emit(
        {
            "run": "median",
            "runs": len(runs),
            "reply_token_max_age": max_age,
            "delays": [args.min_delay, args.max_delay],
            "share_by_reply_token": statistics.median(r["share_by_reply_token"] for r in runs),
            "share_answered_within_max_age": statistics.median(
                r["share_answered_within_max_age"] for r in runs
            ),
            "month_messages_used_per_reply": statistics.median(
                r["month_messages_used"] / r["replies"] for r in runs
            ),
        }
    )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
