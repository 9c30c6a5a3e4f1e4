"""Hash indexes for the in-process store, so mongomock stops scanning whole collections.

Why: behind every ``find``, ``update``, ``delete``, ``count`` and unique-index check, mongomock
(4.3) calls ``Collection._iter_documents``, which copies the list of every document of the
collection and runs its matcher on each, even for ``{"_id": x}``. Under the whole-service
benchmark that was most of ``soudan-all``'s CPU (docs/BENCHMARKS.md, "Whole service").

What changes: only *which documents mongomock's own matcher looks at*. For a filter with a
top-level equality (``v`` or ``{"$in": [...]}``) on ``_id`` or on the first field of an index
created on the collection (the services' ``IndexSpec``), :meth:`IndexedCollectionStore.candidates`
returns the documents that can match, in the collection's order; mongomock then applies the
whole filter to them exactly as it would have to every document, and sorting, projection,
copying, updates, upserts, TTL expiry and errors stay mongomock's. Every other filter (no usable
equality: ``{}``, ranges, ``$or``, ``$ne`` alone, …) scans as before. Two more shortcuts, same
results: an aggregation starting with ``$match`` takes its documents from ``find`` rather than
from a copy of the whole collection, and :func:`cursor_documents` copies only the documents a
cursor's skip and limit keep.

Why the results are identical: a document whose indexed value is a plain scalar (str, int,
float, bool, datetime, ObjectId) is filed under that value; one whose value is a list or tuple,
is reached through a list, or is anything else unusual is filed under ``_OTHER`` and is a
candidate for every lookup. mongomock matches a plain search value ``v`` against a scalar
``x`` by ``x == v``, and ``x == v`` implies ``hash(x) == hash(v)`` for these types, so a dict
lookup by ``v`` misses no match; missing fields and None never equal a plain value. Candidates
are returned in insertion order (a per-document sequence number), so "first match", ties in a
sort and natural order are unchanged.

Keeping the indexes in step: mongomock writes documents only through
``CollectionStore.__setitem__`` / ``__delitem__`` / ``drop`` (inserts, rollbacks, deletes, TTL
expiry), except updates, which modify the stored dict in place in
``Collection._apply_update_document`` / ``_apply_update_pipeline``; those two are wrapped to
re-file the document afterwards (before mongomock's own unique-index check, which therefore
also uses the indexes). One deliberate difference from plain mongomock: an update's values are
copied for each document it changes (plain mongomock lets the documents of an ``update_many``
share a sub-document, so changing one later changed all; MongoDB never does that).

This module is the only place that reaches into mongomock's internals. It applies only to
clients made by :func:`indexed_client` (the project's ``MemoryClient``); the private names it
relies on are pinned by shared/tests/test_store_memory_fast.py, which compares it with plain
mongomock on random operation sequences.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

import mongomock
from bson import ObjectId
from mongomock import aggregate, collection, filtering, helpers, store

# mongomock's modules are unannotated: its classes are taken as Any here.
_Collection: Any = collection.Collection
_CollectionStore: Any = store.CollectionStore
_DatabaseStore: Any = store.DatabaseStore
_ServerStore: Any = store.ServerStore
_filter_applies: Any = filtering.filter_applies
_process_pipeline: Any = aggregate.process_pipeline
_timezone_aware: Any = helpers.make_datetime_timezone_aware_in_document

_OTHER = object()  # bucket of documents that are candidates for every lookup
_MISSING = object()  # bucket of documents without the field: never equal to a plain value

# Values for which mongomock's equality is Python's ``==`` (and so agrees with hashing).
_PLAIN_TYPES = (str, int, float, datetime, ObjectId)


def _is_plain(value: Any) -> bool:
    return isinstance(value, _PLAIN_TYPES)


def _equal_to(clause: Any) -> list[Any] | None:
    """The values a filter clause asks a field to equal (``v``, or any of ``{"$in": [...]}``),
    when all are plain; None when the clause is anything else."""
    if _is_plain(clause):
        return [clause]
    if isinstance(clause, dict) and len(clause) == 1 and isinstance(clause.get("$in"), list):
        values: list[Any] = clause["$in"]
        if all(_is_plain(value) for value in values):
            return values
    return None


def _bucket_key(document: Mapping[str, Any], path: str) -> Any:
    """The bucket ``document`` belongs in for the (possibly dotted) field ``path``."""
    value: Any = document
    for part in path.split("."):
        if isinstance(value, list | tuple):
            return _OTHER  # mongomock looks inside arrays: always a candidate
        if not isinstance(value, dict):
            return _MISSING
        value = value.get(part, _MISSING)
    if value is _MISSING or value is None:
        return _MISSING
    return value if _is_plain(value) else _OTHER


def _store_key(document_id: Any) -> Any:
    """The key mongomock stores a document under (dict ids are wrapped to be hashable)."""
    return helpers.hashdict(document_id) if isinstance(document_id, dict) else document_id


class _HashIndex:
    """Documents' store keys by the value of one field."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.buckets: dict[Any, set[Any]] = {}
        self.bucket_of: dict[Any, Any] = {}  # store key → bucket key

    def add(self, key: Any, document: Mapping[str, Any]) -> None:
        bucket = _bucket_key(document, self.path)
        self.bucket_of[key] = bucket
        self.buckets.setdefault(bucket, set()).add(key)

    def remove(self, key: Any) -> None:
        bucket = self.bucket_of.pop(key, _MISSING)
        members = self.buckets.get(bucket)
        if members is not None:
            members.discard(key)
            if not members:
                del self.buckets[bucket]

    def count(self, values: list[Any]) -> int:
        """How many keys :meth:`lookup` would return, at most (without building the set)."""
        return sum(len(self.buckets.get(value, ())) for value in [*values, _OTHER])

    def lookup(self, values: list[Any]) -> set[Any]:
        found: set[Any] = set(self.buckets.get(_OTHER, ()))
        for value in values:
            found.update(self.buckets.get(value, ()))
        return found


