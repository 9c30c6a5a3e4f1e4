"""Congestion: the figures from the store, and the verdict against the limits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from soudan_shared.config import CongestionConfig, load_config
from soudan_shared.records import CASES, Case
from soudan_shared.store import Store
from soudan_triage.congestion import evaluate, measure

SHIPPED = Path(__file__).resolve().parents[3] / "deploy" / "config"
NOW = datetime(2026, 12, 24, 10, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def config() -> CongestionConfig:
    return load_config(SHIPPED).congestion  # limits 20 cases, 45 min, 60 min


@pytest.mark.unit
def test_any_one_limit_over_makes_it_congested(config: CongestionConfig) -> None:
    calm = evaluate(
        config, waiting=20, oldest_wait_seconds=2700, counselors_on_cases=20, minutes_per_case=30
    )
    assert not calm.congested
    assert calm.estimated_wait_seconds == 20 * 30 * 60 // 20
    assert evaluate(
        config, waiting=21, oldest_wait_seconds=0, counselors_on_cases=40, minutes_per_case=1
    ).congested
    assert evaluate(
        config, waiting=1, oldest_wait_seconds=2701, counselors_on_cases=5, minutes_per_case=1
    ).congested
    # 5 waiting × 30 minutes ÷ 2 counselors = 75 minutes > 60
    assert evaluate(
        config, waiting=5, oldest_wait_seconds=0, counselors_on_cases=2, minutes_per_case=30
    ).congested


@pytest.mark.unit
def test_without_measurements_the_configured_estimate_is_used(config: CongestionConfig) -> None:
    figures = evaluate(
        config, waiting=7, oldest_wait_seconds=60, counselors_on_cases=0, minutes_per_case=None
    )
    # 7 × 40 minutes ÷ 4 configured counselors = 70 minutes > 60
    assert figures.estimated_wait_seconds == 4200
    assert figures.active_counselors == 0
    assert figures.congested


@pytest.mark.unit
def test_three_waiting_cases_at_the_start_of_an_evening_are_not_congestion(
    config: CongestionConfig,
) -> None:
    # the session just opened: nobody holds a case yet, three students wrote at 17:00
    figures = evaluate(
        config, waiting=3, oldest_wait_seconds=120, counselors_on_cases=0, minutes_per_case=None
    )
    assert not figures.congested
    # a busy evening is still caught: five counselors on 45-minute cases, eight waiting
    assert evaluate(
        config, waiting=8, oldest_wait_seconds=600, counselors_on_cases=5, minutes_per_case=45
    ).congested


def _case(n: int, state: str, **fields: object) -> dict[str, object]:
    at = NOW - timedelta(minutes=n)
    return Case(
        id=f"c{state}{n}",
        user_id=f"U{n}",
        state=state,  # type: ignore[arg-type]
        opened_at=at,
        waiting_since=at,
        last_message_at=at,
        **fields,  # type: ignore[arg-type]
    ).to_document()


@pytest.mark.integration
async def test_the_figures_are_measured_from_the_cases(
    store: Store, config: CongestionConfig
) -> None:
    cases = store.db[CASES]
    await cases.insert_many([_case(n, "waiting") for n in (5, 12, 50)])
    await cases.insert_many(
        [_case(n, "active", claimed_by=f"s{n % 2}", claimed_at=NOW) for n in range(3)]
    )
    await cases.insert_many(
        [
            _case(
                n,
                "closed",
                claimed_by="s0",
                claimed_at=NOW - timedelta(minutes=n + 10),
                closed_at=NOW - timedelta(minutes=n),
            )
            for n in range(5)
        ]
    )

    figures = await measure(store.db, config, NOW, exclude_case="cwaiting5")

    assert figures.waiting == 2
    assert figures.oldest_wait_seconds == 50 * 60
    assert figures.active_counselors == 2
    # 2 waiting × 10 minutes (the median case) ÷ 2 counselors
    assert figures.estimated_wait_seconds == 600
    assert figures.congested  # the oldest waits 50 minutes > 45
