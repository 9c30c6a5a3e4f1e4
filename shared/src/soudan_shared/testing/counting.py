"""A database handle that notes every command it sends to the store, for tests of what a
handler costs in round trips (issue 17): ``db.calls`` counts ``"<collection> <method>"``."""

from __future__ import annotations

from collections import Counter
from typing import Any


class CountedCollection:
    def __init__(self, collection: Any, calls: Counter[str]) -> None:
        self.collection = collection
        self.calls = calls
        self.name: str = collection.name

    def find(self, *args: Any, **kw: Any) -> Any:
        self.calls[f"{self.name} find"] += 1  # one find command (results within one batch)
        return self.collection.find(*args, **kw)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.collection, name)

        async def counted(*args: Any, **kw: Any) -> Any:
            self.calls[f"{self.name} {name}"] += 1
            return await method(*args, **kw)

        return counted


class CountedDb:
    """``CountedDb(store.db)``: the same collections, each command counted in :attr:`calls`."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self.calls: Counter[str] = Counter()

    def __getitem__(self, name: str) -> CountedCollection:
        return CountedCollection(self.db[name], self.calls)
