"""What one student message costs triage in store round trips and bus messages (issue 17): every
read and write it needs, none twice, and its facts in one message."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from soudan_shared import fact_types as F
from soudan_shared.config_store import ConfigSource
from soudan_shared.contracts import FactBatch, Message
from soudan_shared.facts import Facts
from soudan_shared.records import INDEXES
from soudan_shared.store import Store
from soudan_shared.testing.counting import CountedDb
from soudan_triage.service import Triage
from soudan_triage.store import INDEXES as TRIAGE_INDEXES
from soudan_triage.store import TriageStore
from soudan_triage.testing import IN_HOURS, NIGHT, Line

pytestmark = pytest.mark.integration


class Publisher:
    def __init__(self) -> None:
        self.published: list[Message] = []

    async def publish(self, message: Message, *, timeout: float | None = None) -> None:
        self.published.append(message)


@pytest.fixture
async def db(store: Store) -> Any:
    await store.ensure_indexes((*INDEXES, *TRIAGE_INDEXES))
    return store.db


def triage(
    db: Any, counted: CountedDb, config_dir: Path, clock: Any, publisher: Publisher | None = None
) -> Triage:
    publisher = publisher or Publisher()
    return Triage(
        TriageStore(counted),
        ConfigSource(config_dir, db),
        Facts(publisher, "triage"),
        publisher,
        clock=lambda: clock,
    )


async def test_a_new_student_writing_at_night_costs_nine_round_trips(
    db: Any, config_dir: Path, line: Line
) -> None:
    counted = CountedDb(db)
    event = line.text(line.user(), "こんばんは。", NIGHT)
    publisher = Publisher()
    await triage(db, counted, config_dir, NIGHT, publisher).handle(event)
    # two bus messages: the out-of-hours reply, and the event's three facts together
    assert [type(m).__name__ for m in publisher.published] == ["SendText", "FactBatch"]
    (batch,) = [m for m in publisher.published if isinstance(m, FactBatch)]
    assert sorted(f.type for f in batch.facts) == [
        F.AUTO_REPLY_DECIDED,
        F.CASE_OPENED,
        F.MESSAGE_RECEIVED,
    ]
    # nothing to read about a student never seen but their triage state (early unsends); the
    # message's reply token is the automatic reply's, stored by dispatch as it claims it
    assert counted.calls == {
        "cases find": 1,
        "users find_one": 1,
        "triage_users find_one": 1,
        "triage_events insert_one": 1,
        "users update_one": 1,
        "cases insert_one": 1,
        "messages insert_one": 1,
        "triage_users update_one": 1,  # the out-of-hours reply is sent once per opening
        "triage_events update_one": 1,
    }


async def test_a_message_in_an_open_case_costs_eight_round_trips(
    db: Any, config_dir: Path, line: Line
) -> None:
    user = line.user()
    setup = CountedDb(db)
    await triage(db, setup, config_dir, IN_HOURS).handle(line.text(user, "こんにちは。", IN_HOURS))
    counted = CountedDb(db)
    later = IN_HOURS + timedelta(minutes=1)
    event = line.text(user, "相談したいことがあります。", later)
    await triage(db, counted, config_dir, later).handle(event)
    # the case, the triage state, the recent texts (keywords across messages); the plan, the
    # message, the case's last message time, the reply token, done
    assert counted.calls == {
        "cases find": 1,
        "triage_users find_one": 1,
        "messages find": 1,
        "triage_events insert_one": 1,
        "messages insert_one": 1,
        "cases update_one": 1,
        "reply_tokens update_one": 1,
        "triage_events update_one": 1,
    }
