"""The in-process store's hash indexes (soudan_shared.memory_index) change speed, not results.

The main test runs the same random sequence of operations, shaped like the services' (inserts,
updates with upserts and changes to indexed fields, replacements, claims with a sort, deletes,
finds, counts, distinct), against plain mongomock and against the indexed client, and requires
the same answers, the same errors and the same documents in the same order; after every
sequence the hash indexes must equal indexes rebuilt from the stored documents. The reference
is plain mongomock with one fix the indexed client also makes: an update's values are copied
for each document (test_update_many_does_not_make_documents_share_a_sub_document).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import mongomock
import pytest
from bson import ObjectId
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError
from soudan_shared.memory_index import (
    IndexedCollection,
    IndexedCollectionStore,
    _bucket_key,
    cursor_documents,
    indexed_client,
    indexed_collection,
)
from soudan_shared.store import MemoryClient

pytestmark = pytest.mark.unit

# -- the random workload ------------------------------------------------------------------------

IDS: list[Any] = [*"abcdefghij", 1, 2.0]
TIMES = [datetime(2026, 11, 28, hour, tzinfo=UTC) for hour in (9, 10, 11)]
STATES = ["waiting", "active", "closed"]
EMAILS = ["x@example.com", "y@example.com", "z@example.com"]

# Values of the indexed fields, including the awkward ones (missing is "not in the document").
USER_IDS = st.sampled_from(["u1", ["u1", "u2"], "u2", "u3", None, 1, True, {"id": "u1"}])
JST = st.sampled_from(
    [{"month": "2026-11"}, {"month": "2026-12"}, [{"month": "2026-11"}], "2026-11", {}]
)
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "user_id": USER_IDS,
    "state": st.sampled_from(STATES),
    "at": st.sampled_from(TIMES),
    "urgent": st.booleans(),
    "jst": JST,
    "jst.month": st.sampled_from(["2026-11", "2026-12", None]),
    "keywords": st.lists(st.sampled_from(["k1", "k2"]), max_size=2),
    "n": st.integers(0, 2),
}
CASE_INDEXES = [
    [("user_id", 1), ("at", -1)],
    [("state", 1), ("urgent", -1), ("at", 1)],
    [("jst.month", 1), ("type", 1)],
    [("at", 1)],
]


def fields(names: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Some of ``names`` with values (not ``jst`` and ``jst.month`` together: a conflict)."""
    pairs = st.lists(st.sampled_from(names), unique=True, max_size=4).flatmap(
        lambda chosen: st.fixed_dictionaries({n: FIELD_VALUES[n] for n in chosen})
    )
    return pairs.map(lambda d: {k: v for k, v in d.items() if k != "jst.month" or "jst" not in d})


CASE_DOC = st.fixed_dictionaries(
    {"_id": st.sampled_from(IDS)},
    optional={
        n: FIELD_VALUES[n] for n in ("user_id", "state", "at", "urgent", "jst", "keywords", "n")
    },
)
STAFF_DOC = st.builds(
    lambda i, e, n: {"_id": i, "email": e, "n": n},
    st.sampled_from(IDS),
    st.sampled_from(EMAILS),
    st.integers(0, 2),
)

