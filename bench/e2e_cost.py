"""The cost of one student message (issue 17): CPU per message of every process, and the AMQP
messages and store round trips each student message causes.

    RABBITMQ_URL=amqp://guest:guest@127.0.0.1:5672/ .venv/bin/python bench/e2e_cost.py \
        # --messages 2000 --rate 50 --runs 3 --store secantus [--separate]

Processes, as ``bench/e2e_latency.py`` starts them (its ``Stack``): ``soudan-all`` (the five
services in one process; ``--separate``: each service in a process of its own), the fake LINE
platform (``soudan-fakeline``), the store (``--store secantus``, the default: one SecantusDB
server, a separate process and NOT MongoDB, so the services run PyMongo's real client path as in
production; ``--store memory``: the in-process fake, whose query evaluation then counts as
Soudan's CPU) and the broker (``beam.smp`` listening on the port of ``RABBITMQ_URL``, 5672 by
default: this machine's shared broker). The load comes from this process (not counted).

The mix, ``--messages`` in all at ``--rate`` per second, each one webhook request with one event,
half in each of two phases on two fresh stacks (hours are one setting per stack):

- **closed** (``deploy/config`` with today closed, as the demo starts): new students out of hours,
  one text each (the out-of-hours reply by reply token); one in 20 writes something urgent (the
  reply with the 24-hour help lines);
- **open** (today open all day): students in an open case, four messages each (the first opens
  the case, the next three land in it; congestion replies once the queue is long); one in 20
  texts is urgent, one in 30 messages an image (the media reply), one in 50 unsends the student's
  previous text.

Figures per run, from before the first request of a phase to the end of its settling (triage has
consumed every event and the services' AMQP counters have been still for 2 s), summed over the
phases: each process's CPU (utime + stime from ``/proc/<pid>/stat``) per student message; AMQP
messages published per student message (``soudan_bus_published_total``, every service's
``/metrics``: each one is also delivered and acked once); store round trips per student message
(``soudan_store_commands_total``, a PyMongo command listener in every service, which the bench
turns on with ``STORE_COMMAND_METRICS=true`` and which costs CPU of its own; none with
``--store memory`` or ``--no-store-counts``). Baseline in the same run: the fake LINE
platform's own CPU per push request, pushed to it directly at the same rate. The broker's CPU
includes whatever else uses it during the run (it is this machine's shared broker): say so when
the machine is busy.

Prints one JSON line per process and run, one for the broker, one for the baseline and a last
line with the medians of the runs: ``cpu_ms_per_message_total``, ``soudan_cpu_ms_per_message``,
``broker_cpu_ms_per_message``, ``amqp_messages_per_student_message``,
``store_round_trips_per_student_message``. Per run and phase also ``store_commands_by`` and
``published_by``: store round trips per student message by service and command name
(``"triage find"``), AMQP messages per student message by service and routing key. Figures:
docs/BENCHMARKS.md, "Cost of one message".
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import yaml
from e2e_latency import (
    SERVICES,
    TOKEN,
    Stack,
    emit,
    fake_stats,
    load_average,
    stop_stack,
)
from soudan_allinone.demo import TOKYO, prepare_config
from soudan_fakeline import new_user_id

CLOCK_TICK = os.sysconf("SC_CLK_TCK")
URGENT_TEXT = "もう死にたい。"
TEXTS = (
    "こんにちは。相談したいことがあります。",
    "学校でいやなことがあって、だれにも言えません。",
    "友だちとけんかして、どうしたらいいかわからない。",
    "部活の先輩がこわいです。",
)
METRIC = re.compile(r"^(soudan_[a-z_]+_total)(\{[^}]*\})? ([0-9.e+]+)$", re.MULTILINE)


# -- what is measured -------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (its threads included, its children not)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def broker_pid() -> int | None:
    """The beam.smp that listens on the port of ``RABBITMQ_URL`` (5672: this machine's broker),
    from ``ss``."""
    port = urlsplit(os.environ.get("RABBITMQ_URL", "")).port or 5672
    try:
        out = subprocess.run(  # noqa: S603 - a fixed program, a port number
            ["ss", "-ltnpH", f"sport = :{port}"],  # noqa: S607
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
    except OSError:
        return None
    found = re.search(r'"beam\.smp",pid=(\d+)', out)
    return int(found.group(1)) if found else None


def processes(stack: Stack) -> dict[str, int]:
    pids = {"fakeline": stack.fake.pid}
    if stack.all is not None:
        pids["soudan-all"] = stack.all.pid
    pids.update({f"soudan-{name}": p.pid for name, p in stack.separate.items()})
    if stack.store is not None:
        pids["secantus"] = stack.store.pid
    broker = broker_pid()
    if broker is not None:
        pids["broker"] = broker
    return pids


async def counters(http: aiohttp.ClientSession, stack: Stack) -> dict[str, float]:
    """The services' counters over their /metrics (``service:name{labels}`` -> value)."""
    total: dict[str, float] = {}
    for service, port in stack.ports.items():
        async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
            text = await response.text()
        for name, labels, value in METRIC.findall(text):
            key = f"{service}:{name}{labels or ''}"
            total[key] = total.get(key, 0.0) + float(value)
    return total


def summed(values: dict[str, float], name: str, *labels: str) -> float:
    return sum(
        v
        for k, v in values.items()
        if k.split(":", 1)[1].startswith(name) and all(x in k for x in labels)
    )


LABEL = re.compile(r'([a-z_]+)="([^"]*)"')


def breakdown(before: dict[str, float], after: dict[str, float], name: str) -> dict[str, float]:
    """The growth of counter ``name`` per service and label values (``triage find``)."""
    grown: dict[str, float] = {}
    for key, value in after.items():
        service, rest = key.split(":", 1)
        if not rest.startswith(name + "{"):
            continue
        delta = value - before.get(key, 0.0)
        if delta:
            labels = " ".join(v for _, v in LABEL.findall(rest))
            grown[f"{service} {labels}"] = grown.get(f"{service} {labels}", 0.0) + delta
    return grown


HANDLED_LINE_EVENTS = ("soudan_bus_consumed_total", 'outcome="handled"', "line-events")


# -- the mix ----------------------------------------------------------------------------------


def open_config(target: Path) -> None:
    """deploy/config with today (Asia/Tokyo) open all day."""
    prepare_config(target)
    path = target / "hours.yaml"
    hours = yaml.safe_load(path.read_text(encoding="utf-8"))
    today = datetime.now(TOKYO).date().isoformat()
    for override in hours["overrides"]:
        if str(override["date"]) == today:
            override["sessions"] = [{"open": "00:00", "last_acceptance": "23:58", "close": "23:59"}]
            override["note"] = "bench: open all day"
    path.write_text(yaml.safe_dump(hours, allow_unicode=True, sort_keys=False), encoding="utf-8")


def closed_mix(n: int, rng: random.Random) -> list[dict[str, Any]]:
    return [
        {
            "type": "message",
            "userId": new_user_id(),
            "text": URGENT_TEXT if rng.random() < 1 / 20 else rng.choice(TEXTS),
        }
        for _ in range(n)
    ]


def open_mix(n: int, rng: random.Random) -> list[dict[str, Any]]:
    """Four messages per student, one student after another interleaved in groups of eight."""
    events: list[dict[str, Any]] = []
    while len(events) < n:
        group = [new_user_id() for _ in range(8)]
        for turn in range(4):
            for user in group:
                draw = rng.random()
                if turn and draw < 1 / 50:
                    events.append({"type": "unsend", "userId": user})  # its previous text
                elif turn and draw < 1 / 50 + 1 / 30:
                    events.append({"type": "message", "userId": user, "messageType": "image"})
                else:
                    urgent = rng.random() < 1 / 20
                    text = URGENT_TEXT if urgent else rng.choice(TEXTS)
                    events.append({"type": "message", "userId": user, "text": text})
    return events[:n]


async def play(
    http: aiohttp.ClientSession, stack: Stack, events: list[dict[str, Any]], rate: float
) -> dict[str, int]:
    """Send ``events`` one per request on a fixed schedule; an unsend names the user's last
    text. Returns the webhook answers by status."""
    last_text: dict[str, str] = {}
    answers: dict[str, int] = {}
    start = time.monotonic() + 0.2
    pending: set[asyncio.Task[None]] = set()
    user_locks: dict[str, asyncio.Lock] = {}

    async def one(i: int, event: dict[str, Any]) -> None:
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        user = event["userId"]
        async with user_locks.setdefault(user, asyncio.Lock()):  # a student writes in order
            if event["type"] == "unsend":
                if user not in last_text:
                    event = {"type": "message", "userId": user, "text": TEXTS[0]}
                else:
                    event = {**event, "messageId": last_text.pop(user)}
            body = {"url": stack.webhook_url, "events": [event]}
            for attempt in range(6):  # LINE redelivers what was not answered 200
                answer: dict[str, Any] = {}
                try:
                    async with http.post(
                        stack.fake_url + "/fake/v1/webhook", json=body
                    ) as response:
                        answer = await response.json() if response.status == 200 else {}
                        status = str(answer.get("status", response.status))
                except (aiohttp.ClientError, TimeoutError) as exc:
                    status = type(exc).__name__
                answers[status] = answers.get(status, 0) + 1
                if status == "200":
                    break
                await asyncio.sleep(0.5 * (attempt + 1))
            if event.get("text") and answer.get("messageIds"):
                last_text[user] = answer["messageIds"][0]

    for i, event in enumerate(events):
        task = asyncio.create_task(one(i, event))
        pending.add(task)
        task.add_done_callback(pending.discard)
    while pending:
        await asyncio.gather(*list(pending))
    return answers


async def settle(http: aiohttp.ClientSession, stack: Stack, events: int, before: float) -> None:
    """Until triage has consumed ``events`` more LINE events and the AMQP counters are still."""
    deadline = time.monotonic() + 300
    last, still_since = -1.0, time.monotonic()
    while time.monotonic() < deadline:
        now = await counters(http, stack)
        consumed = summed(now, *HANDLED_LINE_EVENTS) - before
        published = summed(now, "soudan_bus_published_total")
        if published != last:
            last, still_since = published, time.monotonic()
        if consumed >= events and time.monotonic() - still_since >= 2:
            return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"triage consumed only {consumed:.0f} of {events} events in 300 s")


