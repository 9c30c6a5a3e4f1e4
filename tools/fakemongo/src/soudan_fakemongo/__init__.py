"""soudan-fakemongo: NOT MongoDB. mongomock behind the MongoDB wire protocol, for Soudan's tests,
development and benchmarks only; never for real consultations.

Why: the in-process fake (``MONGODB_URL=memory://``) is shared only by services running in one
process, and leaves PyMongo's real ``AsyncMongoClient`` path untested. This server speaks the wire
protocol PyMongo 4 uses (OP_MSG, and the OP_QUERY handshake), so the services can run as separate
processes against one store, and the suite can run unchanged with
``MONGODB_URL=mongodb://127.0.0.1:PORT/``.

What it is not: everything lives in memory and is lost at exit; no transactions, no
authentication, no TLS, no replication, no durability; matching, updates and aggregation are
mongomock's (the same hash-indexed mongomock as ``soudan_shared.store.MemoryClient``), with its
gaps (no collation, no array filters, no ``$dateToString`` with a timezone …). ``hello`` and
``buildInfo`` carry ``soudanFakemongo: true`` so a client can tell.

In a test (pytest-asyncio), run one in-process on a free port::

    from soudan_fakemongo import running_fakemongo

    async def test_something() -> None:
        async with running_fakemongo() as server:
            client = AsyncMongoClient(server.url, tz_aware=True)
            ...

From a shell: ``soudan-fakemongo --port 27017``, or ``soudan-fakemongo --port 0 --exec CMD ...``
to run a command with ``MONGODB_URL`` pointing at a fresh server (stopped when it ends).
"""

from soudan_fakemongo.server import WARNING, FakeMongoServer, running_fakemongo

__all__ = ["WARNING", "FakeMongoServer", "running_fakemongo"]
