from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from soudan_shared.records import (
    INDEXES,
    Case,
    User,
    acquire_lease,
    release_lease,
)
from soudan_shared.store import Store

pytestmark = pytest.mark.integration

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


async def test_only_one_replica_gets_a_free_lease(store: Store) -> None:
    await store.ensure_indexes(INDEXES)
    results = await asyncio.gather(
        *(
            acquire_lease(store.db, "report:2026-11", f"r{n}", timedelta(minutes=5), now=T0)
            for n in range(5)
        )
    )
    assert results.count(True) == 1


async def test_a_lease_is_renewed_by_its_holder_and_taken_over_when_expired(store: Store) -> None:
    ttl = timedelta(minutes=5)
    assert await acquire_lease(store.db, "schedule", "a", ttl, now=T0)
    assert not await acquire_lease(store.db, "schedule", "b", ttl, now=T0 + timedelta(minutes=1))
    assert await acquire_lease(store.db, "schedule", "a", ttl, now=T0 + timedelta(minutes=2))
    # a renewed until 09:07, so b waits until then.
    assert not await acquire_lease(store.db, "schedule", "b", ttl, now=T0 + timedelta(minutes=6))
    assert await acquire_lease(store.db, "schedule", "b", ttl, now=T0 + timedelta(minutes=7))
    await release_lease(store.db, "schedule", "b")
    assert await acquire_lease(store.db, "schedule", "c", ttl, now=T0 + timedelta(minutes=8))


async def test_shared_documents_round_trip_through_the_store(store: Store) -> None:
    user = User(id="U1", followed_at=T0, school_type="public_high", eligible=True)
    case = Case(user_id="U1", opened_at=T0, waiting_since=T0, last_message_at=T0, urgent=True)
    await store.db["users"].insert_one(user.to_document())
    await store.db["cases"].insert_one(case.to_document())
    assert User.model_validate(await store.db["users"].find_one({"_id": "U1"})) == user
    loaded = Case.model_validate(await store.db["cases"].find_one({"_id": case.id}))
    assert loaded == case
    assert loaded.state == "waiting"
