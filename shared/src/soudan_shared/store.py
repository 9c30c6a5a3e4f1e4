"""The MongoDB store: PyMongo's ``AsyncMongoClient``, or an in-process fake for development.

``open_store`` must run inside the event loop that will use the client (the client belongs to
one loop). Each service declares its indexes as :class:`IndexSpec` and they are created at
start-up; :meth:`Store.close` closes the client on shutdown.

``memory://`` selects :class:`MemoryClient`, a thin async face on mongomock. It implements only
the operations the project uses; store code keeps to what mongomock and a real MongoDB agree on.
Its collections answer equality lookups on ``_id`` and on the first field of each created index
from hash indexes instead of scanning (:mod:`soudan_shared.memory_index`), with the same results.

Write concern: every service writes with ``w="majority"`` and ``journal=True`` unless
``MONGODB_URL`` names its own (``?w=…&journal=…``). A service acknowledges a broker message (a
student's event, a command) only after its store writes returned, so a write acknowledged by the
server must survive the server's crash (journaled) and, on a replica set, a primary's loss
(majority). No collection is exempt: each holds either what a student sent, what was sent to a
student, or the facts the monthly report is built from (docs/STORE.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import mongomock.collection
import structlog
from prometheus_client import CollectorRegistry, Counter
from pymongo import AsyncMongoClient, monitoring
from pymongo.errors import OperationFailure
from pymongo.uri_parser import parse_uri

from soudan_shared.memory_index import cursor_documents, indexed_client, indexed_collection

log = structlog.get_logger(__name__)

DEFAULT_DATABASE = "soudan"
MEMORY_URL = "memory://"


@dataclass(frozen=True)
class IndexSpec:
    collection: str
    keys: Sequence[tuple[str, int]]
    unique: bool = False
    name: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


class Store:
    """A database handle plus its client; ``store.db["events"]`` is a collection."""

    def __init__(self, client: Any, database: str, *, kind: str) -> None:
        self.client = client
        self.db = client[database]
        self.kind = kind

    async def ensure_indexes(self, specs: Iterable[IndexSpec]) -> None:
        for spec in specs:
            options: dict[str, Any] = dict(spec.options)
            if spec.unique:
                options["unique"] = True
            if spec.name:
                options["name"] = spec.name
            await self.db[spec.collection].create_index(list(spec.keys), **options)

    async def ping(self, timeout: float = 2.0) -> bool:
        try:
            await asyncio.wait_for(self.client.admin.command("ping"), timeout)
        except Exception:
            return False
        return True

    async def close(self) -> None:
        await self.client.close()


def is_memory_url(url: str) -> bool:
    return urlsplit(url).scheme == "memory"


def database_name(url: str) -> str:
    path = urlsplit(url).path.strip("/")
    return path or DEFAULT_DATABASE


class CommandCounter(monitoring.CommandListener):
    """Counts the commands a client sends to the server, by name, as
    ``soudan_store_commands_total{command}``: the store round trips a service makes."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.commands = Counter(
            "soudan_store_commands",
            "Commands sent to the store (round trips), by command",
            ["command"],
            registry=registry,
        )

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.commands.labels(event.command_name).inc()

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def open_store(
    url: str,
    *,
    database: str | None = None,
    server_selection_timeout_ms: int = 5000,
    registry: CollectorRegistry | None = None,
) -> Store:
    """Open the store for ``url`` in the running loop; ``memory://`` gives the in-process fake.
    With ``registry``, a real server's client counts its commands there
    (:class:`CommandCounter`)."""
    name = database or database_name(url)
    if is_memory_url(url):
        if MemoryClient._instance is None:
            log.warning(
                "memory_store_in_use",
                detail="MONGODB_URL=memory:// keeps everything in this process and loses it "
                "at exit; for development and tests only, never for real consultations",
            )
        return Store(MemoryClient.shared(), name, kind="memory")
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        url,
        tz_aware=True,
        serverSelectionTimeoutMS=server_selection_timeout_ms,
        event_listeners=[CommandCounter(registry)] if registry is not None else [],
        **durable_write_concern(url),
    )
    return Store(client, name, kind="mongodb")


def durable_write_concern(url: str) -> dict[str, Any]:
    """``w="majority"`` and ``journal=True``, each unless the URL sets it."""
    options = parse_uri(url)["options"]
    concern: dict[str, Any] = {}
    if "w" not in options:
        concern["w"] = "majority"
    if "journal" not in options:
        concern["journal"] = True
    return concern


# -- the in-process fake ----------------------------------------------------------------------


class MemoryClient:
    """Async face on ``mongomock.MongoClient``.

    One instance per process (:meth:`shared`), so the services of ``soudan-all`` see one store.
    """

    _instance: MemoryClient | None = None

    def __init__(self) -> None:
        self._sync: Any = indexed_client(tz_aware=True)
        self.admin = _MemoryAdmin()

    @classmethod
    def shared(cls) -> MemoryClient:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def __getitem__(self, name: str) -> MemoryDatabase:
        return MemoryDatabase(self._sync[name])

    def get_database(self, name: str) -> MemoryDatabase:
        return self[name]

    async def drop_database(self, name: str) -> None:
        self._sync.drop_database(name)

    async def close(self) -> None:
        """The shared fake outlives any one service; closing is a no-op."""


