"""The database commands PyMongo 4 sends for Soudan's store, run on one mongomock client.

Every command returns its reply document; a failure raises :class:`CommandError` with the code
and code name MongoDB uses for it, so PyMongo raises the same exception it would against a real
server (``DuplicateKeyError``, ``BulkWriteError``, ``OperationFailure``, ``CursorNotFound`` …).
Per-document failures of ``insert``/``update``/``delete`` are ``writeErrors`` in an ``ok: 1``
reply, as MongoDB sends them.

The client is :func:`soudan_shared.memory_index.indexed_client` and its collections are
:func:`~soudan_shared.memory_index.indexed_collection`, the same hash-indexed mongomock the
in-process ``MemoryClient`` uses: same matching, same results, same speed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import mongomock
from bson.raw_bson import RawBSONDocument
from mongomock import filtering, helpers
from soudan_shared.memory_index import cursor_documents, indexed_client, indexed_collection

from soudan_fakemongo.wire import MAX_BSON_SIZE, MAX_MESSAGE_SIZE, encode

# mongomock's modules are unannotated: its functions are taken as Any here.
_filter_applies: Any = filtering.filter_applies
_get_value_by_dot: Any = helpers.get_value_by_dot

MAX_WIRE_VERSION = 21  # MongoDB 7.0
MAX_WRITE_BATCH_SIZE = 100_000
SESSION_TIMEOUT_MINUTES = 30
DEFAULT_FIRST_BATCH = 101  # documents in a cursor's first batch when the client names none
CURSOR_IDLE_SECONDS = 600  # mongod's cursorTimeoutMillis default
MARKER = "soudanFakemongo"  # in hello and buildInfo: this is not a MongoDB server
VERSION = "7.0.0"
INTERNAL_ERROR = 1

# Fields of the command envelope the fake accepts and does not act on.
ENVELOPE = frozenset(
    {
        "lsid",
        "txnNumber",
        "$db",
        "$readPreference",
        "writeConcern",
        "readConcern",
        "$clusterTime",
        "apiVersion",
        "apiStrict",
        "apiDeprecationErrors",
        "maxTimeMS",
        "comment",
        "bypassDocumentValidation",
    }
)
# Options a real server honours and mongomock cannot: refused rather than silently ignored.
UNSUPPORTED = frozenset({"collation", "let", "tailable", "awaitData", "min", "max", "explain"})


class CommandError(Exception):
    """A command's failure, sent as ``{ok: 0, errmsg, code, codeName}``."""

    def __init__(self, code: int, code_name: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.code_name = code_name
        self.message = message
        self.extra = extra

    def reply(self) -> dict[str, Any]:
        return {
            "ok": 0.0,
            "errmsg": self.message,
            "code": self.code,
            "codeName": self.code_name,
            **self.extra,
        }


def command_not_found(name: str) -> CommandError:
    return CommandError(59, "CommandNotFound", f"no such command: '{name}'")


def bad_value(message: str) -> CommandError:
    return CommandError(2, "BadValue", message)


# -- cursors ------------------------------------------------------------------------------------


@dataclass
class Cursor:
    """A server-side cursor: the rest of a result, handed out batch by batch."""

    id: int
    namespace: str
    documents: list[dict[str, Any]]
    position: int = 0
    last_used: float = field(default_factory=time.monotonic)

    def take(self, limit: int | None) -> tuple[list[RawBSONDocument], bool]:
        """The next ``limit`` documents (all, if None) that fit in one reply, and whether they
        were the last. As mongod: at least one document, then none that would pass 16 MiB."""
        batch: list[RawBSONDocument] = []
        size = 0
        budget = MAX_BSON_SIZE - 1024  # room for the reply's own fields
        while self.position < len(self.documents) and (limit is None or len(batch) < limit):
            raw = RawBSONDocument(encode(self.documents[self.position]))
            if batch and size + len(raw.raw) > budget:
                break
            size += len(raw.raw)
            batch.append(raw)
            self.documents[self.position] = {}  # handed out: let it go
            self.position += 1
        return batch, self.position >= len(self.documents)


def _batch_size(value: Any, name: str = "batchSize") -> int | None:
    if value is None:
        return None
    if not isinstance(value, int | float) or value < 0:
        raise bad_value(f"{name} must be a non-negative number")
    return int(value)


# -- the backend ------------------------------------------------------------------------------


class Backend:
    """One mongomock client and the cursors open on it, for the whole process."""

    def __init__(self) -> None:
        self.client: Any = indexed_client(tz_aware=True)
        self.cursors: dict[int, Cursor] = {}
        self.started = time.monotonic()
        self._handlers: dict[str, Callable[[str, dict[str, Any], int], dict[str, Any]]] = {
            "hello": self._hello,
            "isMaster": self._hello,
            "ismaster": self._hello,
            "ping": lambda db, cmd, conn: {"ok": 1.0},
            "buildInfo": self._build_info,
            "buildinfo": self._build_info,
            "endSessions": lambda db, cmd, conn: {"ok": 1.0},
            "insert": self._insert,
            "update": self._update,
            "delete": self._delete,
            "find": self._find,
            "getMore": self._get_more,
            "killCursors": self._kill_cursors,
            "findAndModify": self._find_and_modify,
            "findandmodify": self._find_and_modify,
            "aggregate": self._aggregate,
            "count": self._count,
            "distinct": self._distinct,
            "create": self._create,
            "createIndexes": self._create_indexes,
            "listIndexes": self._list_indexes,
            "listCollections": self._list_collections,
            "drop": self._drop,
            "dropDatabase": self._drop_database,
            "listDatabases": self._list_databases,
        }

    def run(self, database: str, command: dict[str, Any], connection_id: int) -> dict[str, Any]:
        """The reply to ``command`` on ``database``; raises :class:`CommandError`."""
        if not command:
            raise bad_value("empty command")
        name = next(iter(command))
        if "startTransaction" in command or name in ("commitTransaction", "abortTransaction"):
            # What a standalone mongod answers.
            raise CommandError(
                20,
                "IllegalOperation",
                "Transaction numbers are only allowed on a replica set member or mongos "
                "(soudan-fakemongo has no transactions)",
            )
        handler = self._handlers.get(name)
        if handler is None:
            raise command_not_found(name)
        refused = UNSUPPORTED.intersection(command)
        if refused:
            raise CommandError(
                238,
                "NotImplemented",
                f"soudan-fakemongo (mongomock) does not support {sorted(refused)} in {name}",
            )
        return handler(database, command, connection_id)

    # -- helpers ------------------------------------------------------------------------------

    def _collection(self, database: str, command: dict[str, Any], key: str) -> Any:
        name = command.get(key)
        if not isinstance(name, str) or not name:
            raise CommandError(
                73, "InvalidNamespace", f"collection name must be a non-empty string ({key})"
            )
        try:
            return indexed_collection(self.client[database], name)
        except mongomock.InvalidName as exc:
            raise CommandError(73, "InvalidNamespace", str(exc)) from exc

    def _exists(self, database: str, collection: str) -> bool:
        return bool(collection in self.client[database].list_collection_names())

    def _open_cursor(
        self,
        namespace: str,
        documents: list[dict[str, Any]],
        *,
        first_batch: int | None,
        single_batch: bool = False,
    ) -> dict[str, Any]:
        self._reap_idle_cursors()
        cursor = Cursor(0, namespace, documents)
        batch, finished = cursor.take(DEFAULT_FIRST_BATCH if first_batch is None else first_batch)
        cursor_id = 0
        if not finished and not single_batch:
            cursor_id = self._new_cursor_id()
            cursor.id = cursor_id
            self.cursors[cursor_id] = cursor
        return {"cursor": {"id": cursor_id, "ns": namespace, "firstBatch": batch}, "ok": 1.0}

    def _new_cursor_id(self) -> int:
        while True:
            cursor_id = int.from_bytes(os.urandom(8), "little") & 0x7FFF_FFFF_FFFF_FFFF
            if cursor_id and cursor_id not in self.cursors:
                return cursor_id

    def _reap_idle_cursors(self) -> None:
        cutoff = time.monotonic() - CURSOR_IDLE_SECONDS
        for cursor_id in [c.id for c in self.cursors.values() if c.last_used < cutoff]:
            del self.cursors[cursor_id]

    # -- handshake and server information -----------------------------------------------------

    def _hello(self, database: str, command: dict[str, Any], connection_id: int) -> dict[str, Any]:
        primary_field = "isWritablePrimary" if next(iter(command)) == "hello" else "ismaster"
        return {
            "helloOk": True,
            primary_field: True,
            "maxBsonObjectSize": MAX_BSON_SIZE,
            "maxMessageSizeBytes": MAX_MESSAGE_SIZE,
            "maxWriteBatchSize": MAX_WRITE_BATCH_SIZE,
            "localTime": datetime.now(UTC),
            "logicalSessionTimeoutMinutes": SESSION_TIMEOUT_MINUTES,
            "connectionId": connection_id,
            "minWireVersion": 0,
            "maxWireVersion": MAX_WIRE_VERSION,
            "readOnly": False,
            MARKER: True,
            "ok": 1.0,
        }

    def _build_info(self, database: str, command: dict[str, Any], _: int) -> dict[str, Any]:
        return {
            "version": VERSION,
            "versionArray": [7, 0, 0, 0],
            "gitVersion": "soudan-fakemongo",
            "bits": 64,
            "maxBsonObjectSize": MAX_BSON_SIZE,
            "storageEngines": [],
            MARKER: True,
            "ok": 1.0,
        }

    # -- writes ---------------------------------------------------------------------------------

    def _insert(self, database: str, command: dict[str, Any], _: int) -> dict[str, Any]:
        collection = self._collection(database, command, "insert")
        documents = _list_of_documents(command.get("documents"), "documents")
        inserted = 0

        def insert(_: int, document: dict[str, Any]) -> None:
            nonlocal inserted
            collection.insert_one(document)
            inserted += 1

        errors = self._each_statement(command, collection, documents, insert, keyed=True)
        return _write_reply(inserted, errors)

    def _update(self, database: str, command: dict[str, Any], _: int) -> dict[str, Any]:
        collection = self._collection(database, command, "update")
        updates = _list_of_documents(command.get("updates"), "updates")
        matched = modified = 0
        upserted: list[dict[str, Any]] = []

        def update(index: int, statement: dict[str, Any]) -> None:
            nonlocal matched, modified
            raw = _update_one_statement(collection, statement)
            matched += raw["n"]
            modified += raw["nModified"]
            if raw["upserted"] is not None:
                upserted.append({"index": index, "_id": raw["upserted"]})

        errors = self._each_statement(command, collection, updates, update)
        reply = _write_reply(matched, errors)
        reply["nModified"] = modified
        if upserted:
            reply["upserted"] = upserted
        return reply

    def _delete(self, database: str, command: dict[str, Any], _: int) -> dict[str, Any]:
        collection = self._collection(database, command, "delete")
        deletes = _list_of_documents(command.get("deletes"), "deletes")
        deleted = 0

        def delete(_: int, statement: dict[str, Any]) -> None:
            nonlocal deleted
            query = statement.get("q")
            limit = statement.get("limit", 0)
            if not isinstance(query, dict):
                raise bad_value("delete statement needs a 'q' document")
            if limit not in (0, 1):
                raise bad_value("The limit field in delete objects must be 0 or 1")
            if "hint" in statement or "collation" in statement:
                raise CommandError(
                    238, "NotImplemented", "hint and collation are not supported in delete"
                )
            result = collection.delete_one(query) if limit else collection.delete_many(query)
            deleted += result.deleted_count

        errors = self._each_statement(command, collection, deletes, delete)
        return _write_reply(deleted, errors)

    def _each_statement(
        self,
        command: dict[str, Any],
        collection: Any,
        statements: list[dict[str, Any]],
        apply: Callable[[int, dict[str, Any]], None],
        *,
        keyed: bool = False,
    ) -> list[dict[str, Any]]:
        """Apply the statements of one write command in order; a failure is a write error at its
        index and, in an ordered command (the default), stops the rest, as mongod does."""
        ordered = command.get("ordered", True)
        errors: list[dict[str, Any]] = []
        for index, statement in enumerate(statements):
            try:
                apply(index, statement)
            except Exception as exc:
                document = statement if keyed else None
                errors.append(self._write_error(index, exc, collection, document))
                if ordered:
                    break
        return errors

    def _write_error(
        self, index: int, exc: Exception, collection: Any, document: dict[str, Any] | None
    ) -> dict[str, Any]:
        error = as_command_error(exc)
        entry: dict[str, Any] = {"index": index, "code": error.code, "errmsg": error.message}
        if error.code == 11000:
            entry.update(_duplicate_key_details(collection, document))
        return entry

    def _find_and_modify(self, database: str, command: dict[str, Any], _: int) -> dict[str, Any]:
        collection = self._collection(database, command, next(iter(command)))
        query = command.get("query") or {}
        sort = _sort_list(command.get("sort"))
        fields = command.get("fields")
        remove = bool(command.get("remove", False))
        update = command.get("update")
        new = bool(command.get("new", False))
        upsert = bool(command.get("upsert", False))
        if not isinstance(query, dict):
            raise bad_value("query must be a document")
        if remove == (update is not None):
            raise CommandError(
                9, "FailedToParse", "Either an update or remove=true must be specified"
            )
        if remove and (new or upsert):
            raise CommandError(9, "FailedToParse", "Cannot specify new or upsert with remove=true")
        if command.get("arrayFilters"):
            raise CommandError(238, "NotImplemented", "arrayFilters are not supported (mongomock)")
        try:
            found = collection.find_one(query, sort=sort)
            if remove:
                if found is None:
                    return _find_and_modify_reply(None, {"n": 0})
                value = collection.find_one({"_id": found["_id"]}, fields)
                collection.delete_one({"_id": found["_id"]})
                return _find_and_modify_reply(value, {"n": 1})
            if found is not None:
                before = collection.find_one({"_id": found["_id"]}, fields)
                _modify(collection, {"_id": found["_id"]}, update, upsert=False)
                after = collection.find_one({"_id": found["_id"]}, fields)
                return _find_and_modify_reply(
                    after if new else before, {"n": 1, "updatedExisting": True}
                )
            if not upsert:
                return _find_and_modify_reply(None, {"n": 0, "updatedExisting": False})
            raw = _modify(collection, query, update, upsert=True)
            upserted_id = raw["upserted"]
            value = collection.find_one({"_id": upserted_id}, fields) if new else None
            return _find_and_modify_reply(
                value, {"n": 1, "updatedExisting": False, "upserted": upserted_id}
            )
        except Exception as exc:
            error = as_command_error(exc)
            if error.code == 11000:
                details = _duplicate_key_details(collection, None)
                error.message = details.pop("errmsg")
                error.extra.update(details)
            raise error from exc

    # -- reads ----------------------------------------------------------------------------------

    def _find(self, database: str, command: dict[str, Any], _: int) -> dict[str, Any]:
        collection = self._collection(database, command, "find")
        query = command.get("filter") or {}
        if not isinstance(query, dict):
            raise bad_value("filter must be a document")
        skip = _batch_size(command.get("skip", 0), "skip") or 0
        limit = command.get("limit", 0)
        if not isinstance(limit, int | float) or limit < 0:
            raise bad_value("limit must be a non-negative number")
        cursor = collection.find(
            query,
            command.get("projection") or None,
            skip=skip,
            limit=int(limit),
            sort=_sort_list(command.get("sort")),
        )
        documents = cursor_documents(cursor)
        return self._open_cursor(
            f"{database}.{collection.name}",
            documents,
            first_batch=_batch_size(command.get("batchSize")),
            single_batch=bool(command.get("singleBatch", False)),
        )

    def _get_more(self, database: str, command: dict[str, Any], _: int) -> dict[str, Any]:
        cursor_id = command.get("getMore")
        collection = command.get("collection")
        cursor = self.cursors.get(cursor_id) if isinstance(cursor_id, int) else None
        if cursor is None:
            raise CommandError(43, "CursorNotFound", f"cursor id {cursor_id} not found")
        if cursor.namespace != f"{database}.{collection}":
            raise CommandError(
                13, "Unauthorized", f"cursor id {cursor_id} belongs to another namespace"
            )
        batch, finished = cursor.take(_batch_size(command.get("batchSize")) or None)
        if finished:
            del self.cursors[cursor.id]
        else:
            cursor.last_used = time.monotonic()
        return {
            "cursor": {
                "id": 0 if finished else cursor.id,
                "ns": cursor.namespace,
                "nextBatch": batch,
            },
            "ok": 1.0,
        }

    def _kill_cursors(self, database: str, command: dict[str, Any], _: int) -> dict[str, Any]:
        killed: list[int] = []
        not_found: list[int] = []
        for cursor_id in command.get("cursors") or []:
            if self.cursors.pop(cursor_id, None) is None:
                not_found.append(cursor_id)
            else:
                killed.append(cursor_id)
        return {
            "cursorsKilled": killed,
            "cursorsNotFound": not_found,
            "cursorsAlive": [],
            "cursorsUnknown": [],
            "ok": 1.0,
        }

    def _aggregate(self, database: str, command: dict[str, Any], _: int) -> dict[str, Any]:
        if command.get("aggregate") == 1:
            raise CommandError(238, "NotImplemented", "database-level aggregate is not supported")
        collection = self._collection(database, command, "aggregate")
        pipeline = command.get("pipeline")
        if not isinstance(pipeline, list) or not all(isinstance(s, dict) for s in pipeline):
            raise CommandError(14, "TypeMismatch", "'pipeline' must be an array of documents")
        options = command.get("cursor")
        if not isinstance(options, dict):
            raise CommandError(
                9,
                "FailedToParse",
                "The 'cursor' option is required, except for aggregate with the explain argument",
            )
        try:
            documents = list(collection.aggregate(pipeline))
        except Exception as exc:
            raise as_command_error(exc) from exc
        return self._open_cursor(
            f"{database}.{collection.name}",
            documents,
            first_batch=_batch_size(options.get("batchSize")),
        )

    def _count(self, database: str, command: dict[str, Any], _: int) -> dict[str, Any]:
        collection = self._collection(database, command, "count")
        query = command.get("query") or {}
        options: dict[str, Any] = {}
        skip = _batch_size(command.get("skip"), "skip")
        limit = command.get("limit")
        if skip:
            options["skip"] = skip
        if isinstance(limit, int | float) and limit:
            options["limit"] = abs(int(limit))
        try:
            n = collection.count_documents(query, **options)
        except Exception as exc:
            raise as_command_error(exc) from exc
        return {"n": n, "ok": 1.0}

    def _distinct(self, database: str, command: dict[str, Any], _: int) -> dict[str, Any]:
        collection = self._collection(database, command, "distinct")
        key = command.get("key")
        if not isinstance(key, str):
            raise bad_value("distinct needs a string 'key'")
        try:
            values = collection.distinct(key, command.get("query") or None)
        except Exception as exc:
            raise as_command_error(exc) from exc
        return {"values": values, "ok": 1.0}

    # -- collections, indexes, databases ------------------------------------------------------

    def _create(self, database: str, command: dict[str, Any], _: int) -> dict[str, Any]:
        collection = self._collection(database, command, "create")
        if self._exists(database, collection.name):
            raise CommandError(
                48, "NamespaceExists", f"Collection {database}.{collection.name} already exists."
            )
        self.client[database].create_collection(collection.name)
        return {"ok": 1.0}

    def _create_indexes(self, database: str, command: dict[str, Any], _: int) -> dict[str, Any]:
        collection = self._collection(database, command, "createIndexes")
        specs = _list_of_documents(command.get("indexes"), "indexes")
        created_collection = not self._exists(database, collection.name)
        before = len(collection.index_information()) or 1  # _id_ exists once the collection does
        for spec in specs:
            keys = spec.get("key")
            if not isinstance(keys, dict) or not keys:
                raise CommandError(67, "CannotCreateIndex", "index spec needs a non-empty 'key'")
            options = {k: v for k, v in spec.items() if k not in ("key", "v", "background")}
            refused = set(options) - {
                "name",
                "unique",
                "sparse",
                "expireAfterSeconds",
                "partialFilterExpression",
            }
            if refused:
                raise CommandError(
                    238, "NotImplemented", f"index options {sorted(refused)} are not supported"
                )
            try:
                collection.create_index(list(keys.items()), **options)
            except mongomock.OperationFailure as exc:
                if exc.code == 11000:
                    raise as_command_error(exc) from exc
                raise CommandError(85, "IndexOptionsConflict", str(exc)) from exc
        return {
            "createdCollectionAutomatically": created_collection,
            "numIndexesBefore": before,
            "numIndexesAfter": len(collection.index_information()),
            "ok": 1.0,
        }

    def _list_indexes(self, database: str, command: dict[str, Any], _: int) -> dict[str, Any]:
        collection = self._collection(database, command, "listIndexes")
        if not self._exists(database, collection.name):
            raise CommandError(
                26, "NamespaceNotFound", f"ns does not exist: {database}.{collection.name}"
            )
        indexes = list(collection.list_indexes())
        options = command.get("cursor") or {}
        return self._open_cursor(
            f"{database}.$cmd.listIndexes.{collection.name}",
            indexes,
            first_batch=_batch_size(options.get("batchSize")),
        )

    def _list_collections(self, database: str, command: dict[str, Any], _: int) -> dict[str, Any]:
        query = command.get("filter") or {}
        if not isinstance(query, dict):
            raise bad_value("filter must be a document")
        name_only = bool(command.get("nameOnly", False))
        found: list[dict[str, Any]] = []
        for name in sorted(self.client[database].list_collection_names()):
            info: dict[str, Any] = {"name": name, "type": "collection"}
            if not name_only:
                info["options"] = {}
                info["info"] = {"readOnly": False}
                info["idIndex"] = {"v": 2, "key": {"_id": 1}, "name": "_id_"}
            try:
                if _filter_applies(query, info):
                    found.append(info)
            except Exception as exc:
                raise as_command_error(exc) from exc
        options = command.get("cursor") or {}
        return self._open_cursor(
            f"{database}.$cmd.listCollections",
            found,
            first_batch=_batch_size(options.get("batchSize")),
        )

    def _drop(self, database: str, command: dict[str, Any], _: int) -> dict[str, Any]:
        collection = self._collection(database, command, "drop")
        if not self._exists(database, collection.name):
            raise CommandError(26, "NamespaceNotFound", "ns not found")
        indexes = len(collection.index_information())
        collection.drop()
        return {"ns": f"{database}.{collection.name}", "nIndexesWas": indexes, "ok": 1.0}

    def _drop_database(self, database: str, command: dict[str, Any], _: int) -> dict[str, Any]:
        self.client.drop_database(database)
        return {"dropped": database, "ok": 1.0}

    def _list_databases(self, database: str, command: dict[str, Any], _: int) -> dict[str, Any]:
        names = sorted(self.client.list_database_names())
        if command.get("nameOnly"):
            databases = [{"name": name} for name in names]
        else:
            databases = [{"name": name, "sizeOnDisk": 0, "empty": False} for name in names]
        query = command.get("filter") or {}
        databases = [d for d in databases if _filter_applies(query, d)]
        return {"databases": databases, "totalSize": 0, "ok": 1.0}


# -- statement helpers ------------------------------------------------------------------------


def _list_of_documents(value: Any, name: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise CommandError(14, "TypeMismatch", f"'{name}' must be an array of documents")
    if len(value) > MAX_WRITE_BATCH_SIZE:
        raise CommandError(
            16,
            "InvalidLength",
            f"Write batch sizes must be between 1 and {MAX_WRITE_BATCH_SIZE}. "
            f"Got {len(value)} operations.",
        )
    return value


def _sort_list(sort: Any) -> list[tuple[str, Any]] | None:
    if sort is None or sort == {}:
        return None
    if not isinstance(sort, dict):
        raise bad_value("sort must be a document")
    return list(sort.items())


def _is_operator_update(update: Any) -> bool:
    return isinstance(update, dict) and bool(update) and next(iter(update)).startswith("$")


def _modify(
    collection: Any, query: dict[str, Any], update: Any, *, upsert: bool, multi: bool = False
) -> dict[str, Any]:
    """One update statement through mongomock's public API; its raw result (n, nModified,
    upserted)."""
    if isinstance(update, list) or _is_operator_update(update):
        method = collection.update_many if multi else collection.update_one
        result = method(query, update, upsert=upsert)
    elif isinstance(update, dict):
        if multi:
            raise CommandError(
                9, "FailedToParse", "multi update is not supported for replacement-style update"
            )
        result = collection.replace_one(query, update, upsert=upsert)
    else:
        raise CommandError(14, "TypeMismatch", "update must be a document or a pipeline")
    raw: dict[str, Any] = result.raw_result
    return raw


def _update_one_statement(collection: Any, statement: dict[str, Any]) -> dict[str, Any]:
    query = statement.get("q")
    if not isinstance(query, dict):
        raise bad_value("update statement needs a 'q' document")
    for option in ("arrayFilters", "hint", "collation"):
        if statement.get(option):
            raise CommandError(238, "NotImplemented", f"{option} is not supported (mongomock)")
    return _modify(
        collection,
        query,
        statement.get("u"),
        upsert=bool(statement.get("upsert", False)),
        multi=bool(statement.get("multi", False)),
    )


def _write_reply(n: int, errors: list[dict[str, Any]]) -> dict[str, Any]:
    reply: dict[str, Any] = {"n": n, "ok": 1.0}
    if errors:
        reply["writeErrors"] = errors
    return reply


def _find_and_modify_reply(value: Any, last_error: dict[str, Any]) -> dict[str, Any]:
    return {"lastErrorObject": last_error, "value": value, "ok": 1.0}


def as_command_error(exc: Exception) -> CommandError:
    """MongoDB's code and name for an exception raised by mongomock (or the input)."""
    if isinstance(exc, CommandError):
        return exc
    if isinstance(exc, mongomock.DuplicateKeyError) or getattr(exc, "code", None) == 11000:
        return CommandError(11000, "DuplicateKey", "E11000 duplicate key error")
    if isinstance(exc, mongomock.OperationFailure):
        code = exc.code if isinstance(exc.code, int) else 2
        return CommandError(code, "BadValue" if code == 2 else "", message_of(exc))
    if isinstance(exc, NotImplementedError):
        return CommandError(238, "NotImplemented", f"mongomock: {message_of(exc)}")
    if isinstance(exc, ValueError | TypeError | KeyError):
        return CommandError(2, "BadValue", message_of(exc))
    return CommandError(INTERNAL_ERROR, "InternalError", f"{type(exc).__name__}: {message_of(exc)}")


def message_of(exc: BaseException) -> str:
    details = getattr(exc, "_message", None)
    return str(details if details is not None else exc) or type(exc).__name__


def _duplicate_key_details(collection: Any, document: dict[str, Any] | None) -> dict[str, Any]:
    """``keyPattern``/``keyValue`` and MongoDB's message for a duplicate ``document``.

    mongomock does not say which index refused the write: for an insert it is found again here
    (``_id`` first, then each unique index); for an update the refused image is gone, and the
    reply carries the generic message only.
    """
    namespace = f"{collection.database.name}.{collection.name}"
    if document is None:
        return {"errmsg": f"E11000 duplicate key error collection: {namespace}"}
    candidates: list[tuple[str, list[tuple[str, Any]]]] = [("_id_", [("_id", 1)])]
    for name, info in collection.index_information().items():
        if info.get("unique") and name != "_id_":
            candidates.append((name, list(info["key"])))
    for name, keys in candidates:
        value: dict[str, Any] = {}
        for path, _ in keys:
            try:
                value[path] = _get_value_by_dot(document, path)
            except KeyError:
                value[path] = None
        if collection.find_one(value, {"_id": 1}) is not None:
            return {
                "errmsg": f"E11000 duplicate key error collection: {namespace} index: {name} "
                f"dup key: {value}",
                "keyPattern": dict(keys),
                "keyValue": value,
            }
    return {"errmsg": f"E11000 duplicate key error collection: {namespace}"}