# -- a run ------------------------------------------------------------------------------------


async def phase(
    http: aiohttp.ClientSession,
    tmp: Path,
    label: str,
    events: list[dict[str, Any]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    config = tmp / f"config-{label}"
    config.mkdir()
    (open_config if label.startswith("open") else prepare_config)(config)
    separate = SERVICES if args.separate else ()
    stack = Stack(tmp, config, separate=separate, store=args.store)
    try:
        await stack.wait_ready(http)
        await asyncio.sleep(2)  # start-up work (indexes, rich menu, first ticks) done
        pids = processes(stack)
        before_counters = await counters(http, stack)
        before_cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
        began = time.monotonic()
        answers = await play(http, stack, events, args.rate)
        await settle(
            http,
            stack,
            len(events),
            summed(before_counters, "soudan_bus_consumed_total", "line-events"),
        )
        after_cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
        after_counters = await counters(http, stack)
        return {
            "label": label,
            "events": events,
            "seconds": time.monotonic() - began,
            "answers": answers,
            "cpu": {name: after_cpu[name] - before_cpu[name] for name in pids},
            "published": summed(after_counters, "soudan_bus_published_total")
            - summed(before_counters, "soudan_bus_published_total"),
            "store_commands": summed(after_counters, "soudan_store_commands_total")
            - summed(before_counters, "soudan_store_commands_total"),
            "deliveries": int((await fake_stats(http, stack))["deliveries"]),
            "commands_by": breakdown(
                before_counters, after_counters, "soudan_store_commands_total"
            ),
            "published_by": breakdown(
                before_counters, after_counters, "soudan_bus_published_total"
            ),
        }
    finally:
        await stop_stack(stack, label)


async def baseline(
    http: aiohttp.ClientSession, stack_fake: str, pid: int, n: int, rate: float
) -> float:
    """CPU ms of the fake LINE platform per push request sent to it directly at ``rate``."""
    before = cpu_seconds(pid)
    start = time.monotonic() + 0.2
    headers = {"Authorization": f"Bearer {TOKEN}"}

    async def one(i: int) -> None:
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        body = {"to": new_user_id(), "messages": [{"type": "text", "text": TEXTS[0]}]}
        async with http.post(f"{stack_fake}/v2/bot/message/push", json=body, headers=headers):
            pass

    await asyncio.gather(*(one(i) for i in range(n)))
    return (cpu_seconds(pid) - before) * 1000 / n


async def run(
    http: aiohttp.ClientSession, tmp: Path, args: argparse.Namespace, n: int
) -> dict[str, Any]:
    rng = random.Random(n)  # noqa: S311 - the same mix in every run, not security
    half = args.messages // 2
    phases = [
        await phase(http, tmp, f"closed-run{n}", closed_mix(half, rng), args),
        await phase(http, tmp, f"open-run{n}", open_mix(args.messages - half, rng), args),
    ]
    messages = args.messages
    cpu: dict[str, float] = {}
    for p in phases:
        for name, seconds in p["cpu"].items():
            cpu[name] = cpu.get(name, 0.0) + seconds
    for name, seconds in sorted(cpu.items()):
        emit(
            {
                "measure": "process_cpu",
                "run": n,
                "process": name,
                "cpu_s": round(seconds, 3),
                "cpu_ms_per_message": round(seconds * 1000 / messages, 3),
            }
        )
    soudan = sum(s for name, s in cpu.items() if name.startswith("soudan-"))
    broker = cpu.get("broker")
    published = sum(p["published"] for p in phases)
    commands = sum(p["store_commands"] for p in phases)
    record = {
        "measure": "run",
        "run": n,
        "messages": messages,
        "answers": [p["answers"] for p in phases],
        "deliveries": [p["deliveries"] for p in phases],
        "seconds": [round(p["seconds"], 1) for p in phases],
        "cpu_ms_per_message_total": round(sum(cpu.values()) * 1000 / messages, 3),
        "soudan_cpu_ms_per_message": round(soudan * 1000 / messages, 3),
        "broker_cpu_ms_per_message": round(broker * 1000 / messages, 3) if broker else None,
        "fakeline_cpu_ms_per_message": round(cpu["fakeline"] * 1000 / messages, 3),
        "store_cpu_ms_per_message": round(cpu["secantus"] * 1000 / messages, 3)
        if "secantus" in cpu
        else None,
        "amqp_messages_per_student_message": round(published / messages, 3),
        "store_round_trips_per_student_message": round(commands / messages, 3)
        if args.store == "secantus"
        else None,
        "loadavg": load_average(),
    }
    emit(record)
    for measure, key in (("store_commands_by", "commands_by"), ("published_by", "published_by")):
        for label, p in zip(("closed", "open"), phases, strict=True):
            per = {k: round(v / len(p["events"]), 3) for k, v in sorted(p[key].items())}
            emit({"measure": measure, "run": n, "phase": label, "per_message": per})
    return record


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="soudan-cost-") as tmp_name:
        tmp = Path(tmp_name)
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=60), connector=aiohttp.TCPConnector(limit=500)
        ) as http:
            runs = [await run(http, tmp, args, n) for n in range(args.runs)]
            config = tmp / "config-baseline"
            config.mkdir()
            prepare_config(config)
            stack = Stack(tmp, config, store="memory")
            try:
                await stack.wait_ready(http)
                per_push = await baseline(
                    http, stack.fake_url, stack.fake.pid, min(args.messages, 1000), args.rate
                )
            finally:
                await stop_stack(stack, "baseline")
            emit({"measure": "baseline_fake_push", "cpu_ms_per_request": round(per_push, 3)})

    def median(key: str) -> float | None:
        values = [r[key] for r in runs if r[key] is not None]
        return round(statistics.median(values), 3) if values else None

    keys = (
        "cpu_ms_per_message_total",
        "soudan_cpu_ms_per_message",
        "broker_cpu_ms_per_message",
        "amqp_messages_per_student_message",
        "store_round_trips_per_student_message",
    )
    summary = {key: median(key) for key in keys}
    summary["soudan_to_baseline_push"] = (
        round(summary["soudan_cpu_ms_per_message"] / per_push, 1)
        if summary["soudan_cpu_ms_per_message"] and per_push
        else None
    )
    emit(
        {
            "measure": "medians_of_runs",
            "runs": args.runs,
            "store": args.store,
            "separate": args.separate,
            **summary,
        }
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--store", choices=("secantus", "memory"), default="secantus")
    parser.add_argument(
        "--separate", action="store_true", help="every service in a process of its own"
    )
    parser.add_argument(
        "--no-store-counts",
        action="store_true",
        help="the services as deployed: no command listener (STORE_COMMAND_METRICS=false), so "
        "no store round trips counted, and none of the listener's CPU",
    )
    options = parser.parse_args()
    if options.separate and options.store == "memory":
        parser.error("--separate needs --store secantus (the in-process store is per process)")
    # the services started below take their environment from this one
    os.environ["STORE_COMMAND_METRICS"] = "false" if options.no_store_counts else "true"
    sys.exit(asyncio.run(main(options)))
