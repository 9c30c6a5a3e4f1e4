"""soudan-fakemongo answers PyMongo's real AsyncMongoClient as a MongoDB server would."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import bson
import pytest
from pymongo import (
    AsyncMongoClient,
    DeleteMany,
    InsertOne,
    ReplaceOne,
    ReturnDocument,
    UpdateOne,
)
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure
from pymongo.monitoring import CommandListener, CommandStartedEvent
from soudan_fakemongo import FakeMongoServer, running_fakemongo

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

JST = timezone(timedelta(hours=9))


class Commands(CommandListener):
    """The names of the commands the client sent."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def started(self, event: CommandStartedEvent) -> None:
        self.names.append(event.command_name)

    def succeeded(self, event: Any) -> None:
        pass

    def failed(self, event: Any) -> None:
        pass


@pytest.fixture
async def server() -> AsyncIterator[FakeMongoServer]:
    async with running_fakemongo() as running:
        yield running


@pytest.fixture
def commands() -> Commands:
    return Commands()


@pytest.fixture
async def client(
    server: FakeMongoServer, commands: Commands
) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        server.url, tz_aware=True, serverSelectionTimeoutMS=3000, event_listeners=[commands]
    )
    yield mongo
    await mongo.close()


@pytest.fixture
def db(client: AsyncMongoClient[dict[str, Any]]) -> AsyncDatabase[dict[str, Any]]:
    return client["t_fakemongo"]


async def test_documents_are_inserted_found_updated_replaced_and_deleted(
    db: AsyncDatabase[dict[str, Any]],
) -> None:
    cases = db["cases"]
    inserted = await cases.insert_one({"_id": "c1", "status": "open", "n": 1})
    assert inserted.inserted_id == "c1"
    await cases.insert_many([{"_id": "c2", "status": "open"}, {"_id": "c3", "status": "closed"}])

    updated = await cases.update_one(
        {"_id": "c1"}, {"$set": {"status": "closed"}, "$inc": {"n": 2}}
    )
    assert (updated.matched_count, updated.modified_count) == (1, 1)
    assert await cases.find_one({"_id": "c1"}) == {"_id": "c1", "status": "closed", "n": 3}

    many = await cases.update_many({"status": "closed"}, {"$set": {"archived": True}})
    assert (many.matched_count, many.modified_count) == (2, 2)
    unchanged = await cases.update_one({"_id": "c1"}, {"$set": {"status": "closed"}})
    assert (unchanged.matched_count, unchanged.modified_count) == (1, 0)

    replaced = await cases.replace_one({"_id": "c2"}, {"status": "replaced"})
    assert replaced.modified_count == 1
    assert await cases.find_one({"_id": "c2"}) == {"_id": "c2", "status": "replaced"}

    upserted = await cases.update_one({"_id": "c9"}, {"$setOnInsert": {"k": 1}}, upsert=True)
    assert upserted.upserted_id == "c9"
    assert upserted.matched_count == 0

    assert (await cases.delete_one({"status": "closed"})).deleted_count == 1
    assert (await cases.delete_many({})).deleted_count == 3
    assert await cases.find_one({}) is None


async def test_a_duplicate_insert_raises_duplicate_key_error_naming_the_index(
    db: AsyncDatabase[dict[str, Any]],
) -> None:
    users = db["users"]
    await users.create_index("email", unique=True)
    await users.insert_one({"_id": 1, "email": "a@example.jp"})

    with pytest.raises(DuplicateKeyError) as by_index:
        await users.insert_one({"_id": 2, "email": "a@example.jp"})
    assert by_index.value.code == 11000
    assert by_index.value.details is not None
    assert by_index.value.details["keyPattern"] == {"email": 1}
    assert by_index.value.details["keyValue"] == {"email": "a@example.jp"}

    with pytest.raises(DuplicateKeyError) as by_id:
        await users.insert_one({"_id": 1, "email": "b@example.jp"})
    assert by_id.value.details is not None
    assert by_id.value.details["keyPattern"] == {"_id": 1}
    assert await users.count_documents({}) == 1


