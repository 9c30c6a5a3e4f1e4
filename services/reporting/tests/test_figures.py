"""The month's figures computed in the store agree with their definitions, fact by fact."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from soudan_reporting.aggregate import compute_figures
from soudan_reporting.factgen import MonthGenerator, reference_figures, store_facts
from soudan_reporting.figures import Durations, Figures, TokenState
from soudan_reporting.month import Month
from soudan_reporting.recorder import EVENTS, TOKYO
from soudan_shared import fact_types as ft
from soudan_shared.contracts import Fact
from soudan_shared.store import Store

pytestmark = pytest.mark.integration
OCTOBER = Month(2026, 10)


def _jst(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=TOKYO).astimezone(UTC)


def _fact(type_: str, at: datetime, **data: object) -> Fact:
    return Fact(type=type_, at=at, service="test", data=data)


async def test_a_generated_month_gives_exactly_the_figures_of_their_definitions(
    store: Store,
) -> None:
    generator = MonthGenerator(OCTOBER, cases=150, seed=3, webhook_every_minutes=120)
    facts = list(generator.facts())
    await store_facts(store.db[EVENTS], facts)

    figures = await compute_figures(store.db[EVENTS], OCTOBER)

    assert figures == reference_figures(facts, OCTOBER)
    assert figures.sends_maybe_twice > 0  # the generated month has some: the count is exercised
    plan = generator.plan
    assert figures.cases_opened == plan.cases_in_month == 152  # 150 + the two boundary cases
    assert figures.followed_new == plan.new_follows
    assert figures.followed_unblocked == plan.unblocks
    assert figures.unfollowed == plan.unfollows
    assert figures.messages_in == plan.counts[ft.MESSAGE_RECEIVED] - _outside(
        facts, ft.MESSAGE_RECEIVED
    )
    assert figures.retention_runs == 31
    assert figures.service_starts == {
        "ingress": 1,
        "triage": 2,
        "dispatch": 1,
        "console": 1,
        "reporting": 1,
    }
    assert {s.staff_id for s in figures.staff} == {f"s0{i}" for i in range(1, 10)} - {"s08"}
    over_90 = sorted(s.staff_id for s in figures.staff if (s.password_age_days or 0) > 90)
    assert over_90 == ["s03", "s05"]
    assert figures.token.age_days == 40
    # the generator's spread makes these non-trivial: a comparison of empties would prove nothing
    assert figures.first_reply.n > 10
    assert figures.flag_to_reply.n > 0
    assert figures.urgent_by_keyword
    assert figures.webhook_latency_ms


def _outside(facts: list[Fact], fact_type: str) -> int:
    return sum(1 for f in facts if f.type == fact_type and not OCTOBER.start <= f.at < OCTOBER.end)


async def test_an_empty_month_gives_zeros(store: Store) -> None:
    figures = await compute_figures(store.db[EVENTS], OCTOBER)
    assert figures == Figures(month="2026-10")
    assert figures.response_rate is None


async def test_a_case_is_counted_in_the_month_of_its_tokyo_date_at_midnight(
    store: Store,
) -> None:
    last_moment = _jst(2026, 10, 31, 23, 59, 59) + timedelta(milliseconds=999)
    first_moment = _jst(2026, 11, 1, 0, 0, 0)
    facts = [
        _fact(ft.CASE_OPENED, _jst(2026, 10, 1, 0, 0, 0), case_id="a", in_hours=False),
        _fact(ft.CASE_OPENED, last_moment, case_id="b", in_hours=False),
        _fact(ft.CASE_OPENED, first_moment, case_id="c", in_hours=False),
        _fact(ft.CASE_OPENED, _jst(2026, 9, 30, 23, 59, 59), case_id="d", in_hours=False),
    ]
    await store_facts(store.db[EVENTS], facts)

    october = await compute_figures(store.db[EVENTS], OCTOBER)
    november = await compute_figures(store.db[EVENTS], OCTOBER.next())

    assert october.cases_opened == 2
    assert october.opened_by_day == {"2026-10-01": 1, "2026-10-31": 1}
    assert october.opened_by_hour == {0: 1, 23: 1}
    assert october.opened_by_weekday == {4: 1, 6: 1}  # Thursday 1st, Saturday 31st
    assert november.cases_opened == 1
    assert november.opened_by_day == {"2026-11-01": 1}


async def test_many_cases_alike_in_one_hour_are_each_counted(store: Store) -> None:
    at = _jst(2026, 10, 9, 19, 0)
    alike = {"in_hours": True, "out_of_scope": True, "urgent": True, "school_type": "other"}
    facts = [
        _fact(ft.CASE_OPENED, at + timedelta(seconds=i), case_id=f"c{i}", **alike)
        for i in range(20)
    ]
    await store_facts(store.db[EVENTS], facts)

    figures = await compute_figures(store.db[EVENTS], OCTOBER)

    assert (figures.cases_opened, figures.cases_in_hours) == (20, 20)
    assert (figures.cases_out_of_scope, figures.cases_urgent_at_open) == (20, 20)
    assert figures.opened_by_hour == {19: 20}
    assert figures.opened_by_school == {"other": 20}


async def test_a_reply_after_the_month_ends_counts_for_the_case_that_began_in_it(
    store: Store,
) -> None:
    opened = _jst(2026, 10, 31, 21, 50)
    facts = [
        _fact(ft.CASE_OPENED, opened, case_id="late", in_hours=True, urgent=True),
        _fact(ft.CASE_CLAIMED, opened + timedelta(minutes=4), case_id="late", staff_id="s1"),
        _fact(
            ft.REPLY_SENT,
            opened + timedelta(minutes=20),  # 22:10 JST... still October
            case_id="late",
            purpose="counselor_reply",
            method="reply",
        ),
        _fact(ft.CASE_CLOSED, opened + timedelta(hours=3), case_id="late", category="family"),
        _fact(ft.CASE_OPENED, opened, case_id="never", in_hours=True),
    ]
    await store_facts(store.db[EVENTS], facts)

    figures = await compute_figures(store.db[EVENTS], OCTOBER)

    assert figures.cases_in_hours == 2
    assert figures.answered_in_hours == 1
    assert figures.response_rate == 0.5
    assert figures.first_reply == Durations(1, 1200.0, 1200.0)
    assert figures.first_reply_urgent == Durations(1, 1200.0, 1200.0)
    assert figures.waiting == Durations(1, 240.0, 240.0)
    assert figures.length == Durations(1, 10_800.0, 10_800.0)  # closed on 1 November
    assert figures.cases_closed == 0  # the close itself is November's
    assert (await compute_figures(store.db[EVENTS], OCTOBER.next())).closed_by_category == {
        "family": 1
    }


async def test_the_time_from_flag_to_reply_counts_only_replies_after_the_flag(
    store: Store,
) -> None:
    opened = _jst(2026, 10, 5, 18, 0)
    reply = {"case_id": "x", "purpose": "counselor_reply", "method": "reply"}
    facts = [
        _fact(ft.CASE_OPENED, opened, case_id="x", in_hours=True),
        _fact(ft.REPLY_SENT, opened + timedelta(minutes=1), **reply),
        _fact(
            ft.CASE_FLAGGED_URGENT,
            opened + timedelta(minutes=10),
            case_id="x",
            keywords=["死に", "消えたい"],
            in_hours=True,
        ),
        _fact(
            ft.CASE_FLAGGED_URGENT,
            opened + timedelta(minutes=12),
            case_id="x",
            keywords=["死に"],
            in_hours=True,
        ),
        _fact(ft.REPLY_SENT, opened + timedelta(minutes=13), **reply),
        # another case, first flagged before the hours begin and again once they have
        _fact(ft.CASE_FLAGGED_URGENT, opened - timedelta(minutes=70), case_id="y", in_hours=False),
        _fact(ft.CASE_FLAGGED_URGENT, opened + timedelta(minutes=5), case_id="y", in_hours=True),
    ]
    await store_facts(store.db[EVENTS], facts)

    figures = await compute_figures(store.db[EVENTS], OCTOBER)

    assert figures.flag_to_reply == Durations(1, 180.0, 180.0)
    assert figures.urgent_cases == 2
    assert figures.urgent_out_of_hours == 1
    assert figures.urgent_by_keyword == {"死に": 1, "消えたい": 1}
    assert figures.first_reply_urgent == Durations(1, 60.0, 60.0)


async def test_webhook_summaries_merge_whether_their_buckets_are_cumulative_or_not(
    store: Store,
) -> None:
    at = _jst(2026, 10, 2, 12, 0)
    per_bucket = {"<=10": 6, "<=100": 3, "+Inf": 1}
    cumulative = {"<=10": 6, "<=100": 9, "+Inf": 10}
    facts = [
        _fact(
            ft.WEBHOOK_REQUESTS,
            at + timedelta(minutes=i),
            requests=10,
            by_status={"200": 9, "401": 1},
            latency_ms_buckets=buckets,
        )
        for i, buckets in enumerate([per_bucket, cumulative, per_bucket])
    ]
    await store_facts(store.db[EVENTS], facts)

    figures = await compute_figures(store.db[EVENTS], OCTOBER)

    assert figures.webhook_requests == 30
    assert figures.webhook_by_status == {"200": 27, "401": 3}
    assert figures.webhook_latency_ms == {"<=10": 18, "<=100": 9, "+Inf": 3}


@pytest.mark.parametrize(
    ("rotation", "expected"),
    [
        (None, TokenState()),
        ("issued", TokenState(source=ft.TOKEN_ISSUED, age_days=6, key_id="kid-b")),
        ("revoked", TokenState(source=ft.LINE_TOKEN_ROTATED, age_days=40, key_id="kid-1")),
    ],
)
async def test_the_line_token_age_comes_from_whichever_token_facts_exist(
    store: Store, rotation: str | None, expected: TokenState
) -> None:
    generator = MonthGenerator(OCTOBER, cases=5, webhook_every_minutes=1440, rotation=rotation)
    facts = list(generator.facts())
    await store_facts(store.db[EVENTS], facts)

    token = (await compute_figures(store.db[EVENTS], OCTOBER)).token

    assert token == reference_figures(facts, OCTOBER).token
    assert (token.source, token.age_days, token.key_id) == (
        expected.source,
        expected.age_days,
        expected.key_id,
    )
    assert token.revoked is (rotation == "revoked")


async def test_a_past_month_gives_the_same_figures_after_later_months_are_recorded(
    store: Store,
) -> None:
    october = list(MonthGenerator(OCTOBER, cases=40, seed=5, webhook_every_minutes=720).facts())
    await store_facts(store.db[EVENTS], october)
    before = await compute_figures(store.db[EVENTS], OCTOBER)

    january = MonthGenerator(Month(2027, 1), cases=40, seed=6, webhook_every_minutes=720)
    later = [f for f in january.facts() if f.at >= Month(2026, 12).start]
    assert await store_facts(store.db[EVENTS], later) > 500
    again = await compute_figures(store.db[EVENTS], OCTOBER)

    assert again == before
