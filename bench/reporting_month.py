"""Benchmark: build one month's report from a generated month of N facts.

    .venv/bin/python bench/reporting_month.py --facts 1000000            # in-process fake
    MONGODB_URL=mongodb://127.0.0.1:27017/bench .venv/bin/python bench/reporting_month.py

The month is written by soudan_reporting.factgen (the same generator as the tests: cases with
messages, claims, replies and closes, urgent flags, emergencies, auto-replies, broadcasts, staff,
one webhook summary a minute), inserted in batches, and then the report is built as the service
builds it: the three aggregations (timed apart) and both files. Generation and insertion are
not part of the build time. The target is a build under 60 s for 1,000,000 facts on a real
MongoDB. ``--verify`` also checks the figures against the plain-Python reference
(soudan_reporting.factgen.reference_figures) and times it: a baseline from the same run, one
pass of plain Python over facts already in memory.

Several sizes (``--facts 25000 50000 100000``) give the growth, to extrapolate from where the
in-process fake becomes too slow to run the full month; each size is built ``--runs`` times and
the median reported.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from soudan_reporting.aggregate import case_pipeline, month_pipeline, state_pipeline
from soudan_reporting.build import build_month
from soudan_reporting.factgen import MonthGenerator, reference_figures, store_facts
from soudan_reporting.month import Month
from soudan_reporting.pdf import write_pdf
from soudan_reporting.recorder import EVENTS, INDEXES
from soudan_reporting.settings import ReportingSettings
from soudan_reporting.xlsx import write_xlsx
from soudan_shared.store import open_store

MONTH = Month(2026, 10)


def make_fake_cursor_linear() -> None:
    """mongomock's cursor slices its whole result list on every ``next()``, so reading N
    documents costs O(N²), and its ``aggregate`` reads the whole collection that way. This
    patch (benchmark only, ``--linear-fake-cursor``) reads them in O(N), to measure the
    pipelines rather than that artefact."""
    from mongomock.collection import Cursor

    original = Cursor.__next__

    def next_document(self: Any) -> Any:
        if self._skip or self._limit:
            return original(self)
        results = self._compute_results()
        if self._emitted >= len(results):
            raise StopIteration
        self._emitted += 1
        return results[self._emitted - 1]

    Cursor.__next__ = next_document  # type: ignore[method-assign]
    Cursor.next = next_document  # type: ignore[attr-defined]


FACTS_PER_CASE = 15.7  # what the generator writes per case, users included (measured)
OTHER_FACTS = 600  # staff, logins, broadcasts, retention, restarts…
MINUTES = 31 * 1440


def plan_for(facts: int) -> tuple[int, int]:
    """(cases, minutes between webhook summaries) giving about ``facts`` facts in the same mix
    as a full month: one webhook summary a minute is 44,640 of 1,000,000 facts (4.5%)."""
    every = max(1, round(MINUTES / (0.0446 * facts)))
    cases = (facts - MINUTES // every - OTHER_FACTS) / FACTS_PER_CASE
    return max(10, round(cases)), every


async def one_size(
    url: str, facts: int, runs: int, verify: bool, stages_too: bool, out: Path
) -> dict[str, Any]:
    database = f"bench_{uuid.uuid4().hex[:10]}"
    store = await open_store(url, database=database)
    try:
        await store.ensure_indexes(INDEXES)
        cases, every = plan_for(facts)
        generator = MonthGenerator(MONTH, cases=cases, seed=42, webhook_every_minutes=every)
        started = time.perf_counter()
        kept: list[Any] = []

        def stream() -> Any:
            for fact in generator.facts():
                if verify:
                    kept.append(fact)
                yield fact

        inserted = await store_facts(store.db[EVENTS], stream(), batch=10_000)
        insert_seconds = time.perf_counter() - started
        settings = ReportingSettings(
            rabbitmq_url="amqp://unused/",
            log_hash_key="bench",
            mongodb_url=url,
            soudan_config_dir=Path("deploy/config"),
            reports_dir=out,
        )
        pipelines = {
            "month": month_pipeline(MONTH),
            "cases": case_pipeline(MONTH),
            "state": state_pipeline(MONTH),
        }
        if not stages_too:
            pipelines = {}
        stages: dict[str, list[float]] = {name: [] for name in [*pipelines, "build"]}
        figures = None
        for _ in range(runs):
            for name, pipeline in pipelines.items():
                t = time.perf_counter()
                cursor = await store.db[EVENTS].aggregate(pipeline, allowDiskUse=True)
                await cursor.to_list()
                stages[name].append(time.perf_counter() - t)
            t = time.perf_counter()
            built = await build_month(store.db, MONTH, settings)
            stages["build"].append(time.perf_counter() - t)
            figures = built.figures
            t = time.perf_counter()
            write_xlsx(built.report, out / "again.xlsx")
            write_pdf(built.report, out / "again.pdf", settings.report_font_path)
            stages.setdefault("files", []).append(time.perf_counter() - t)
        result: dict[str, Any] = {
            "facts": inserted,
            "cases": generator.plan.cases_in_month,
            "insert_s": round(insert_seconds, 1),
            **{f"{name}_s": round(statistics.median(v), 2) for name, v in stages.items()},
            "runs": runs,
        }
        if verify:
            t = time.perf_counter()
            reference = reference_figures(kept, MONTH)
            result["python_reference_s"] = round(time.perf_counter() - t, 2)
            assert figures == reference, "figures differ from the reference"
            result["verified"] = True
        return result
    finally:
        await store.client.drop_database(database)
        await store.close()


async def run(args: argparse.Namespace) -> None:
    url = args.mongodb_url or os.environ.get("MONGODB_URL") or "memory://"
    kind = "in-process fake (mongomock)" if url.startswith("memory") else "MongoDB server"
    if args.linear_fake_cursor and url.startswith("memory"):
        make_fake_cursor_linear()
        kind += ", its cursor patched to read in linear time (--linear-fake-cursor)"
    print(f"# store: {kind}; python {platform.python_version()}; {os.cpu_count()} cores")
    print(
        "# build_s = the whole build (3 aggregations + XLSX + PDF); month_s, cases_s, state_s ="
        " each aggregation alone; files_s = writing both files alone; medians of --runs"
    )
    results = []
    with tempfile.TemporaryDirectory() as out:
        for facts in args.facts:
            result = await one_size(
                url, facts, args.runs, args.verify, not args.build_only, Path(out)
            )
            results.append(result)
            print(result, flush=True)
    if len(results) >= 2:
        # least squares through the measured sizes: build time per fact, and the fixed part
        xs = [r["facts"] for r in results]
        ys = [r["build_s"] for r in results]
        slope, intercept = statistics.linear_regression(xs, ys)
        print(
            f"# linear fit: build_s ≈ {intercept:.2f} + {slope * 1e6:.2f} µs × facts; "
            f"extrapolated to 1,000,000 facts: {intercept + slope * 1e6:.0f} s "
            "(an extrapolation, not a measurement)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--facts", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mongodb-url", default=None)
    parser.add_argument("--verify", action="store_true")
    parser.add_argument(
        "--linear-fake-cursor",
        action="store_true",
        help="patch mongomock's quadratic cursor (see make_fake_cursor_linear)",
    )
    parser.add_argument(
        "--build-only", action="store_true", help="skip timing the aggregations one by one"
    )
    args = parser.parse_args()
    if not Path("deploy/config").is_dir():
        sys.exit("run from the repository root (deploy/config is needed for the labels)")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