async def test_an_upsert_onto_a_taken_unique_value_raises_duplicate_key_error(
    db: AsyncDatabase[dict[str, Any]],
) -> None:
    users = db["users"]
    await users.create_index("email", unique=True)
    await users.insert_one({"_id": 1, "email": "a@example.jp"})

    with pytest.raises(DuplicateKeyError):
        await users.update_one({"_id": 2}, {"$set": {"email": "a@example.jp"}}, upsert=True)
    with pytest.raises(DuplicateKeyError):
        await users.find_one_and_update(
            {"_id": 3}, {"$set": {"email": "a@example.jp"}}, upsert=True
        )
    assert await users.count_documents({}) == 1


async def test_insert_many_reports_each_duplicate_and_unordered_goes_on(
    db: AsyncDatabase[dict[str, Any]],
) -> None:
    items = db["items"]
    await items.insert_one({"_id": 2})

    with pytest.raises(BulkWriteError) as ordered:
        await items.insert_many([{"_id": 1}, {"_id": 2}, {"_id": 3}])
    assert ordered.value.details["nInserted"] == 1
    assert [e["index"] for e in ordered.value.details["writeErrors"]] == [1]

    with pytest.raises(BulkWriteError) as unordered:
        await items.insert_many([{"_id": 4}, {"_id": 2}, {"_id": 5}], ordered=False)
    assert unordered.value.details["nInserted"] == 2
    assert sorted(d["_id"] for d in await items.find().to_list()) == [1, 2, 4, 5]


async def test_more_than_101_documents_come_in_batches_over_get_more(
    db: AsyncDatabase[dict[str, Any]], commands: Commands
) -> None:
    await db["many"].insert_many([{"_id": i} for i in range(350)])

    seen = [doc["_id"] async for doc in db["many"].find().sort("_id", 1)]
    assert seen == list(range(350))
    assert commands.names.count("getMore") >= 1

    commands.names.clear()
    small = await db["many"].find().sort("_id", 1).batch_size(100).to_list()
    assert len(small) == 350
    assert commands.names.count("getMore") == 3


async def test_large_documents_come_in_batches_of_at_most_16_mib(
    db: AsyncDatabase[dict[str, Any]], commands: Commands
) -> None:
    blob = "x" * (1024 * 1024)
    await db["large"].insert_many([{"_id": i, "blob": blob} for i in range(40)])

    commands.names.clear()
    found = await db["large"].find({}, {"_id": 1, "blob": 1}).to_list()
    assert [doc["_id"] for doc in found] == list(range(40))
    assert all(doc["blob"] == blob for doc in found)
    assert commands.names.count("getMore") >= 2  # 40 MiB cannot come in fewer than 3 replies


async def test_a_cursor_closed_early_is_killed_on_the_server(
    server: FakeMongoServer, db: AsyncDatabase[dict[str, Any]], commands: Commands
) -> None:
    await db["many"].insert_many([{"_id": i} for i in range(300)])
    cursor = db["many"].find()
    assert (await cursor.next())["_id"] == 0
    assert len(server.backend.cursors) == 1
    await cursor.close()
    assert "killCursors" in commands.names
    assert server.backend.cursors == {}


async def test_find_sorts_skips_limits_and_projects(db: AsyncDatabase[dict[str, Any]]) -> None:
    people = db["people"]
    await people.insert_many(
        [{"_id": i, "name": f"p{i}", "age": 10 + i % 5, "secret": "x"} for i in range(20)]
    )

    found = (
        await people.find({"age": {"$gte": 12}}, {"secret": 0})
        .sort([("age", -1), ("_id", 1)])
        .skip(2)
        .limit(3)
        .to_list()
    )
    assert found == [
        {"_id": 14, "name": "p14", "age": 14},
        {"_id": 19, "name": "p19", "age": 14},
        {"_id": 3, "name": "p3", "age": 13},
    ]
    names = await people.find({}, {"name": 1, "_id": 0}).sort("_id", 1).limit(2).to_list()
    assert names == [{"name": "p0"}, {"name": "p1"}]
    assert await people.find_one({"age": 11}, sort=[("_id", -1)]) is not None
    assert (await people.find_one({"age": 11}, sort=[("_id", -1)]) or {})["_id"] == 16