# Equalities on ``_id`` and on indexed fields (the lookups the indexes answer) come twice as
# often as the other clause shapes the services use.
CASE_EQUALITY = st.one_of(
    st.tuples(st.just("_id"), st.sampled_from(IDS)),
    st.tuples(st.just("user_id"), st.sampled_from(["u1", "u2", "u3", 1])),
    st.tuples(st.just("state"), st.sampled_from(STATES)),
    st.tuples(st.just("jst.month"), st.sampled_from(["2026-11", "2026-12"])),
    st.tuples(st.just("at"), st.sampled_from(TIMES)),
)
CASE_OTHER_CLAUSE = st.one_of(
    st.tuples(st.just("_id"), st.builds(lambda v: {"$ne": v}, st.sampled_from(IDS))),
    st.tuples(
        st.just("_id"), st.builds(lambda v: {"$in": v}, st.lists(st.sampled_from(IDS), max_size=3))
    ),
    st.tuples(st.just("user_id"), USER_IDS),
    st.tuples(
        st.just("user_id"),
        st.builds(lambda v: {"$in": v}, st.lists(st.sampled_from(["u1", "u2"]), max_size=2)),
    ),
    st.tuples(st.just("state"), st.builds(lambda v: {"$in": v}, st.just(["waiting", "active"]))),
    st.tuples(st.just("state"), st.builds(lambda v: {"$ne": v}, st.sampled_from(STATES))),
    st.tuples(st.just("urgent"), st.booleans()),
    st.tuples(
        st.just("at"),
        st.builds(
            lambda op, t: {op: t}, st.sampled_from(["$gte", "$lte", "$lt"]), st.sampled_from(TIMES)
        ),
    ),
    st.tuples(
        st.sampled_from(["user_id", "state", "jst.month", "keywords"]),
        st.builds(lambda b: {"$exists": b}, st.booleans()),
    ),
)
CASE_CLAUSE = st.one_of(CASE_EQUALITY, CASE_EQUALITY, CASE_OTHER_CLAUSE)
STAFF_CLAUSE = st.one_of(
    st.tuples(st.just("_id"), st.sampled_from(IDS)),
    st.tuples(st.just("email"), st.sampled_from([*EMAILS, None])),
    st.tuples(st.just("n"), st.integers(0, 2)),
)


