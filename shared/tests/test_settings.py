from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from soudan_shared.settings import (
    BaseServiceSettings,
    LineSecretSettings,
    MongoSettings,
    load_settings,
)

pytestmark = pytest.mark.unit


class _Settings(BaseServiceSettings, MongoSettings, LineSecretSettings):
    some_port: int = 8080


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.split("_FILE")[0] in {
            "RABBITMQ_URL",
            "MONGODB_URL",
            "LINE_CHANNEL_SECRET",
            "LINE_CHANNEL_ACCESS_TOKEN",
            "LOG_HASH_KEY",
            "SOME_PORT",
        }:
            monkeypatch.delenv(name)
    return monkeypatch


def test_settings_come_from_the_environment_with_defaults(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("RABBITMQ_URL", "amqp://u:p@rabbit:5672/")
    clean_env.setenv("MONGODB_URL", "memory://")
    clean_env.setenv("LINE_CHANNEL_SECRET", "s3cret")
    clean_env.setenv("LOG_HASH_KEY", "k")
    settings = load_settings(_Settings, "test")
    assert settings.some_port == 8080
    assert settings.bus_namespace == "soudan"
    assert settings.soudan_config_dir == Path("deploy/config")
    assert settings.line_channel_secret.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)


def test_a_secret_can_come_from_a_file_and_the_plain_variable_wins(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("from-file\n")
    clean_env.setenv("RABBITMQ_URL", "amqp://x/")
    clean_env.setenv("MONGODB_URL", "memory://")
    clean_env.setenv("LOG_HASH_KEY", "k")
    clean_env.setenv("LINE_CHANNEL_SECRET_FILE", str(secret))
    assert load_settings(_Settings, "t").line_channel_secret.get_secret_value() == "from-file"
    clean_env.setenv("LINE_CHANNEL_SECRET", "from-env")
    assert load_settings(_Settings, "t").line_channel_secret.get_secret_value() == "from-env"


def test_a_missing_required_setting_stops_with_one_line_naming_it(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv("RABBITMQ_URL", "amqp://x/")
    clean_env.setenv("LOG_HASH_KEY", "k")
    clean_env.setenv("LINE_CHANNEL_SECRET", "s")
    with pytest.raises(SystemExit) as exited:
        load_settings(_Settings, "soudan-test")
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("soudan-test: missing required setting MONGODB_URL")


def test_an_unreadable_secret_file_is_named(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    clean_env.setenv("RABBITMQ_URL", "amqp://x/")
    clean_env.setenv("MONGODB_URL", "memory://")
    clean_env.setenv("LOG_HASH_KEY", "k")
    clean_env.setenv("LINE_CHANNEL_SECRET_FILE", str(tmp_path / "absent"))
    with pytest.raises(SystemExit):
        load_settings(_Settings, "soudan-test")
    assert "LINE_CHANNEL_SECRET_FILE=" in capsys.readouterr().err


def test_an_invalid_port_is_named(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in {
        "RABBITMQ_URL": "amqp://x/",
        "MONGODB_URL": "memory://",
        "LOG_HASH_KEY": "k",
        "LINE_CHANNEL_SECRET": "s",
        "SOME_PORT": "eighty",
    }.items():
        clean_env.setenv(name, value)
    with pytest.raises(SystemExit):
        load_settings(_Settings, "soudan-test")
    assert "invalid setting SOME_PORT" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "missing"),
    [
        ("soudan-ingress", "LINE_CHANNEL_SECRET"),
        ("soudan-triage", "MONGODB_URL"),
        ("soudan-dispatch", "LINE_CHANNEL_ACCESS_TOKEN"),
        ("soudan-console", "MONGODB_URL"),
        ("soudan-reporting", "MONGODB_URL"),
    ],
)
def test_each_service_refuses_to_start_without_its_required_settings(
    command: str, missing: str
) -> None:
    env = {"PATH": os.environ["PATH"], "RABBITMQ_URL": "amqp://x/", "LOG_HASH_KEY": "k"}
    exe = Path(sys.executable).parent / command
    done = subprocess.run(
        [str(exe)], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"{command}: missing required setting")
    assert missing in lines[0]
