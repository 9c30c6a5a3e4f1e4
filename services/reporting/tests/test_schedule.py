"""The report builds itself at 06:00 JST on the 1st, once across replicas; and on demand."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from soudan_reporting.app import create_app
from soudan_reporting.build import report_paths
from soudan_reporting.factgen import MonthGenerator, store_facts
from soudan_reporting.jobs import RUNS, ReportSchedule
from soudan_reporting.main import main
from soudan_reporting.month import Month
from soudan_reporting.recorder import EVENTS
from soudan_reporting.settings import ReportingSettings
from soudan_shared import fact_types as ft
from soudan_shared.runtime import start_site
from soudan_shared.store import Store
from soudan_shared.testing.proxy import free_port
from soudan_shared.testing.waiting import wait_until

pytestmark = pytest.mark.integration
OCTOBER = Month(2026, 10)
SIX_ON_THE_FIRST = datetime(2026, 10, 31, 21, 0, 5, tzinfo=UTC)  # 2026-11-01 06:00:05 JST


@pytest.fixture
async def october_facts(store: Store) -> Store:
    generator = MonthGenerator(OCTOBER, cases=15, webhook_every_minutes=1440)
    await store_facts(store.db[EVENTS], generator.facts())
    return store


async def _count(store: Store, fact_type: str) -> int:
    n: int = await store.db[EVENTS].count_documents({"type": fact_type})
    return n


async def test_two_replicas_at_six_on_the_first_build_the_previous_month_once(
    october_facts: Store, make_settings: Callable[..., ReportingSettings]
) -> None:
    settings = make_settings()
    replicas = [
        ReportSchedule(october_facts.db, settings, clock=lambda: SIX_ON_THE_FIRST, holder=name)
        for name in ("replica-a", "replica-b")
    ]

    built = await asyncio.gather(*(r.run_due() for r in replicas))

    assert (built.count(OCTOBER), built.count(None)) == (1, 1)
    assert await _count(october_facts, ft.REPORT_BUILT) == 1
    marker = await october_facts.db[RUNS].find_one({"_id": "2026-10"})
    assert marker is not None
    assert marker["files"] == ["soudan-report-2026-10.xlsx", "soudan-report-2026-10.pdf"]
    assert all(p.is_file() for p in report_paths(settings.reports_dir, OCTOBER))
    # later checks, by either replica, find it done
    assert [await r.run_due() for r in replicas] == [None, None]
    assert await _count(october_facts, ft.REPORT_BUILT) == 1


async def test_before_six_on_the_first_the_month_just_ended_is_not_built_yet(
    october_facts: Store, make_settings: Callable[..., ReportingSettings]
) -> None:
    five = datetime(2026, 10, 31, 20, 59, 59, tzinfo=UTC)  # 05:59:59 JST
    schedule = ReportSchedule(october_facts.db, make_settings(), clock=lambda: five)

    # still September's turn (built now if it never was: its staff and users' facts exist)
    assert await schedule.run_due() == Month(2026, 9)
    assert await october_facts.db[RUNS].find_one({"_id": "2026-10"}) is None
    assert await schedule.run_due() is None


async def test_a_replica_started_later_in_the_month_catches_up(
    october_facts: Store, make_settings: Callable[..., ReportingSettings]
) -> None:
    mid_november = datetime(2026, 11, 17, 3, 0, tzinfo=UTC)
    schedule = ReportSchedule(october_facts.db, make_settings(), clock=lambda: mid_november)

    assert await schedule.run_due() == OCTOBER


@pytest.fixture
async def running_app(
    service_env: dict[str, str], tmp_path: Path, config_dir: Path
) -> AsyncIterator[ReportingSettings]:
    settings = ReportingSettings(
        reports_dir=tmp_path / "reports", soudan_config_dir=config_dir, smtp_host=""
    )
    runner = await start_site(
        create_app(settings, clock=lambda: SIX_ON_THE_FIRST), free_port(), "127.0.0.1"
    )
    try:
        yield settings
    finally:
        await runner.cleanup()


async def test_the_service_builds_the_due_report_in_the_background(
    october_facts: Store, running_app: ReportingSettings
) -> None:
    xlsx, pdf = report_paths(running_app.reports_dir, OCTOBER)

    await wait_until(
        lambda: october_facts.db[RUNS].find_one({"_id": "2026-10"}),
        timeout=60,
        message="October's report built by the schedule",
    )

    assert xlsx.is_file()
    assert pdf.is_file()
    built = await october_facts.db[EVENTS].find_one({"type": ft.REPORT_BUILT})
    assert built is not None
    assert built["data"]["trigger"] == "schedule"


async def test_the_build_command_writes_the_month_asked_for(
    october_facts: Store,
    service_env: dict[str, str],
    tmp_path: Path,
    config_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SOUDAN_CONFIG_DIR", str(config_dir))
    out = tmp_path / "out"

    with pytest.raises(SystemExit) as exit_:
        await asyncio.to_thread(main, ["build", "--month", "2026-10", "--out", str(out)])

    assert exit_.value.code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "soudan-report-2026-10.pdf",
        "soudan-report-2026-10.xlsx",
    ]
    assert str(out / "soudan-report-2026-10.pdf") in capsys.readouterr().out
    built = await october_facts.db[EVENTS].find_one({"type": ft.REPORT_BUILT})
    assert built is not None
    assert built["data"]["trigger"] == "manual"


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["build", "--month", "2026-13"], "2026-10"),
        (["build", "--month", "2026-10", "--email"], "SMTP_HOST"),
    ],
)
def test_the_build_command_explains_what_is_wrong_with_its_arguments(
    service_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    complaint: str,
) -> None:
    monkeypatch.delenv("SMTP_HOST", raising=False)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert complaint in capsys.readouterr().err