class _MemoryAdmin:
    async def command(self, name: str) -> dict[str, Any]:
        if name != "ping":
            raise OperationFailure(f"command {name!r} is not supported by the memory store")
        return {"ok": 1.0}


class MemoryDatabase:
    def __init__(self, sync_db: Any) -> None:
        self._sync = sync_db
        self.name: str = sync_db.name
        # Services look collections up on every call (``db["cases"]``); mongomock's own lookup
        # rebuilds options each time, so keep one face per name.
        self._collections: dict[str, MemoryCollection] = {}

    def __getitem__(self, name: str) -> MemoryCollection:
        collection = self._collections.get(name)
        if collection is None:
            collection = MemoryCollection(indexed_collection(self._sync, name))
            self._collections[name] = collection
        return collection

    def get_collection(self, name: str) -> MemoryCollection:
        return self[name]

    async def list_collection_names(self) -> list[str]:
        names: list[str] = self._sync.list_collection_names()
        return names

    async def drop_collection(self, name: str) -> None:
        self._sync.drop_collection(name)


class MemoryCursor:
    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    def sort(self, *args: Any, **kwargs: Any) -> MemoryCursor:
        self._cursor = self._cursor.sort(*args, **kwargs)
        return self

    def limit(self, n: int) -> MemoryCursor:
        self._cursor = self._cursor.limit(n)
        return self

    def skip(self, n: int) -> MemoryCursor:
        self._cursor = self._cursor.skip(n)
        return self

    def _documents(self) -> list[dict[str, Any]]:
        # mongomock's Cursor copies its whole result list on every next(), which makes reading
        # n documents O(n²) (100,000 users: minutes): take the results in one go.
        if isinstance(self._cursor, mongomock.collection.Cursor):
            return cursor_documents(self._cursor)
        return list(self._cursor)  # an aggregation's CommandCursor

    async def to_list(self, length: int | None = None) -> list[dict[str, Any]]:
        docs = self._documents()
        return docs if length is None else docs[:length]

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[dict[str, Any]]:
        for doc in self._documents():
            yield doc


class MemoryCollection:
    """The subset of ``AsyncCollection`` the project uses, with the same signatures."""

    def __init__(self, sync_collection: Any) -> None:
        self._sync = sync_collection
        self.name: str = sync_collection.name

    async def insert_one(self, document: dict[str, Any], **kw: Any) -> Any:
        return self._sync.insert_one(document, **kw)

    async def insert_many(self, documents: Iterable[dict[str, Any]], **kw: Any) -> Any:
        return self._sync.insert_many(list(documents), **kw)

    async def find_one(self, *args: Any, **kw: Any) -> dict[str, Any] | None:
        doc: dict[str, Any] | None = self._sync.find_one(*args, **kw)
        return doc

    def find(self, *args: Any, **kw: Any) -> MemoryCursor:
        return MemoryCursor(self._sync.find(*args, **kw))

    async def aggregate(self, pipeline: list[dict[str, Any]], **kw: Any) -> MemoryCursor:
        return MemoryCursor(self._sync.aggregate(pipeline, **kw))

    async def update_one(self, *args: Any, **kw: Any) -> Any:
        return self._sync.update_one(*args, **kw)

    async def update_many(self, *args: Any, **kw: Any) -> Any:
        return self._sync.update_many(*args, **kw)

    async def replace_one(self, *args: Any, **kw: Any) -> Any:
        return self._sync.replace_one(*args, **kw)

    async def find_one_and_update(self, *args: Any, **kw: Any) -> dict[str, Any] | None:
        doc: dict[str, Any] | None = self._sync.find_one_and_update(*args, **kw)
        return doc

    async def delete_one(self, *args: Any, **kw: Any) -> Any:
        return self._sync.delete_one(*args, **kw)

    async def delete_many(self, *args: Any, **kw: Any) -> Any:
        return self._sync.delete_many(*args, **kw)

    async def count_documents(self, *args: Any, **kw: Any) -> int:
        n: int = self._sync.count_documents(*args, **kw)
        return n

    async def distinct(self, *args: Any, **kw: Any) -> list[Any]:
        values: list[Any] = self._sync.distinct(*args, **kw)
        return values

    async def bulk_write(self, requests: list[Any], **kw: Any) -> Any:
        return self._sync.bulk_write(requests, **kw)

    async def create_index(self, keys: Any, **kw: Any) -> str:
        name: str = self._sync.create_index(keys, **kw)
        return name

    async def index_information(self) -> dict[str, Any]:
        info: dict[str, Any] = self._sync.index_information()
        return info

    async def drop(self) -> None:
        self._sync.drop()
