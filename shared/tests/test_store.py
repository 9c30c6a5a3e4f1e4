"""The store's contract: the same behaviour from the in-process fake and a real MongoDB.

Runs against whichever store the session uses (the run's header says which), so the suite can
be pointed at a real server unchanged with ``MONGODB_URL``.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError
from soudan_shared.http import REGISTRY, create_base_app
from soudan_shared.runtime import STORE, use_store
from soudan_shared.settings import MongoSettings
from soudan_shared.store import IndexSpec, Store, database_name, open_store
from soudan_shared.testing.secantus import start_secantus

pytestmark = pytest.mark.integration


async def test_a_unique_index_refuses_a_second_document_with_the_same_key(store: Store) -> None:
    specs = [IndexSpec("messages", (("line_message_id", 1),), unique=True)]
    await store.ensure_indexes(specs)
    await store.ensure_indexes(specs)  # start-up runs it every time: must be idempotent
    await store.db["messages"].insert_one({"line_message_id": "m1"})
    with pytest.raises(DuplicateKeyError):
        await store.db["messages"].insert_one({"line_message_id": "m1"})
    with pytest.raises(DuplicateKeyError):
        await store.db["messages"].insert_one({"_id": "x", "line_message_id": "m1"})
    assert await store.db["messages"].count_documents({}) == 1


async def test_times_come_back_timezone_aware_in_utc(store: Store) -> None:
    jst = timezone(timedelta(hours=9))
    written = datetime(2026, 11, 28, 18, 30, 15, 123000, tzinfo=jst)
    await store.db["cases"].insert_one({"_id": "c1", "opened_at": written})
    doc = await store.db["cases"].find_one({"_id": "c1"})
    assert doc is not None
    assert doc["opened_at"] == written
    assert doc["opened_at"].utcoffset() == timedelta(0)


async def test_find_sorts_limits_and_iterates(store: Store) -> None:
    cases = store.db["cases"]
    await cases.insert_many(
        [{"_id": f"c{n}", "urgent": n % 3 == 0, "waiting_since": n} for n in range(10)]
    )
    queue = await cases.find({}).sort([("urgent", -1), ("waiting_since", 1)]).limit(4).to_list()
    assert [c["_id"] for c in queue] == ["c0", "c3", "c6", "c9"]
    seen = [doc["_id"] async for doc in cases.find({"urgent": False}, {"_id": 1})]
    assert sorted(seen) == ["c1", "c2", "c4", "c5", "c7", "c8"]


async def test_find_one_and_update_claims_one_document_atomically(store: Store) -> None:
    cases = store.db["cases"]
    await cases.insert_many([{"_id": "a", "state": "waiting"}, {"_id": "b", "state": "waiting"}])
    first = await cases.find_one_and_update(
        {"state": "waiting"},
        {"$set": {"state": "active", "counselor": "s1"}},
        sort=[("_id", 1)],
        return_document=ReturnDocument.AFTER,
    )
    second = await cases.find_one_and_update(
        {"state": "waiting"},
        {"$set": {"state": "active", "counselor": "s2"}},
        sort=[("_id", 1)],
        return_document=ReturnDocument.AFTER,
    )
    none_left = await cases.find_one_and_update({"state": "waiting"}, {"$set": {"state": "active"}})
    assert (first or {}).get("counselor") == "s1"
    assert (second or {}).get("_id") == "b"
    assert none_left is None


async def test_upsert_creates_once_then_updates(store: Store) -> None:
    users = store.db["users"]
    for _ in range(2):
        await users.update_one(
            {"_id": "U1"},
            {"$setOnInsert": {"followed_at": datetime(2026, 11, 1, tzinfo=UTC)}, "$inc": {"n": 1}},
            upsert=True,
        )
    assert await users.find_one({"_id": "U1"}) == {
        "_id": "U1",
        "followed_at": datetime(2026, 11, 1, tzinfo=UTC),
        "n": 2,
    }


async def test_aggregation_groups_in_the_database(store: Store) -> None:
    events = store.db["events"]
    await events.insert_many(
        [
            {"type": "case.opened", "jst": {"day": "2026-11-01", "hour": 18}},
            {"type": "case.opened", "jst": {"day": "2026-11-01", "hour": 19}},
            {"type": "case.opened", "jst": {"day": "2026-11-02", "hour": 18}},
            {"type": "reply.sent", "jst": {"day": "2026-11-01", "hour": 18}},
        ]
    )
    cursor = await events.aggregate(
        [
            {"$match": {"type": "case.opened"}},
            {"$group": {"_id": "$jst.day", "n": {"$sum": 1}}},
            {"$sort": {"_id": 1}},
        ]
    )
    assert await cursor.to_list() == [{"_id": "2026-11-01", "n": 2}, {"_id": "2026-11-02", "n": 1}]


async def test_the_store_answers_ping(store: Store) -> None:
    assert await store.ping()


def test_the_database_is_named_by_the_url_path() -> None:
    assert database_name("mongodb://u:p@mongodb:27017/soudan?authSource=admin") == "soudan"
    assert database_name("mongodb://mongodb:27017") == "soudan"
    assert database_name("memory:///dev") == "dev"


async def test_memory_url_selects_the_in_process_store() -> None:
    opened = await open_store("memory:///t_kind")
    assert opened.kind == "memory"
    assert opened.db.name == "t_kind"


@pytest.mark.unit
async def test_writes_wait_for_the_journal_and_a_majority_unless_the_url_says_otherwise() -> None:
    durable = await open_store("mongodb://127.0.0.1:1/soudan")
    own = await open_store("mongodb://127.0.0.1:1/soudan?w=1&journal=false")
    try:
        assert durable.db.write_concern.document == {"w": "majority", "j": True}
        assert own.db.write_concern.document == {"w": 1, "j": False}
    finally:
        await durable.close()
        await own.close()


@pytest.mark.timeout(60)
async def test_a_services_store_round_trips_are_counted_by_command(tmp_path: Path) -> None:
    server = await asyncio.to_thread(start_secantus, tmp_path / "db", test_commands=False)
    registry = CollectorRegistry()
    store = await open_store(f"{server.url}counted", registry=registry)
    try:
        await store.db["cases"].insert_one({"_id": "c1"})
        await store.db["cases"].find_one({"_id": "c1"})
        await store.db["cases"].find_one({"_id": "c2"})
    finally:
        await store.close()
        await asyncio.to_thread(server.stop)

    def count(command: str) -> float | None:
        return registry.get_sample_value("soudan_store_commands_total", {"command": command})

    assert count("insert") == 1
    assert count("find") == 2


@pytest.mark.timeout(60)
@pytest.mark.parametrize("counted", [True, False], ids=["STORE_COMMAND_METRICS", "by_default"])
async def test_a_service_counts_its_store_commands_only_when_asked(
    tmp_path: Path, counted: bool
) -> None:
    """The command listener costs CPU on every command: on for measuring, off by default."""
    server = await asyncio.to_thread(start_secantus, tmp_path / "db", test_commands=False)
    environment = {"mongodb_url": f"{server.url}svc"}
    if counted:
        environment["store_command_metrics"] = "true"
    settings = MongoSettings.model_validate(environment)
    app = create_base_app("test")
    use_store(app, settings)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await app[STORE].db["cases"].find_one({"_id": "c1"})
    finally:
        await runner.cleanup()
        await asyncio.to_thread(server.stop)
    finds = app[REGISTRY].get_sample_value("soudan_store_commands_total", {"command": "find"})
    assert finds == (1 if counted else None)
