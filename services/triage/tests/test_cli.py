"""``soudan-triage hours`` and ``soudan-triage detect``, as ops and the section run them."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from soudan_triage.main import main

pytestmark = pytest.mark.unit

SHIPPED = Path(__file__).resolve().parents[3] / "deploy" / "config"


def test_hours_prints_open_accepting_and_the_next_opening(
    capsys: pytest.CaptureFixture[str],
) -> None:
    main(["hours", "--at", "2026-12-24T16:59:59+09:00", "--config", str(SHIPPED)])

    assert json.loads(capsys.readouterr().out) == {
        "open": False,
        "accepting": False,
        "next_open": "2026-12-24T17:00:00+09:00",
    }


def test_hours_after_the_last_period_has_no_next_opening(
    capsys: pytest.CaptureFixture[str],
) -> None:
    main(["hours", "--at", "2027-03-31T21:00:00+09:00", "--config", str(SHIPPED)])

    assert json.loads(capsys.readouterr().out)["next_open"] is None


def test_hours_refuses_a_time_without_its_offset(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["hours", "--at", "2026-12-24T16:59:59", "--config", str(SHIPPED)])

    assert exit_info.value.code == 2
    assert "offset" in capsys.readouterr().err


def test_a_broken_configuration_is_named_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["hours", "--config", str(tmp_path / "nowhere")])

    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "nowhere" in err


def test_detect_writes_one_json_object_per_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("死にたい\n買い物しに行く\nｼﾈ\n"))

    main(["detect", "--config", str(SHIPPED)])

    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines == [
        {"urgent": True, "keywords": ["死に"], "matches": ["死に"]},
        {"urgent": False, "keywords": [], "matches": []},
        {"urgent": True, "keywords": ["死ね"], "matches": ["ｼﾈ"]},
    ]


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