class IndexedCollectionStore(_CollectionStore):  # type: ignore[misc]
    """mongomock's documents of one collection, plus hash indexes kept in step with them."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._order: dict[Any, int] = {}  # store key → insertion number (natural order)
        self._counter = itertools.count()
        self._hash_indexes: dict[str, _HashIndex] = {}

    def __setitem__(self, key: Any, value: dict[str, Any]) -> None:
        super().__setitem__(key, value)
        if key not in self._order:  # replacing keeps the position, as the OrderedDict does
            self._order[key] = next(self._counter)
        for index in self._hash_indexes.values():
            index.remove(key)
            index.add(key, value)

    def __delitem__(self, key: Any) -> None:
        super().__delitem__(key)
        del self._order[key]
        for index in self._hash_indexes.values():
            index.remove(key)

    def drop(self) -> None:
        super().drop()
        self._order.clear()
        self._hash_indexes.clear()

    def create_index(self, index_name: str, index_dict: dict[str, Any]) -> None:
        super().create_index(index_name, index_dict)
        path = index_dict["key"][0][0]  # the equality prefix a real MongoDB would use
        if path not in self._hash_indexes:
            index = self._hash_indexes[path] = _HashIndex(path)
            with self._rwlock.reader():
                for key, document in self._documents.items():
                    index.add(key, document)

    def refile(self, document: dict[str, Any], key: Any) -> None:
        """Re-index ``document`` after an in-place update, if it is the one stored at ``key``."""
        with self._rwlock.reader():
            stored = self._documents.get(key) is document
        if stored:
            for index in self._hash_indexes.values():
                index.remove(key)
                index.add(key, document)

    def candidates(self, search: Mapping[str, Any]) -> list[dict[str, Any]] | None:
        """The stored documents that can match ``search``, in natural order; None: scan all."""
        self._remove_expired_documents()
        if not self._documents:
            return None  # mongomock then validates the filter against {}: keep that
        best: tuple[int, str, list[Any]] | None = None  # (at most how many, path, values)
        for path, clause in search.items():
            if path == "_id" and _is_plain(clause):  # the most frequent lookup: no set needed
                with self._rwlock.reader():
                    document = self._documents.get(clause)
                return [] if document is None else [document]
            values = _equal_to(clause)
            if values is None:
                continue
            if path == "_id":
                size = len(values)
            elif path in self._hash_indexes:
                size = self._hash_indexes[path].count(values)
            else:
                continue
            if best is None or size < best[0]:
                best = (size, path, values)
        if best is None:
            return None
        _, path, values = best
        if path == "_id":
            keys = {value for value in values if value in self._order}
        else:
            keys = self._hash_indexes[path].lookup(values)
        with self._rwlock.reader():
            documents = self._documents
            return [documents[key] for key in sorted(keys, key=self._order.__getitem__)]


class _IndexedDatabaseStore(_DatabaseStore):  # type: ignore[misc]
    def __getitem__(self, name: str) -> Any:
        collections: dict[str, Any] = self._collections
        if name not in collections:
            collections[name] = IndexedCollectionStore(name)
        return collections[name]


class _IndexedServerStore(_ServerStore):  # type: ignore[misc]
    def __getitem__(self, name: str) -> Any:
        databases: dict[str, Any] = self._databases
        if name not in databases:
            databases[name] = _IndexedDatabaseStore()
        return databases[name]


class IndexedCollection(_Collection):  # type: ignore[misc]
    """A mongomock collection that reads candidates from its store's hash indexes."""

    def aggregate(self, pipeline: list[dict[str, Any]], session: Any = None, **kw: Any) -> Any:
        """A leading ``$match`` selects its documents through ``find`` (and so the indexes)
        instead of mongomock copying the whole collection into the pipeline first."""
        first = pipeline[0] if pipeline else {}
        simple = isinstance(first, dict) and list(first) == ["$match"]
        if not simple or not isinstance(first["$match"], dict) or session or self._store.is_empty:
            return super().aggregate(pipeline, session, **kw)
        matched = list(self.find(first["$match"]))
        return _process_pipeline(matched, self.database, pipeline[1:], session)

    def _iter_documents(self, filter: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        found = self._store.candidates(filter) if isinstance(filter, dict) else None
        if found is None:
            documents: Iterator[dict[str, Any]] = super()._iter_documents(filter)
            return documents
        return (document for document in found if _filter_applies(filter, document))

    def _apply_update_document(
        self, existing_document: dict[str, Any], spec: Any, document: Any, was_insert: bool
    ) -> None:
        key = _store_key(existing_document.get("_id"))
        # mongomock's ``$set`` stores the update's own sub-documents, so an ``update_many`` left
        # its matches sharing one dict, and a later update of one changed them all (behind the
        # indexes' back). A copy per document gives each its own, as MongoDB does.
        document = copy.deepcopy(document)
        try:
            super()._apply_update_document(existing_document, spec, document, was_insert)
        finally:
            self._store.refile(existing_document, key)

    def _apply_update_pipeline(
        self, existing_document: dict[str, Any], pipeline: Any, session: Any
    ) -> None:
        key = _store_key(existing_document.get("_id"))
        try:
            super()._apply_update_pipeline(existing_document, pipeline, session)
        finally:
            self._store.refile(existing_document, key)


def cursor_documents(cursor: Any) -> list[dict[str, Any]]:
    """A mongomock ``Cursor``'s results after its skip and limit, copying only those.

    ``Cursor._compute_results`` copies (and converts the times of) every match before slicing:
    the console's queue, 200 of thousands of waiting cases, copied them all on every poll.
    """
    limit = abs(cursor._limit) if cursor._limit else None
    skip: int = cursor._skip
    documents = itertools.islice(cursor._factory(), skip, None if limit is None else skip + limit)
    if cursor.collection.codec_options.tz_aware:
        return [_timezone_aware(document) for document in documents]
    return list(documents)


def indexed_client(**kwargs: Any) -> Any:
    """A ``mongomock.MongoClient`` whose collections' stores keep hash indexes."""
    return mongomock.MongoClient(_store=_IndexedServerStore(), **kwargs)


def indexed_collection(database: Any, name: str) -> IndexedCollection:
    """``database[name]`` of an :func:`indexed_client` as an :class:`IndexedCollection`.

    Registered in the database's own cache, so mongomock's internal lookups (``$lookup``) get
    the same object.
    """
    accesses: dict[str, Any] = database._collection_accesses
    indexed = accesses.get(name)
    if not isinstance(indexed, IndexedCollection):
        plain = database.get_collection(name)  # validates the name, takes the database options
        indexed = accesses[name] = IndexedCollection(
            database,
            name,
            _db_store=database._store,
            write_concern=plain.write_concern,
            read_concern=plain.read_concern,
            read_preference=plain.read_preference,
            codec_options=plain.codec_options,
        )
    return indexed
