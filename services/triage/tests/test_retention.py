"""Retention: texts older than the period are erased once a day; the records stay."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from soudan_shared.contracts import Fact, Message
from soudan_shared.facts import Facts
from soudan_shared.records import (
    INDEXES,
    MESSAGES,
    REPLY_TOKENS,
    StoredMessage,
    claim_reply_token,
    latest_reply_token,
    record_reply_token,
)
from soudan_shared.store import Store
from soudan_triage.retention import months_before, run_once
from soudan_triage.store import EVENTS

NOW = datetime(2026, 12, 24, 3, 0, tzinfo=UTC)


class Recorder:
    def __init__(self) -> None:
        self.published: list[Fact] = []

    async def publish(self, message: Message, *, timeout: float | None = None) -> None:
        assert isinstance(message, Fact)
        self.published.append(message)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("moment", "months", "expected"),
    [
        (datetime(2026, 12, 24, tzinfo=UTC), 12, datetime(2025, 12, 24, tzinfo=UTC)),
        (datetime(2026, 3, 31, tzinfo=UTC), 1, datetime(2026, 2, 28, tzinfo=UTC)),
        (datetime(2024, 3, 31, tzinfo=UTC), 1, datetime(2024, 2, 29, tzinfo=UTC)),
        (datetime(2026, 1, 15, tzinfo=UTC), 13, datetime(2024, 12, 15, tzinfo=UTC)),
    ],
)
def test_months_before(moment: datetime, months: int, expected: datetime) -> None:
    assert months_before(moment, months) == expected


def _message(n: int, at: datetime, direction: str = "in") -> dict[str, Any]:
    return StoredMessage(
        id=f"m{n}",
        case_id="c1",
        user_id="U1",
        direction=direction,
        text=f"text {n}",
        at=at,  # type: ignore[arg-type]
    ).to_document()


@pytest.mark.integration
async def test_old_texts_are_erased_and_the_run_is_a_fact(store: Store) -> None:
    await store.ensure_indexes(INDEXES)
    old, recent = NOW - timedelta(days=370), NOW - timedelta(days=300)
    await store.db[MESSAGES].insert_many(
        [_message(1, old), _message(2, old, "out"), _message(3, recent)]
    )
    recorder = Recorder()

    assert await run_once(store.db, Facts(recorder, "triage"), now=NOW, months=12, holder="a")

    docs = {d["_id"]: d for d in await store.db[MESSAGES].find({}).to_list()}
    assert set(docs) == {"m1", "m2", "m3"}
    assert docs["m1"]["text"] is None
    assert docs["m1"]["erased_at"] == NOW
    assert docs["m2"]["text"] is None
    assert docs["m3"]["text"] == "text 3"
    (fact,) = recorder.published
    assert fact.type == "retention.run"
    assert fact.data == {
        "erased_messages": 2,
        "older_than": "2025-12-24T03:00:00+00:00",
        "months": 12,
        "forgotten_events": 0,
    }


@pytest.mark.integration
async def test_the_record_of_webhook_events_is_kept_thirty_days(store: Store) -> None:
    events = store.db[EVENTS]
    await events.insert_many(
        [
            {"_id": "old", "state": "done", "created_at": NOW - timedelta(days=31)},
            {"_id": "recent", "state": "done", "created_at": NOW - timedelta(days=29)},
        ]
    )

    await run_once(store.db, Facts(Recorder(), "triage"), now=NOW, months=12, holder="a")

    assert [d["_id"] for d in await events.find({}).to_list()] == ["recent"]


@pytest.mark.integration
async def test_reply_tokens_are_forgotten_after_a_day(store: Store) -> None:
    db = store.db
    for name, age in (("old", timedelta(days=2)), ("fresh", timedelta(hours=2))):
        await record_reply_token(
            db, f"token-{name}", user_id="U1", received_at=NOW - age, message_id=f"m-{name}"
        )
    # a token claimed by an automatic reply that triage never recorded (a follow's)
    assert await claim_reply_token(db, "token-follow", "cmd-1", now=NOW - timedelta(days=3))

    await run_once(db, Facts(Recorder(), "triage"), now=NOW, months=12, holder="a")

    left = await db[REPLY_TOKENS].find({}).to_list()
    assert [d["message_id"] for d in left] == ["m-fresh"]
    assert await latest_reply_token(db, "U1") == ("token-fresh", NOW - timedelta(hours=2))


@pytest.mark.integration
async def test_retention_runs_once_a_day_across_replicas(store: Store) -> None:
    await store.ensure_indexes(INDEXES)
    recorder = Recorder()
    facts = Facts(recorder, "triage")

    ran = await asyncio.gather(
        *(run_once(store.db, facts, now=NOW, months=12, holder=f"r{n}") for n in range(4))
    )
    again = await run_once(store.db, facts, now=NOW + timedelta(hours=5), months=12, holder="r0")
    next_day = await run_once(store.db, facts, now=NOW + timedelta(days=1), months=12, holder="r1")

    assert ran.count(True) == 1
    assert not again
    assert next_day
    assert len(recorder.published) == 2