def filters(clause: st.SearchStrategy[tuple[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Mostly one or two clauses; one filter in ten empty, one in ten with an ``$or``."""
    simple = st.lists(clause, min_size=1, max_size=2).map(dict)
    with_or = st.builds(lambda f, a, b: {**f, "$or": [a, b]}, simple, simple, simple)
    return st.integers(0, 9).flatmap(
        lambda n: st.just({}) if n == 0 else with_or if n == 1 else simple
    )


SET_FIELDS = ["user_id", "state", "at", "urgent", "jst", "jst.month"]
CASE_UPDATE = st.fixed_dictionaries(
    {},
    optional={
        "$set": fields(SET_FIELDS).filter(bool),
        "$unset": st.lists(st.sampled_from(SET_FIELDS), min_size=1, max_size=2).map(
            lambda ks: dict.fromkeys(ks, "")
        ),
        "$addToSet": st.builds(
            lambda ks: {"keywords": {"$each": ks}}, st.lists(st.sampled_from(["k1", "k3"]))
        ),
        "$max": st.builds(lambda t: {"at": t}, st.sampled_from(TIMES)),
        "$inc": st.just({"n": 1}),
        "$setOnInsert": fields(["state", "urgent"]).filter(bool),
    },
).filter(bool)
STAFF_UPDATE = st.one_of(
    st.builds(lambda e: {"$set": {"email": e}}, st.sampled_from(EMAILS)),
    st.just({"$inc": {"n": 1}}),
    st.builds(lambda e: {"$set": {"n": 0}, "$setOnInsert": {"email": e}}, st.sampled_from(EMAILS)),
)
# What follows a ``$match`` (the console's queue previews: sort, then group), and a pipeline
# that does not start with one.
PIPELINES = [
    "match",
    "match_sort_group",
    "sort_then_match",
]
SORTS = st.sampled_from([None, [("at", -1)], [("state", 1), ("at", 1)], [("n", 1)], [("_id", 1)]])


def operations(
    name: str,
    doc: st.SearchStrategy[dict[str, Any]],
    search: st.SearchStrategy[dict[str, Any]],
    update: st.SearchStrategy[dict[str, Any]],
    distinct_fields: list[str],
) -> st.SearchStrategy[tuple[Any, ...]]:
    replacement = doc.map(lambda d: {k: v for k, v in d.items() if k != "_id"})
    return st.one_of(
        st.tuples(st.just("insert_one"), st.just(name), doc),
        st.tuples(st.just("insert_many"), st.just(name), st.lists(doc, min_size=1, max_size=3)),
        st.tuples(st.just("update_one"), st.just(name), search, update, st.booleans()),
        st.tuples(st.just("update_many"), st.just(name), search, update, st.booleans()),
        st.tuples(st.just("replace_one"), st.just(name), search, replacement, st.booleans()),
        st.tuples(
            st.just("find_one_and_update"),
            st.just(name),
            search,
            update,
            SORTS,
            st.booleans(),
            st.booleans(),
        ),
        st.tuples(st.just("delete_one"), st.just(name), search),
        st.tuples(st.just("delete_many"), st.just(name), search),
        st.tuples(
            st.just("find"), st.just(name), search, SORTS, st.integers(0, 2), st.integers(0, 2)
        ),
        st.tuples(st.just("find_one"), st.just(name), search),
        st.tuples(st.just("count"), st.just(name), search),
        st.tuples(st.just("distinct"), st.just(name), st.sampled_from(distinct_fields), search),
        st.tuples(st.just("aggregate"), st.just(name), search, st.sampled_from(PIPELINES)),
    )


CASE_OPERATIONS = operations(
    "cases", CASE_DOC, filters(CASE_CLAUSE), CASE_UPDATE, ["state", "user_id"]
)
STAFF_OPERATIONS = operations("staff", STAFF_DOC, filters(STAFF_CLAUSE), STAFF_UPDATE, ["email"])
OPERATIONS = st.integers(0, 3).flatmap(lambda n: STAFF_OPERATIONS if n == 0 else CASE_OPERATIONS)
# Start from a few documents in each collection, so that most operations find something.
SEED = st.tuples(
    st.lists(CASE_DOC, min_size=3, max_size=10, unique_by=lambda d: d["_id"]),
    st.lists(STAFF_DOC, max_size=3, unique_by=lambda d: d["_id"]),
).map(
    lambda seed: [
        ("insert_one", n, d) for n, ds in zip(("cases", "staff"), seed, strict=True) for d in ds
    ]
)

# -- running it on both ---------------------------------------------------------------------------


_PlainCollection: Any = mongomock.collection.Collection


class ReferenceCollection(_PlainCollection):  # type: ignore[misc]
    """Plain mongomock, but with an update's values copied for each document it changes."""

    def _apply_update_document(self, existing: Any, spec: Any, document: Any, new: bool) -> None:
        super()._apply_update_document(existing, spec, copy.deepcopy(document), new)


def reference_collection(database: Any, name: str) -> Any:
    options = database.codec_options
    return ReferenceCollection(database, name, _db_store=database._store, codec_options=options)


def prepare(database: Any, collection: Callable[[Any, str], Any]) -> dict[str, Any]:
    cases, staff = collection(database, "cases"), collection(database, "staff")
    for keys in CASE_INDEXES:
        cases.create_index(keys)
    staff.create_index([("email", 1)], unique=True, name="email")
    return {"cases": cases, "staff": staff}


def pipeline(shape: str, search: dict[str, Any]) -> list[dict[str, Any]]:
    group = {"_id": "$state", "first": {"$first": "$_id"}, "count": {"$sum": 1}}
    if shape == "match":
        return [{"$match": search}]
    if shape == "match_sort_group":
        return [{"$match": search}, {"$sort": {"n": -1}}, {"$group": group}]
    return [{"$sort": {"n": 1}}, {"$match": search}]


def apply(
    collections: dict[str, Any], op: tuple[Any, ...], read: Callable[[Any], list[Any]] = list
) -> Any:
    """Run ``op``; its answer, or the error it raised. ``read`` reads a find's cursor."""
    kind, name, *args = copy.deepcopy(op)
    col = collections[name]
    try:
        if kind == "insert_one":
            return col.insert_one(args[0]).inserted_id
        if kind == "insert_many":
            return col.insert_many(args[0]).inserted_ids
        if kind in ("update_one", "update_many", "replace_one"):
            r = getattr(col, kind)(args[0], args[1], upsert=args[2])
            return (r.matched_count, r.modified_count, r.upserted_id)
        if kind == "find_one_and_update":
            search, update, sort, upsert, after = args
            returned = ReturnDocument.AFTER if after else ReturnDocument.BEFORE
            return col.find_one_and_update(
                search, update, sort=sort, upsert=upsert, return_document=returned
            )
        if kind in ("delete_one", "delete_many"):
            return getattr(col, kind)(args[0]).deleted_count
        if kind == "find":
            search, sort, skip, limit = args
            cursor = col.find(search)
            if sort:
                cursor = cursor.sort(sort)
            return read(cursor.skip(skip).limit(limit))
        if kind == "find_one":
            return col.find_one(args[0])
        if kind == "count":
            return col.count_documents(args[0])
        if kind == "distinct":
            return col.distinct(args[0], args[1])
        if kind == "aggregate":
            return list(col.aggregate(pipeline(args[1], args[0])))
    except Exception as exc:  # the same error on both sides is part of the contract
        return ("raised", type(exc).__name__, str(exc))
    raise AssertionError(kind)


def canonical(value: Any, ids: dict[ObjectId, str]) -> Any:
    """``value`` with generated ObjectIds numbered in order of appearance (they differ by run)."""
    if isinstance(value, ObjectId):
        return ids.setdefault(value, f"oid{len(ids)}")
    if isinstance(value, dict):
        return {k: canonical(v, ids) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [canonical(v, ids) for v in value]
    if isinstance(value, str) and len(value) > 30:  # error texts may quote an ObjectId
        for oid, alias in ids.items():
            value = value.replace(str(oid), alias)
    return value


def assert_indexes_match_documents(store: IndexedCollectionStore) -> None:
    """The hash indexes equal indexes rebuilt from the stored documents, order included."""
    documents = store._documents
    assert sorted(store._order, key=store._order.__getitem__) == list(documents)
    for path, index in store._hash_indexes.items():
        expected = {key: _bucket_key(doc, path) for key, doc in documents.items()}
        assert index.bucket_of == expected, path
        rebuilt: dict[Any, set[Any]] = {}
        for key, bucket in expected.items():
            rebuilt.setdefault(bucket, set()).add(key)
        assert index.buckets == rebuilt, path


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(SEED, st.lists(OPERATIONS, min_size=5, max_size=50))
def test_indexed_store_gives_the_same_results_as_plain_mongomock(
    seed: list[tuple[Any, ...]], ops: list[tuple[Any, ...]]
) -> None:
    ops = seed + ops
    plain = prepare(mongomock.MongoClient(tz_aware=True)["db"], reference_collection)
    fast = prepare(indexed_client(tz_aware=True)["db"], indexed_collection)
    plain_ids: dict[ObjectId, str] = {}
    fast_ids: dict[ObjectId, str] = {}
    for op in ops:
        expected = canonical(apply(plain, op), plain_ids)
        assert canonical(apply(fast, op, cursor_documents), fast_ids) == expected, op
    for name in ("cases", "staff"):
        expected = canonical(list(plain[name].find({})), plain_ids)
        assert canonical(list(fast[name].find({})), fast_ids) == expected, name
        assert_indexes_match_documents(fast[name]._store)


# -- targeted cases ------------------------------------------------------------------------------


def test_lookups_use_the_indexes_and_natural_order() -> None:
    cases = indexed_collection(indexed_client()["db"], "cases")
    cases.create_index([("user_id", 1), ("opened_at", -1)])
    cases.insert_many([{"_id": f"c{n}", "user_id": f"u{n % 3}"} for n in range(30)])
    cases.update_one({"_id": "c0"}, {"$set": {"user_id": "u2"}})  # moves bucket, keeps position
    store = cases._store
    assert [d["_id"] for d in store.candidates({"_id": "c7"}) or []] == ["c7"]
    found = store.candidates({"user_id": "u2", "state": "x"}) or []
    assert [d["_id"] for d in found] == ["c0", *(f"c{n}" for n in range(2, 30, 3))]
    assert store.candidates({"state": "waiting"}) is None  # not indexed: mongomock scans
    found = store.candidates({"user_id": {"$in": ["u1", "u0"]}}) or []
    assert [d["_id"] for d in found] == [f"c{n}" for n in range(1, 30) if n % 3 < 2]
    assert store.candidates({"user_id": {"$in": ["u1", None]}}) is None  # None: also missing
    assert [d["_id"] for d in cases.find({"user_id": "u2"}).limit(2)] == ["c0", "c2"]


def test_a_unique_index_raises_duplicate_key_error_and_rolls_back() -> None:
    staff = indexed_collection(indexed_client()["db"], "staff")
    staff.create_index([("email", 1)], unique=True)
    staff.insert_one({"_id": "s1", "email": "a@example.com"})
    staff.insert_one({"_id": "s2", "email": "b@example.com"})
    with pytest.raises(DuplicateKeyError):
        staff.insert_one({"_id": "s3", "email": "a@example.com"})
    with pytest.raises(DuplicateKeyError):
        staff.update_one({"_id": "s2"}, {"$set": {"email": "a@example.com"}})
    with pytest.raises(DuplicateKeyError):
        staff.update_one({"_id": "s9"}, {"$set": {"email": "a@example.com"}}, upsert=True)
    assert [d["_id"] for d in staff.find({"email": "a@example.com"})] == ["s1"]
    assert [d["_id"] for d in staff.find({"email": "b@example.com"})] == ["s2"]
    assert staff.count_documents({}) == 2
    assert_indexes_match_documents(staff._store)


def test_update_many_does_not_make_documents_share_a_sub_document() -> None:
    cases = indexed_collection(indexed_client()["db"], "cases")
    cases.create_index([("jst.month", 1)])
    cases.insert_many([{"_id": "a"}, {"_id": "b"}])
    cases.update_many({}, {"$set": {"jst": {"month": "2026-11"}}})
    cases.update_one({"_id": "a"}, {"$set": {"jst.month": "2026-12"}})
    assert [d["_id"] for d in cases.find({"jst.month": "2026-11"})] == ["b"]
    assert [d["_id"] for d in cases.find({"jst.month": "2026-12"})] == ["a"]
    assert_indexes_match_documents(cases._store)


def test_ttl_expiry_and_drop_leave_the_indexes_in_step() -> None:
    client = indexed_client(tz_aware=True)
    sources = indexed_collection(client["db"], "sources")
    sources.create_index([("expires_at", 1)], expireAfterSeconds=0)
    sources.create_index([("ip", 1)])
    past, future = datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC) + timedelta(hours=1)
    sources.insert_many(
        [
            {"_id": "old", "ip": "1", "expires_at": past},
            {"_id": "new", "ip": "1", "expires_at": future},
        ]
    )
    assert [d["_id"] for d in sources.find({"ip": "1"})] == ["new"]
    assert_indexes_match_documents(sources._store)
    client.drop_database("db")
    assert sources.find_one({"ip": "1"}) is None
    sources.insert_one({"_id": "new", "ip": "2"})
    assert [d["_id"] for d in sources.find({"ip": "2"})] == ["new"]


async def test_the_memory_client_uses_indexed_collections_once_per_name() -> None:
    db = MemoryClient()["soudan"]
    cases = db["cases"]
    assert db["cases"] is cases
    assert isinstance(cases._sync, IndexedCollection)
    await cases.create_index([("user_id", 1)])
    await cases.insert_one({"_id": "c1", "user_id": "u1"})
    assert await db["cases"].find_one({"user_id": "u1"}) == {"_id": "c1", "user_id": "u1"}