async def test_aggregate_matches_and_groups(db: AsyncDatabase[dict[str, Any]]) -> None:
    facts = db["facts"]
    await facts.insert_many(
        [{"kind": k, "n": n} for k, n in [("a", 1), ("a", 2), ("b", 5), ("c", 7), ("a", 4)]]
    )

    cursor = await facts.aggregate(
        [
            {"$match": {"kind": {"$in": ["a", "b"]}}},
            {"$group": {"_id": "$kind", "total": {"$sum": "$n"}, "count": {"$sum": 1}}},
            {"$sort": {"_id": 1}},
        ]
    )
    assert await cursor.to_list() == [
        {"_id": "a", "total": 7, "count": 3},
        {"_id": "b", "total": 5, "count": 1},
    ]
    big = await facts.aggregate([{"$match": {}}, {"$project": {"_id": 0, "n": 1}}], batchSize=2)
    assert len(await big.to_list()) == 5


async def test_count_documents_and_distinct(db: AsyncDatabase[dict[str, Any]]) -> None:
    events = db["events"]
    assert await events.count_documents({}) == 0
    await events.insert_many([{"user": f"u{i % 3}", "i": i} for i in range(10)])

    assert await events.count_documents({}) == 10
    assert await events.count_documents({"user": "u1"}) == 3
    assert await events.count_documents({}, skip=2, limit=5) == 5
    assert await events.estimated_document_count() == 10
    assert sorted(await events.distinct("user")) == ["u0", "u1", "u2"]
    assert sorted(await events.distinct("i", {"user": "u2"})) == [2, 5, 8]


async def test_find_one_and_update_returns_the_document_after_and_upserts(
    db: AsyncDatabase[dict[str, Any]],
) -> None:
    counters = db["counters"]
    await counters.insert_one({"_id": "seq", "n": 1})

    after = await counters.find_one_and_update(
        {"_id": "seq"}, {"$inc": {"n": 1}}, return_document=ReturnDocument.AFTER
    )
    assert after == {"_id": "seq", "n": 2}
    before = await counters.find_one_and_update({"_id": "seq"}, {"$inc": {"n": 1}})
    assert before == {"_id": "seq", "n": 2}

    created = await counters.find_one_and_update(
        {"_id": "new"},
        {"$inc": {"n": 1}},
        upsert=True,
        return_document=ReturnDocument.AFTER,
        projection={"_id": 0},
    )
    assert created == {"n": 1}
    assert (
        await counters.find_one_and_update({"_id": "other"}, {"$set": {"n": 0}}, upsert=True)
        is None
    )
    assert await counters.find_one_and_update({"_id": "absent"}, {"$set": {"n": 0}}) is None

    first = await counters.find_one_and_update(
        {}, {"$set": {"touched": True}}, sort=[("_id", -1)], return_document=ReturnDocument.AFTER
    )
    assert first is not None
    assert first["_id"] == "seq"
    removed = await counters.find_one_and_delete({"_id": "new"})
    assert removed == {"_id": "new", "n": 1}
    assert await counters.count_documents({}) == 2


async def test_bulk_write_applies_mixed_operations(db: AsyncDatabase[dict[str, Any]]) -> None:
    queue = db["queue"]
    await queue.insert_many([{"_id": 1, "s": "old"}, {"_id": 2, "s": "old"}])

    result = await queue.bulk_write(
        [
            InsertOne({"_id": 3, "s": "new"}),
            UpdateOne({"_id": 1}, {"$set": {"s": "seen"}}),
            UpdateOne({"_id": 4}, {"$set": {"s": "up"}}, upsert=True),
            ReplaceOne({"_id": 2}, {"s": "replaced"}),
            DeleteMany({"s": "new"}),
        ]
    )
    assert result.inserted_count == 1
    assert result.matched_count == 2
    assert result.modified_count == 2
    assert result.upserted_ids == {2: 4}
    assert result.deleted_count == 1
    assert {d["_id"]: d["s"] for d in await queue.find().to_list()} == {
        1: "seen",
        2: "replaced",
        4: "up",
    }


