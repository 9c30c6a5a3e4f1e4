"""soudan-all's store without MONGODB_URL: a SecantusDB child process whose data outlives it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pymongo
import pytest
from soudan_allinone.main import development_store

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_without_mongodb_url_the_data_is_kept_across_restarts_and_fresh_starts_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SOUDAN_DATA_DIR", str(tmp_path / "data"))

    def start(*, fresh: bool) -> tuple[Any, pymongo.MongoClient[dict[str, Any]]]:
        monkeypatch.delenv("MONGODB_URL", raising=False)
        server = development_store("soudan-all", fresh=fresh)
        assert server is not None
        return server, pymongo.MongoClient(server.url)

    server, client = start(fresh=False)
    client.soudan.cases.insert_one({"_id": "c1"})
    client.close()
    server.stop()
    assert f"SecantusDB child process on 127.0.0.1:{server.port}" in capsys.readouterr().err

    server, client = start(fresh=False)
    assert client.soudan.cases.find_one({"_id": "c1"}) == {"_id": "c1"}
    client.close()
    server.stop()

    server, client = start(fresh=True)
    assert client.soudan.cases.find_one({"_id": "c1"}) is None
    client.close()
    server.stop()


def test_the_in_process_store_is_named_loudly_and_starts_no_server(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MONGODB_URL", "memory://")
    assert development_store("soudan-all", fresh=False) is None
    assert "IN-PROCESS FAKE" in capsys.readouterr().err
