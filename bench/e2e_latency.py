"""Benchmark of the whole service (issue 8): webhook → auto-reply at the fake LINE platform, an
urgent message → top of the console's queue, and the resident memory of the processes.

    RABBITMQ_URL=amqp://guest:guest@127.0.0.1:5672/ .venv/bin/python bench/e2e_latency.py \
        --duration 10    # --rates 100 300 500 --runs 3 --urgent-runs 3 --urgent-rate 300

``--runs 0`` skips the auto-reply part, ``--urgent-runs 0`` the urgent one. Every run gets a
fresh stack (the in-process store starts empty). Prints one JSON line per measurement.
Results and the circumstances of the recorded run: docs/BENCHMARKS.md, "Whole service".

Two child processes: ``soudan-all`` (the five services, ``MONGODB_URL=memory://``, the real
RabbitMQ, a fresh ``BUS_NAMESPACE``) and ``soudan-fakeline`` (the fake LINE platform); the load
comes from this process. ``--separate ingress reporting`` runs those services each in a
``soudan-all --only <service>`` of its own (as deployed, one process per service) and the rest in
the first; with the in-process store only these two can leave it: ingress uses no store and
reporting only its own collections. ``--store secantus`` starts one SecantusDB server
(``secantusd-py``, a third-party MongoDB server written in Python on WiredTiger; NOT MongoDB) with
its data in the run's temporary directory for all the processes, so any service can be
``--separate``. ``--soak SECONDS --soak-rate R`` keeps one stack under steady load and samples
the RSS of every process every 10 s.

The configuration is deploy/config with today closed (the demo's ``prepare_config``), so every
text gets the out-of-hours reply; that reply goes once per user per next opening, so every message
comes from a NEW user (one text message event per webhook).

Webhooks are sent through the fake's control API (``POST /fake/v1/webhook``): the fake issues the
reply tokens, signs the body and posts it to ingress. Open loop: message ``i`` is started at
``start + i / rate`` whatever the answers do; its latency is the fake's clock (``at`` of the
first message object the user received, same machine's wall clock) minus that scheduled start.
Reported per run: count, delivered, median and p99 latency, share sent by ``reply`` (vs
``push``), and the webhook's own answer time (fake → ingress → 200, seen from here).

Baseline in the same run: the fake's own round trip, a push to the fake at the same rate.

Urgent: while a background load of normal messages runs at ``--urgent-rate``, a signed-in
console user (the first admin, from CONSOLE_ADMIN_EMAIL/PASSWORD; admins may take cases) sends
one urgent text at a time (``死にたい`` and a unique tag) and polls ``/queue/fragment`` every
``--poll`` seconds until the first row of the queue is that case; then claims it (so the next
probe's case can be first) and sends the next.

RSS (VmRSS) of both processes is sampled before and after every run. The fake is reset before
each run (``/fake/v1/reset``); soudan-all's in-process store keeps every case, so its memory
grows with the data by design.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
from soudan_allinone.demo import demo_environment, prepare_config
from soudan_fakeline import free_port, new_user_id
from soudan_shared.testing.plugin import delete_topology
from soudan_shared.topology import Topology

SECRET = "bench-channel-secret"  # noqa: S105 - the fake's own
TOKEN = "bench-access-token"  # noqa: S105 - the fake's own
ADMIN_EMAIL = "bench-admin@example.com"
ADMIN_PASSWORD = "bench-admin-password-1"  # noqa: S105
NEW_PASSWORD = "bench-admin-password-2-longer"  # noqa: S105
NORMAL_TEXT = "こんにちは。相談したいことがあります。"
SERVICES = ("ingress", "console", "triage", "dispatch", "reporting")
VENV_BIN = Path(sys.executable).parent


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record, ensure_ascii=False), flush=True)


class Stack:
    def __init__(
        self,
        log_dir: Path,
        config_dir: Path,
        *,
        separate: Sequence[str] = (),
        store: str = "memory",
    ) -> None:
        self.ports = {name: free_port() for name in SERVICES}
        self.fake_port = free_port()
        self.fake_url = f"http://127.0.0.1:{self.fake_port}"
        self.webhook_url = f"http://127.0.0.1:{self.ports['ingress']}/webhook"
        self.console_url = f"http://127.0.0.1:{self.ports['console']}"
        self.namespace = "bench-" + secrets.token_hex(4)
        env = dict(os.environ)
        env.update(demo_environment(config_dir, self.ports, "memory://"))
        env.update(
            {
                "BUS_NAMESPACE": self.namespace,
                "LINE_CHANNEL_SECRET": SECRET,
                "LINE_CHANNEL_ACCESS_TOKEN": TOKEN,
                "LINE_API_BASE_URL": self.fake_url,
                "CONSOLE_ADMIN_EMAIL": ADMIN_EMAIL,
                "CONSOLE_ADMIN_PASSWORD": ADMIN_PASSWORD,
                "LOG_LEVEL": "WARNING",
            }
        )
        self._fake_log = (log_dir / "fakeline.log").open("ab")
        self._all_log = (log_dir / "soudan-all.log").open("ab")
        self.store: subprocess.Popen[bytes] | None = None
        if store == "secantus":
            # One store for every process (a SecantusDB server; NOT MongoDB), so any service
            # can run in a process of its own.
            store_port = free_port()
            data_dir = log_dir / "secantus-data"
            self.store = subprocess.Popen(  # noqa: S603
                [
                    *(str(VENV_BIN / "secantusd-py"), "--host", "127.0.0.1"),
                    *("--port", str(store_port), "--storage-path", str(data_dir)),
                ],
                stdout=self._all_log,
                stderr=self._all_log,
                env=env,
            )
            env["MONGODB_URL"] = f"mongodb://127.0.0.1:{store_port}/{self.namespace}"
        self.fake = subprocess.Popen(  # noqa: S603
            [
                str(VENV_BIN / "soudan-fakeline"),
                "--port",
                str(self.fake_port),
                "--channel-secret",
                SECRET,
                "--access-token",
                TOKEN,
            ],
            stdout=self._fake_log,
            stderr=self._fake_log,
            env=env,
        )
        command = [str(VENV_BIN / "soudan-all"), "--host", "127.0.0.1"]
        rest = ",".join(name for name in SERVICES if name not in separate)
        self.all = (
            subprocess.Popen(  # noqa: S603
                [*command, "--only", rest] if separate else command,
                stdout=self._all_log,
                stderr=self._all_log,
                env=env,
            )
            if rest
            else None
        )
        self.separate = {
            name: subprocess.Popen(  # noqa: S603
                [*command, "--only", name], stdout=self._all_log, stderr=self._all_log, env=env
            )
            for name in separate
        }

    async def wait_ready(self, http: aiohttp.ClientSession) -> None:
        urls = [f"http://127.0.0.1:{p}/readyz" for p in self.ports.values()]
        urls.append(self.fake_url + "/fake/v1/stats")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ok = True
            for url in urls:
                try:
                    async with http.get(url) as response:
                        ok = ok and response.status == 200
                except aiohttp.ClientError:
                    ok = False
            if ok:
                return
            await asyncio.sleep(0.3)
        raise RuntimeError("the stack did not become ready")

    def rss(self) -> dict[str, int]:
        sizes = {"fake_kib": rss_kib(self.fake.pid)}
        if self.all is not None:
            sizes["soudan_all_kib"] = rss_kib(self.all.pid)
        if self.store is not None:
            sizes["secantus_kib"] = rss_kib(self.store.pid)
        for name, process in self.separate.items():
            sizes[f"{name}_kib"] = rss_kib(process.pid)
        return sizes

    def stop(self) -> None:
        # the fake and the store last: they outlive the services' sends
        processes = [*self.separate.values(), self.all, self.fake, self.store]
        for process in (p for p in processes if p is not None):
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
        self._fake_log.close()
        self._all_log.close()


# -- load -----------------------------------------------------------------------------------------


async def send_webhook(http: aiohttp.ClientSession, stack: Stack, user: str, text: str) -> int:
    body = {"url": stack.webhook_url, "events": [{"type": "message", "userId": user, "text": text}]}
    async with http.post(stack.fake_url + "/fake/v1/webhook", json=body) as response:
        if response.content_type != "application/json":
            return response.status  # the fake gave up waiting for ingress (504)
        answer = await response.json()
        return int(answer.get("status", response.status))


async def open_loop(
    http: aiohttp.ClientSession, stack: Stack, rate: float, duration: float, text: str
) -> list[dict[str, Any]]:
    """Send ``rate * duration`` messages from new users on a fixed schedule."""
    n = int(rate * duration)
    sent: list[dict[str, Any]] = []
    tasks = []
    start = time.time() + 0.2

    async def one(i: int) -> None:
        scheduled = start + i / rate
        delay = scheduled - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        user = new_user_id()
        row: dict[str, Any] = {"user": user, "scheduled": scheduled}
        try:
            row["status"] = await send_webhook(http, stack, user, text)
        except (aiohttp.ClientError, TimeoutError) as exc:
            row["status"] = repr(exc)
        row["answered"] = time.time() - scheduled
        sent.append(row)

    for i in range(n):
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    return sent


async def fake_stats(http: aiohttp.ClientSession, stack: Stack) -> dict[str, Any]:
    async with http.get(stack.fake_url + "/fake/v1/stats") as response:
        result: dict[str, Any] = await response.json()
        return result


async def wait_deliveries(
    http: aiohttp.ClientSession, stack: Stack, at_least: int, quiet: float = 5.0, cap: float = 90
) -> None:
    """Until the fake has ``at_least`` deliveries, or none came for ``quiet`` seconds."""
    last, last_change, begin = -1, time.monotonic(), time.monotonic()
    while time.monotonic() - begin < cap:
        count = int((await fake_stats(http, stack))["deliveries"])
        if count >= at_least:
            return
        if count != last:
            last, last_change = count, time.monotonic()
        elif time.monotonic() - last_change > quiet:
            return
        await asyncio.sleep(0.5)


async def first_deliveries(
    http: aiohttp.ClientSession, stack: Stack, users: list[str]
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    sem = asyncio.Semaphore(16)

    async def one(user: str) -> None:
        async with sem, http.get(f"{stack.fake_url}/fake/v1/users/{user}/messages") as response:
            messages = (await response.json())["messages"]
        if messages:
            out[user] = min(messages, key=lambda m: m["at"])

    await asyncio.gather(*(one(u) for u in users))
    return out


async def auto_reply_run(
    http: aiohttp.ClientSession, stack: Stack, rate: float, duration: float, run: int
) -> dict[str, Any]:
    await http.post(stack.fake_url + "/fake/v1/reset")
    rss_before = stack.rss()
    load_before = load_average()
    sent = await open_loop(http, stack, rate, duration, NORMAL_TEXT)
    await wait_deliveries(http, stack, len(sent), cap=240)
    got = await first_deliveries(http, stack, [r["user"] for r in sent])
    latencies = [got[r["user"]]["at"] - r["scheduled"] for r in sent if r["user"] in got]
    methods = [got[r["user"]]["method"] for r in sent if r["user"] in got]
    answered = [r["answered"] for r in sent]
    statuses: dict[str, int] = {}
    for r in sent:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    record = {
        "measure": "webhook_to_auto_reply",
        "rate": rate,
        "duration_s": duration,
        "run": run,
        "sent": len(sent),
        "webhook_status": statuses,
        "delivered": len(latencies),
        "median_ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
        "p99_ms": round(pct(latencies, 0.99) * 1000, 1) if latencies else None,
        "max_ms": round(max(latencies) * 1000, 1) if latencies else None,
        "reply_share": round(methods.count("reply") / len(methods), 4) if methods else None,
        "methods": {m: methods.count(m) for m in set(methods)},
        "webhook_answer_median_ms": round(statistics.median(answered) * 1000, 1),
        "webhook_answer_p99_ms": round(pct(answered, 0.99) * 1000, 1),
        "loadavg_before": load_before,
        "loadavg_after": load_average(),
        "rss_before": rss_before,
        "rss_after": stack.rss(),
    }
    emit(record)
    return record


async def baseline_run(
    http: aiohttp.ClientSession, stack: Stack, rate: float, duration: float
) -> dict[str, Any]:
    """The fake's own round trip: pushes straight to it, open loop at ``rate``."""
    n = int(rate * duration)
    start = time.time() + 0.2
    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {TOKEN}"}

    async def one(i: int) -> None:
        scheduled = start + i / rate
        delay = scheduled - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        body = {"to": new_user_id(), "messages": [{"type": "text", "text": "baseline"}]}
        async with http.post(
            stack.fake_url + "/v2/bot/message/push",
            json=body,
            headers={**headers, "X-Line-Retry-Key": str(uuid.uuid4())},
        ) as response:
            await response.read()
        latencies.append(time.time() - scheduled)

    load_before = load_average()
    await asyncio.gather(*(one(i) for i in range(n)))
    record = {
        "measure": "baseline_fake_push_round_trip",
        "rate": rate,
        "n": n,
        "median_ms": round(statistics.median(latencies) * 1000, 1),
        "p99_ms": round(pct(latencies, 0.99) * 1000, 1),
        "loadavg_before": load_before,
        "loadavg_after": load_average(),
    }
    emit(record)
    await http.post(stack.fake_url + "/fake/v1/reset")
    return record


