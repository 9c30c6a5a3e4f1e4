"""Which shard queues a triage instance consumes, and which it asks for first."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from soudan_triage.settings import PREFERRED_PRIORITY, TriageSettings

pytestmark = pytest.mark.unit

BASE = {"rabbitmq_url": "amqp://u:p@rabbit:5672/", "log_hash_key": "k", "mongodb_url": "memory://"}


def test_a_triage_instance_consumes_every_shard_at_one_priority_unless_told_otherwise() -> None:
    settings = TriageSettings(**BASE, line_event_shards=4)
    assert settings.consumed_shards() == (0, 1, 2, 3)
    assert {settings.consumer_priority(n) for n in range(4)} == {None}


def test_shards_are_read_as_numbers_and_ranges_and_preferred_ones_get_the_higher_priority() -> None:
    settings = TriageSettings(
        **BASE, line_event_shards=8, triage_shards="0-2, 5", triage_preferred_shards="1,5"
    )
    assert settings.consumed_shards() == (0, 1, 2, 5)
    assert [settings.consumer_priority(n) for n in (0, 1, 2, 5)] == [
        0,
        PREFERRED_PRIORITY,
        0,
        PREFERRED_PRIORITY,
    ]


@pytest.mark.parametrize(
    ("shards", "preferred", "says"),
    [
        ("0,4", "", "TRIAGE_SHARDS names shard 4, but LINE_EVENT_SHARDS=4 numbers them 0-3"),
        ("", "7", "TRIAGE_PREFERRED_SHARDS names shard 7"),
        ("0-1", "2", "TRIAGE_PREFERRED_SHARDS names a shard TRIAGE_SHARDS leaves out"),
        ("one", "", "'one' is not a shard number or a range like 0-3"),
        ("3-1", "", "a range goes from the lower number to the higher"),
    ],
)
def test_a_shard_setting_that_cannot_be_met_is_refused_saying_why(
    shards: str, preferred: str, says: str
) -> None:
    with pytest.raises(ValidationError, match=says):
        TriageSettings(
            **BASE, line_event_shards=4, triage_shards=shards, triage_preferred_shards=preferred
        )