async def test_index_information_lists_created_indexes(
    db: AsyncDatabase[dict[str, Any]],
) -> None:
    sessions = db["sessions"]
    assert await sessions.index_information() == {}
    assert await sessions.create_index([("user", 1), ("at", -1)], unique=True) == "user_1_at_-1"
    await sessions.create_index("expires", expireAfterSeconds=60, name="ttl")

    info = await sessions.index_information()
    assert info["_id_"]["key"] == [("_id", 1)]
    assert info["user_1_at_-1"]["key"] == [("user", 1), ("at", -1)]
    assert info["user_1_at_-1"]["unique"] is True
    assert info["ttl"]["expireAfterSeconds"] == 60
    assert "sessions" in await db.list_collection_names()


async def test_tz_aware_datetimes_round_trip_as_the_same_instant_in_utc(
    db: AsyncDatabase[dict[str, Any]],
) -> None:
    at = datetime(2025, 4, 1, 9, 30, 15, 123456, tzinfo=JST)
    await db["times"].insert_one({"_id": 1, "at": at})

    doc = await db["times"].find_one({"at": {"$gte": at - timedelta(seconds=1)}})
    assert doc is not None
    assert doc["at"].utcoffset() == timedelta(0)
    assert doc["at"] == at.replace(microsecond=123000)  # BSON keeps milliseconds
    assert doc["at"].astimezone(UTC).hour == 0


async def test_an_unknown_command_is_refused_as_command_not_found(
    db: AsyncDatabase[dict[str, Any]],
) -> None:
    with pytest.raises(OperationFailure) as unknown:
        await db.command("frobnicate")
    assert unknown.value.code == 59
    assert unknown.value.details is not None
    assert unknown.value.details["codeName"] == "CommandNotFound"

    with pytest.raises(OperationFailure) as transaction:
        await db.command({"find": "x", "startTransaction": True})
    assert transaction.value.code == 20


async def test_bad_input_is_an_error_reply_not_a_crash(db: AsyncDatabase[dict[str, Any]]) -> None:
    await db["x"].insert_one({"_id": 1, "n": "text"})
    with pytest.raises(OperationFailure):
        await db["x"].update_one({"_id": 1}, {"$inc": {"n": 1}})
    with pytest.raises(OperationFailure):
        await db["x"].find_one({"n": {"$nosuchoperator": 1}})
    with pytest.raises(OperationFailure):
        await db.command({"find": "x", "filter": "not a document"})
    with pytest.raises(OperationFailure):
        await db.command({"getMore": 12345, "collection": "x"})
    assert await db["x"].find_one({"_id": 1}) == {"_id": 1, "n": "text"}


async def test_an_unacknowledged_write_gets_no_reply_and_is_applied(
    db: AsyncDatabase[dict[str, Any]],
) -> None:
    fire_and_forget = db["w0"].with_options(write_concern=db.write_concern.__class__(w=0))
    result = await fire_and_forget.insert_one({"_id": 1})
    assert result.acknowledged is False
    # The next command on the same pool is answered, so no stray reply was left on the socket.
    assert await db["w0"].find_one({"_id": 1}) == {"_id": 1}