# -- the console ----------------------------------------------------------------------------------

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf(html: str) -> str:
    found = CSRF.search(html)
    return found.group(1) if found else ""


FIRST_ROW = re.compile(
    r'<tr class="[^"]*" data-case-id="([^"]+)" data-urgent="(\d)">'
    r'.*?<td class="preview">(.*?)</td>',
    re.S,
)


class Console:
    def __init__(self, base: str) -> None:
        self.base = base
        self.http = aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True), timeout=aiohttp.ClientTimeout(total=30)
        )

    async def sign_in(self) -> None:
        async with self.http.get(self.base + "/login") as response:
            html = await response.text()
        form = {"csrf_token": csrf(html), "email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
        async with self.http.post(self.base + "/login", data=form) as response:
            path, html = response.url.path, await response.text()
        if path == "/password":
            form = {
                "csrf_token": csrf(html),
                "current": ADMIN_PASSWORD,
                "new": NEW_PASSWORD,
                "again": NEW_PASSWORD,
            }
            async with self.http.post(self.base + "/password", data=form) as response:
                path = response.url.path
        async with self.http.get(self.base + "/queue/fragment") as response:
            if response.status != 200 or response.url.path != "/queue/fragment":
                raise RuntimeError(f"queue not readable: {response.status} {response.url.path}")

    async def fragment(self) -> str:
        async with self.http.get(self.base + "/queue/fragment") as response:
            return await response.text()

    async def claim(self, case_id: str, html: str) -> int:
        form = {"csrf_token": csrf(html)}
        async with self.http.post(f"{self.base}/cases/{case_id}/claim", data=form) as response:
            return response.status

    async def close(self) -> None:
        await self.http.close()


async def urgent_run(
    http: aiohttp.ClientSession,
    stack: Stack,
    console: Console,
    rate: float,
    duration: float,
    poll: float,
    run: int,
) -> dict[str, Any]:
    await http.post(stack.fake_url + "/fake/v1/reset")
    load_before = load_average()
    background = asyncio.create_task(open_loop(http, stack, rate, duration, NORMAL_TEXT))
    await asyncio.sleep(1.0)  # the load is on before the first probe
    times: list[float] = []
    timeouts = refused = 0
    fragment_ms: list[float] = []
    while not background.done():
        tag = secrets.token_hex(3)
        sent_at = time.time()
        status = await send_webhook(http, stack, new_user_id(), f"{tag} もう死にたいです。")
        if status != 200:  # not accepted (LINE would send it again): not a measurement
            refused += 1
            await asyncio.sleep(0.2)
            continue
        seen = None
        while time.time() - sent_at < 15:
            t0 = time.time()
            html = await console.fragment()
            fragment_ms.append((time.time() - t0) * 1000)
            row = FIRST_ROW.search(html)
            if row and row.group(2) == "1" and tag in row.group(3):
                seen = time.time() - sent_at
                await console.claim(row.group(1), html)
                break
            await asyncio.sleep(poll)
        if seen is None:
            timeouts += 1
        else:
            times.append(seen)
    sent = await background
    record = {
        "measure": "urgent_to_queue_top",
        "background_rate": rate,
        "duration_s": duration,
        "run": run,
        "background_sent": len(sent),
        "background_webhook_status": {
            k: sum(1 for r in sent if str(r["status"]) == k)
            for k in {str(r["status"]) for r in sent}
        },
        "probes": len(times) + timeouts,
        "seen": len(times),
        "timeouts_15s": timeouts,
        "probes_refused": refused,
        "median_ms": round(statistics.median(times) * 1000, 1) if times else None,
        "p99_ms": round(pct(times, 0.99) * 1000, 1) if times else None,
        "max_ms": round(max(times) * 1000, 1) if times else None,
        "fragment_median_ms": round(statistics.median(fragment_ms), 1) if fragment_ms else None,
        "poll_s": poll,
        "loadavg_before": load_before,
        "loadavg_after": load_average(),
        "rss_after": stack.rss(),
    }
    emit(record)
    return record


async def soak_run(http: aiohttp.ClientSession, stack: Stack, rate: float, duration: float) -> None:
    """Steady load on one stack; the RSS of every process every 10 s, then the growth."""
    first = stack.rss()
    delivered_before = int((await fake_stats(http, stack))["deliveries"])
    samples = [{"t_s": 0, **first}]
    load = asyncio.create_task(open_loop(http, stack, rate, duration, NORMAL_TEXT))
    began = time.monotonic()
    while not load.done():
        await asyncio.wait({load}, timeout=10)
        samples.append({"t_s": round(time.monotonic() - began), **stack.rss()})
    sent = await load
    await wait_deliveries(http, stack, len(sent), quiet=5, cap=300)
    last = stack.rss()
    half = samples[len(samples) // 2]
    emit(
        {
            "measure": "soak_rss",
            "rate": rate,
            "duration_s": duration,
            "sent": len(sent),
            "accepted": sum(1 for r in sent if r["status"] == 200),
            "delivered": int((await fake_stats(http, stack))["deliveries"]) - delivered_before,
            "samples": samples,
            # growth over the second half of the load (the first half includes warming up)
            "second_half_growth_kib": {k: last[k] - half[k] for k in last},
            "loadavg": load_average(),
        }
    )


# -- main -----------------------------------------------------------------------------------------


async def start_stack(
    http: aiohttp.ClientSession, tmp: Path, label: str, *, separate: Sequence[str], store: str
) -> Stack:
    config = tmp / f"config-{label}"
    config.mkdir()
    prepare_config(config)
    stack = Stack(tmp, config, separate=separate, store=store)
    await stack.wait_ready(http)
    emit(
        {
            "measure": "stack_started",
            "phase": label,
            "namespace": stack.namespace,
            "separate": sorted(stack.separate),
            "store": "secantus" if stack.store else "memory",
            **stack.rss(),
            "loadavg": load_average(),
        }
    )
    await open_loop(http, stack, 20, 2, NORMAL_TEXT)  # warm-up, not counted
    await wait_deliveries(http, stack, 40, quiet=3)
    return stack


async def stop_stack(stack: Stack, label: str) -> None:
    emit({"measure": "stack_end", "phase": label, **stack.rss(), "loadavg": load_average()})
    stack.stop()
    try:
        await delete_topology(
            os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/"),
            Topology(namespace=stack.namespace),
        )
    except Exception as exc:  # cleanup only
        emit({"measure": "cleanup_failed", "error": repr(exc)})


def copy_logs(source: Path, target: Path) -> None:
    for path in source.glob("*.log"):
        (target / path.name).write_text(path.read_text(errors="replace"))


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="soudan-bench-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            async with aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=60),
                connector=aiohttp.TCPConnector(limit=2000),
            ) as http:
                results: dict[float, list[dict[str, Any]]] = {}
                for rate in args.rates:
                    for run in range(args.runs):
                        # a fresh stack per run: the in-process store starts empty each time
                        label = f"rate{int(rate)}-run{run}"
                        stack = await start_stack(
                            http, tmp, label, separate=args.separate, store=args.store
                        )
                        try:
                            if run == 0:
                                await auto_reply_run(http, stack, 2, 10, -1)  # idle baseline
                                if not args.skip_baseline:
                                    await baseline_run(http, stack, rate, 5.0)
                            results.setdefault(rate, []).append(
                                await auto_reply_run(http, stack, rate, args.duration, run)
                            )
                        finally:
                            await stop_stack(stack, label)
                for rate, rows in results.items():
                    emit(
                        {
                            "measure": "webhook_to_auto_reply_medians_of_runs",
                            "rate": rate,
                            "runs": len(rows),
                            "median_ms": statistics.median(r["median_ms"] for r in rows),
                            "p99_ms": statistics.median(r["p99_ms"] for r in rows),
                            "reply_share_min": min(r["reply_share"] for r in rows),
                        }
                    )
                if args.soak:
                    stack = await start_stack(
                        http, tmp, "soak", separate=args.separate, store=args.store
                    )
                    try:
                        await soak_run(http, stack, args.soak_rate, args.soak)
                    finally:
                        await stop_stack(stack, "soak")
                if args.urgent_runs:
                    urgent = []
                    for run in range(args.urgent_runs):
                        label = f"urgent-run{run}"
                        stack = await start_stack(
                            http, tmp, label, separate=args.separate, store=args.store
                        )
                        console = Console(stack.console_url)
                        try:
                            await console.sign_in()
                            urgent.append(
                                await urgent_run(
                                    http,
                                    stack,
                                    console,
                                    args.urgent_rate,
                                    args.urgent_duration,
                                    args.poll,
                                    run,
                                )
                            )
                        finally:
                            await console.close()
                            await stop_stack(stack, label)
                    done = [r for r in urgent if r["p99_ms"] is not None]
                    if done:
                        emit(
                            {
                                "measure": "urgent_to_queue_top_medians_of_runs",
                                "runs": len(done),
                                "p99_ms": statistics.median(r["p99_ms"] for r in done),
                                "median_ms": statistics.median(r["median_ms"] for r in done),
                            }
                        )
        finally:
            if args.keep_logs:
                copy_logs(tmp, Path(args.keep_logs))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[100, 300, 500])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of load per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--urgent-runs", type=int, default=3)
    parser.add_argument("--urgent-rate", type=float, default=300.0)
    parser.add_argument("--urgent-duration", type=float, default=15.0)
    parser.add_argument("--poll", type=float, default=0.02)
    parser.add_argument("--keep-logs", default=None, help="copy the child logs into this dir")
    parser.add_argument(
        "--separate",
        nargs="+",
        default=[],
        choices=SERVICES,
        help="run these services each in a soudan-all process of its own (with the memory "
        "store only ingress and reporting can: the others share the store in one process)",
    )
    parser.add_argument(
        "--store",
        choices=["memory", "secantus"],
        default="memory",
        help="memory: the in-process store; secantus: one SecantusDB server for all",
    )
    parser.add_argument(
        "--soak",
        type=float,
        default=0.0,
        help="seconds of steady load on one stack at --soak-rate, RSS of every process sampled "
        "every 10 s (the memory figure); 0 skips it",
    )
    parser.add_argument("--soak-rate", type=float, default=50.0)
    parsed = parser.parse_args()
    if parsed.store == "memory" and set(parsed.separate) - {"ingress", "reporting"}:
        parser.error("with --store memory only ingress and reporting can be --separate")
    asyncio.run(main(parsed))
