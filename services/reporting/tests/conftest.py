"""Fixtures of the reporting tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from soudan_reporting.settings import ReportingSettings

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def config_dir() -> Path:
    """The repository's default configuration (deploy/config), for labels."""
    return REPO / "deploy" / "config"


@pytest.fixture
def make_settings(tmp_path: Path, config_dir: Path) -> Callable[..., ReportingSettings]:
    """Settings for building reports into the test's own directory (no SMTP unless given)."""

    def make(**overrides: Any) -> ReportingSettings:
        values: dict[str, Any] = {
            "rabbitmq_url": "amqp://unused/",
            "log_hash_key": "test-hash-key",
            "mongodb_url": "memory://",
            "soudan_config_dir": config_dir,
            "reports_dir": tmp_path / "reports",
            "smtp_host": "",
            "report_recipients": "",
            **overrides,
        }
        return ReportingSettings(**values)

    return make
