"""Report months in Tokyo, the schedule's clock, and the percentile arithmetic."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from soudan_reporting.figures import (
    Durations,
    histogram_percentile,
    nearest_rank,
    per_bucket,
)
from soudan_reporting.jobs import due_month, next_run
from soudan_reporting.month import Month

pytestmark = pytest.mark.unit


def test_a_month_is_bounded_by_midnight_in_tokyo() -> None:
    october = Month.parse("2026-10")
    assert october.start == datetime(2026, 9, 30, 15, 0, tzinfo=UTC)
    assert october.end == datetime(2026, 10, 31, 15, 0, tzinfo=UTC)
    assert len(october.days()) == 31
    assert str(october) == "2026-10"
    assert october.label == "2026年10月"


def test_months_follow_each_other_across_the_year() -> None:
    assert Month(2026, 12).next() == Month(2027, 1)
    assert Month(2027, 1).previous() == Month(2026, 12)
    assert Month(2028, 2).days()[-1].day == 29


@pytest.mark.parametrize("text", ["2026-13", "2026-1", "26-10", "2026/10", "", "2026-00"])
def test_a_month_that_is_not_yyyy_mm_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="2026-10"):
        Month.parse(text)


def test_an_instant_belongs_to_the_month_of_its_tokyo_date() -> None:
    assert Month.containing(datetime(2026, 10, 31, 15, 0, tzinfo=UTC)) == Month(2026, 11)
    assert Month.containing(datetime(2026, 10, 31, 14, 59, 59, tzinfo=UTC)) == Month(2026, 10)


def test_the_previous_month_is_due_from_six_in_the_morning_on_the_first() -> None:
    six = datetime(2026, 10, 31, 21, 0, tzinfo=UTC)  # 2026-11-01 06:00 JST
    assert due_month(six) == Month(2026, 10)
    a_minute_before = datetime(2026, 10, 31, 20, 59, tzinfo=UTC)
    assert due_month(a_minute_before) == Month(2026, 9)  # September's, built a month ago
    assert next_run(six.replace(hour=20)) == six
    assert next_run(six) == datetime(2026, 11, 30, 21, 0, tzinfo=UTC)  # 12-01 06:00 JST


def test_percentiles_are_taken_by_nearest_rank() -> None:
    assert [nearest_rank(50, n) for n in (1, 2, 3, 4, 10)] == [1, 1, 2, 2, 5]
    assert [nearest_rank(90, n) for n in (1, 10, 11, 70)] == [1, 9, 10, 63]
    durations = Durations.of_ms([5_000, 1_000, 3_000, 2_000, 4_000])
    assert durations == Durations(5, 3.0, 5.0)
    assert Durations.of_ms([]) == Durations(0, None, None)


def test_a_merged_latency_histogram_gives_the_bound_of_the_percentile_bucket() -> None:
    buckets = {"<=10": 50, "<=50": 40, "<=100": 9, "+Inf": 1}
    assert histogram_percentile(buckets, 50) == 10
    assert histogram_percentile(buckets, 90) == 50
    assert histogram_percentile(buckets, 99) == 100
    assert histogram_percentile({**buckets, "+Inf": 5}, 99) == float("inf")
    assert histogram_percentile({}, 50) is None


def test_cumulative_buckets_are_turned_into_counts_per_bucket() -> None:
    assert per_bucket({"<=10": 5, "<=50": 8, "+Inf": 9}) == {"<=10": 5, "<=50": 3, "+Inf": 1}
