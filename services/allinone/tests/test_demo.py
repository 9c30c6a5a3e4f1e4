"""``soudan-demo --once``: the demo as ``make demo`` starts it, run to the end of its transcript."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pymongo
import pytest
from soudan_allinone.demo import (
    CLOSE_NOTE,
    COUNSELOR,
    COUNSELOR_REPLY,
    READ_NOTE,
    TYPING_NOTE,
    source_config_dir,
)
from soudan_shared.config import load_config
from soudan_shared.records import CASES
from soudan_shared.testing.secantus import start_secantus
from soudan_shared.topology import Topology

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


def fixed_lines(template: str) -> list[str]:
    """The lines of a message template that do not depend on a placeholder."""
    return [line for line in template.splitlines() if line.strip() and "{" not in line]


async def run_demo(env: dict[str, str]) -> tuple[int, str, str]:
    exe = Path(sys.executable).parent / "soudan-demo"
    process = await asyncio.create_subprocess_exec(
        str(exe),
        "--once",
        "--free-ports",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_the_demo_plays_the_whole_conversation_and_prints_the_console_sign_in(
    rabbitmq_url: str, topology: Topology
) -> None:
    env = {**os.environ, "RABBITMQ_URL": rabbitmq_url, "BUS_NAMESPACE": topology.namespace}
    env["MONGODB_URL"] = "memory://"
    code, out, err = await run_demo(env)
    assert code == 0, err[-3000:]
    assert "IN-PROCESS FAKE" in err
    assert_the_whole_conversation(out)


@pytest.mark.timeout(180)
async def test_without_mongodb_url_the_demo_keeps_its_data_and_plays_the_same_when_run_again(
    rabbitmq_url: str, topology: Topology, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MONGODB_URL"}
    env |= {"RABBITMQ_URL": rabbitmq_url, "BUS_NAMESPACE": topology.namespace}
    env["SOUDAN_DATA_DIR"] = str(tmp_path / "demo-data")

    for _ in range(2):  # the second run finds the first one's accounts, case and hours edit
        code, out, err = await run_demo(env)
        assert code == 0, err[-3000:]
        assert "SecantusDB child process on 127.0.0.1:" in err
        assert str(tmp_path / "demo-data") in err
        assert_the_whole_conversation(out)

    server = await asyncio.to_thread(start_secantus, tmp_path / "demo-data")
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(server.url)
    try:
        assert client.soudan[CASES].count_documents({}) == 2  # both runs' students are kept
    finally:
        client.close()
        await asyncio.to_thread(server.stop)


async def test_the_demo_refuses_a_real_database() -> None:
    env = {**os.environ, "MONGODB_URL": "mongodb://127.0.0.1:1/soudan"}
    code, _, err = await run_demo(env)
    assert code == 2
    assert "never runs on MONGODB_URL's database" in err


def assert_the_whole_conversation(out: str) -> None:
    messages = load_config(source_config_dir()).messages
    greeting = fixed_lines(messages.follow.greeting)
    out_of_hours = fixed_lines(messages.auto_reply.out_of_hours)
    help_lines = fixed_lines(messages.auto_reply.out_of_hours_urgent)
    assert greeting
    assert out_of_hours
    assert help_lines
    for line in (*greeting, *out_of_hours, *help_lines, messages.menu.open_now):
        assert line in out, f"not in the transcript: {line}"

    # In order: closed (out-of-hours, then help lines), opened by the admin, then the counselor.
    opened = out.index("管理者がコンソールで今日の受付時間を設定しました")
    assert out.index(out_of_hours[0]) < out.index(help_lines[0]) < opened
    assert opened < out.index(messages.menu.open_now) < out.index(COUNSELOR_REPLY)
    assert out.count(COUNSELOR_REPLY) == 1  # the student got the answer, once
    # The counselor's reading shows 既読, then writing shows 入力中…, before the answer comes.
    assert opened < out.index(READ_NOTE) < out.index(TYPING_NOTE) < out.index(COUNSELOR_REPLY)
    # Then the counselor closes the case: the check-in question comes with its answers as
    # buttons, the student taps the first and gets its thanks.
    question = messages.checkin.question.strip().splitlines()
    first = messages.checkin.choices[0]
    answers = " / ".join(choice.label for choice in messages.checkin.choices)
    closed = out.index(CLOSE_NOTE)
    assert out.index(COUNSELOR_REPLY) < closed < out.index(question[0]) < out.index(answers)
    tapped = out.index(f"生徒 →  （ボタン: {first.label}）")
    assert out.index(answers) < tapped < out.index(first.reply.strip().splitlines()[0], tapped)
    assert out.count(question[0]) == 1  # asked once
    assert f"{COUNSELOR.email} / {COUNSELOR.password}" in out
    assert "/login" in out
