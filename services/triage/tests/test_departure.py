"""A student in danger who blocks the account: every case of theirs in danger is marked, once."""

from __future__ import annotations

from datetime import timedelta

import pytest
from soudan_shared import fact_types as F
from soudan_shared.records import CASES, Case
from soudan_shared.testing.waiting import wait_until
from soudan_triage.testing import IN_HOURS, Downstream, Line, StartTriage

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def test_each_case_in_danger_of_a_student_who_blocks_gets_its_own_alert_once(
    start_triage: StartTriage, line: Line, downstream: Downstream
) -> None:
    running = await start_triage()
    user = line.user()
    await running.send(line.text(user, "家のことで相談です", IN_HOURS))
    earlier = Case.model_validate(await running.store.db[CASES].find_one({"user_id": user}))
    # a counselor raised an emergency on it, still open, and closed the case
    await running.store.db[CASES].update_one(
        {"_id": earlier.id},
        {"$set": {"state": "closed", "closed_at": IN_HOURS, "open_emergencies": ["e1"]}},
    )
    await running.send(line.text(user, "もう消えたい", IN_HOURS + timedelta(minutes=30)))
    unfollow = line.unfollow(user, IN_HOURS + timedelta(minutes=31))

    await running.send(unfollow)
    await running.publisher.publish(unfollow)  # LINE delivers it again
    await running.handled(unfollow)

    cases = [
        Case.model_validate(d)
        for d in await running.store.db[CASES].find({"user_id": user}).to_list()
    ]
    assert len(cases) == 2
    assert all(c.departure is not None for c in cases)
    by_id = {c.id: c for c in cases}
    assert by_id[earlier.id].departure.emergency_ids == ["e1"]  # type: ignore[union-attr]
    await wait_until(
        lambda: len(downstream.user_facts(F.CASE_STUDENT_LEFT, user)) >= 2, message="the alerts"
    )
    left = downstream.user_facts(F.CASE_STUDENT_LEFT, user)
    assert {f.data["case_id"] for f in left} == set(by_id)
    assert len({f.id for f in left}) == 2  # one fact each: the recorder keeps both
    assert {f.data["urgent"] for f in left} == {True, False}