async def test_a_broken_frame_closes_only_its_connection(
    server: FakeMongoServer, db: AsyncDatabase[dict[str, Any]]
) -> None:
    await db["x"].insert_one({"_id": 1})
    loop = asyncio.get_running_loop()

    def send_garbage(frame: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
            raw.sendall(frame)
            return raw.recv(100)  # b"" once the server closes

    garbage = struct.pack("<iiii", 16 + 8, 7, 0, 2013) + b"\x00\x00\x00\x00\x09\xff\xff\xff"
    assert await loop.run_in_executor(None, send_garbage, garbage) == b""
    oversized = struct.pack("<iiii", 2**30, 8, 0, 2013)
    assert await loop.run_in_executor(None, send_garbage, oversized) == b""
    assert await db["x"].find_one({"_id": 1}) == {"_id": 1}


def _op_msg(request_id: int, flags: int, body: dict[str, Any], **sequences: list[Any]) -> bytes:
    payload = struct.pack("<I", flags) + b"\x00" + bson.encode(body)
    for identifier, documents in sequences.items():
        section = identifier.encode() + b"\x00" + b"".join(bson.encode(d) for d in documents)
        payload += b"\x01" + struct.pack("<i", 4 + len(section)) + section
    if flags & 1:
        payload += b"\x00\x00\x00\x00"  # the CRC-32C (not checked over loopback)
    return struct.pack("<iiii", 16 + len(payload), request_id, 0, 2013) + payload


def _read_reply(raw: socket.socket) -> tuple[int, dict[str, Any]]:
    header = raw.recv(16, socket.MSG_WAITALL)
    length, _, response_to, op_code = struct.unpack("<iiii", header)
    assert op_code == 2013
    payload = raw.recv(length - 16, socket.MSG_WAITALL)
    return response_to, bson.decode(payload[5:])


async def test_document_sequences_checksums_and_more_to_come_are_read_as_pymongo_sends_them(
    server: FakeMongoServer, db: AsyncDatabase[dict[str, Any]]
) -> None:
    def converse() -> list[tuple[int, dict[str, Any]]]:
        replies = []
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
            insert = {"insert": "seq", "$db": "t_fakemongo"}
            raw.sendall(_op_msg(1, 1, insert, documents=[{"_id": 1}, {"_id": 2}]))
            replies.append(_read_reply(raw))
            raw.sendall(_op_msg(2, 2, insert, documents=[{"_id": 3}]))  # moreToCome: no reply
            count = {"count": "seq", "$db": "t_fakemongo"}
            raw.sendall(_op_msg(3, 0, count))
            replies.append(_read_reply(raw))
        return replies

    replies = await asyncio.get_running_loop().run_in_executor(None, converse)
    assert replies[0][0] == 1
    assert replies[0][1]["n"] == 2
    assert replies[1][0] == 3  # the answer to the count, not a stray one to the w:0 insert
    assert replies[1][1]["n"] == 3


async def test_collections_and_databases_are_listed_and_dropped(
    client: AsyncMongoClient[dict[str, Any]], db: AsyncDatabase[dict[str, Any]]
) -> None:
    await db["a"].insert_one({})
    await db["b"].insert_one({})
    assert sorted(await db.list_collection_names()) == ["a", "b"]
    assert "t_fakemongo" in await client.list_database_names()

    await db.drop_collection("a")
    await db.drop_collection("never-existed")
    assert await db.list_collection_names() == ["b"]
    await client.drop_database("t_fakemongo")
    assert "t_fakemongo" not in await client.list_database_names()


async def test_hello_says_it_is_fakemongo(client: AsyncMongoClient[dict[str, Any]]) -> None:
    hello = await client.admin.command("hello")
    assert hello["soudanFakemongo"] is True
    assert hello["isWritablePrimary"] is True
    assert hello["maxWireVersion"] == 21


def test_the_console_script_announces_its_address_and_stops_on_sigterm() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "soudan_fakemongo.main", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        announced = json.loads(process.stdout.readline())
        assert announced["fakemongo"] == "listening"
        with socket.create_connection(("127.0.0.1", announced["port"]), timeout=5):
            pass
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
        assert process.stderr is not None
        assert "NOT MongoDB" in process.stderr.read()
    finally:
        process.kill()
        process.wait()


def test_exec_runs_a_command_against_a_fresh_server_and_passes_its_status_on() -> None:
    script = (
        "import os, sys, pymongo;"
        "c = pymongo.MongoClient(os.environ['MONGODB_URL'], serverSelectionTimeoutMS=3000);"
        "c.t.x.insert_one({'_id': 1});"
        "sys.exit(40 + c.t.x.count_documents({}))"
    )
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "soudan_fakemongo.main",
            "--port",
            "0",
            "--exec",
            sys.executable,
            "-c",
            script,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ, MONGODB_URL="memory://"),
    )
    assert completed.returncode == 41, completed.stderr
