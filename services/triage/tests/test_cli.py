"""``soudan-triage hours`` and ``soudan-triage detect``, as ops and the section run them."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from soudan_shared.config import HoursConfig, load_config
from soudan_shared.config_store import save_override
from soudan_shared.store import Store
from soudan_shared.testing.plugin import with_database
from soudan_triage.main import main

SHIPPED = Path(__file__).resolve().parents[3] / "deploy" / "config"


@pytest.fixture(autouse=True)
def _no_store_unless_a_test_names_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command reads the console's edits from ``MONGODB_URL``: these tests read the files
    alone unless a test points it at its own database."""
    monkeypatch.delenv("MONGODB_URL", raising=False)
    monkeypatch.delenv("MONGODB_URL_FILE", raising=False)


@pytest.mark.unit
def test_hours_prints_open_accepting_and_the_next_opening(
    capsys: pytest.CaptureFixture[str],
) -> None:
    main(["hours", "--at", "2026-12-24T16:59:59+09:00", "--config", str(SHIPPED)])

    assert json.loads(capsys.readouterr().out) == {
        "open": False,
        "accepting": False,
        "next_open": "2026-12-24T17:00:00+09:00",
    }


@pytest.mark.unit
def test_hours_after_the_last_period_has_no_next_opening(
    capsys: pytest.CaptureFixture[str],
) -> None:
    main(["hours", "--at", "2027-03-31T21:00:00+09:00", "--config", str(SHIPPED)])

    assert json.loads(capsys.readouterr().out)["next_open"] is None


@pytest.mark.unit
def test_hours_refuses_a_time_without_its_offset(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["hours", "--at", "2026-12-24T16:59:59", "--config", str(SHIPPED)])

    assert exit_info.value.code == 2
    assert "offset" in capsys.readouterr().err


@pytest.mark.unit
def test_a_broken_configuration_is_named_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["hours", "--config", str(tmp_path / "nowhere")])

    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "nowhere" in err


@pytest.mark.unit
def test_detect_writes_one_json_object_per_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stdin = "死にたい\n買い物しに行く\nｼﾈ\n薬いっぱいのんじゃった\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))

    main(["detect", "--config", str(SHIPPED)])

    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines == [
        {
            "urgent": True,
            "keywords": ["死に"],
            "matches": ["死に"],
            "risks": [{"category": "自殺念慮", "term": "死にたい気持ち", "match": "死にたい"}],
        },
        {"urgent": False, "keywords": [], "matches": [], "risks": []},
        {"urgent": True, "keywords": ["死ね"], "matches": ["ｼﾈ"], "risks": []},
        {
            "urgent": True,
            "keywords": [],
            "matches": [],
            "risks": [
                {
                    "category": "方法・手段",
                    "term": "薬の大量服用",
                    "match": "薬いっぱいのんじゃった",
                }
            ],
        },
    ]


@pytest.mark.unit
def test_the_installed_command_runs(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "soudan-triage"
    result = subprocess.run(
        [str(exe), "detect", "--config", str(SHIPPED)],
        input="し　に　た　い\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    assert json.loads(result.stdout)["matches"] == ["し　に　た　い"]


@pytest.mark.integration
@pytest.mark.timeout(30)
async def test_hours_answers_with_the_consoles_override_as_the_service_does(
    store: Store,
    mongodb_url: str,
    database_name: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MONGODB_URL", with_database(mongodb_url, database_name))
    hours = load_config(SHIPPED).hours.model_dump(mode="json")
    hours["overrides"] = [{"date": "2026-12-24", "sessions": [{"open": "13:00", "close": "16:30"}]}]
    await save_override(store.db, "hours", HoursConfig.model_validate(hours), staff_id="admin")

    at = ["hours", "--config", str(SHIPPED), "--at"]
    await asyncio.to_thread(main, [*at, "2026-12-24T17:00:00+09:00"])
    assert json.loads(capsys.readouterr().out)["open"] is False
    await asyncio.to_thread(main, [*at, "2026-12-24T16:00:00+09:00"])
    assert json.loads(capsys.readouterr().out) == {
        "open": True,
        "accepting": True,
        "next_open": "2026-12-25T17:00:00+09:00",
    }
    await asyncio.to_thread(main, [*at, "2026-12-24T17:00:00+09:00", "--files-only"])
    assert json.loads(capsys.readouterr().out)["open"] is True
