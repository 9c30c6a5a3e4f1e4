from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from soudan_shared.bus import broker_urls
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
            "LINE_EVENT_SHARDS",
            "BUS_NAMESPACE",
            "RABBITMQ_QUORUM_GROUP_SIZE",
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


def test_the_shard_count_defaults_to_four_and_shapes_the_topology_of_every_service(
    clean_env: pytest.MonkeyPatch,
) -> None:
    for name, value in {
        "RABBITMQ_URL": "amqp://x/",
        "MONGODB_URL": "memory://",
        "LOG_HASH_KEY": "k",
        "LINE_CHANNEL_SECRET": "s",
        "BUS_NAMESPACE": "night",
    }.items():
        clean_env.setenv(name, value)
    assert load_settings(_Settings, "t").topology().line_event_shards == 4
    clean_env.setenv("LINE_EVENT_SHARDS", "12")
    topology = load_settings(_Settings, "t").topology()
    assert (topology.namespace, topology.line_event_shards) == ("night", 12)
    shard_queues = [q.name for q in topology.queues if q.name.startswith("triage.line-events.")]
    assert shard_queues == [f"triage.line-events.{n}" for n in range(12)]
    assert all(q.single_active_consumer for q in topology.queues if q.name in shard_queues)


@pytest.mark.parametrize("value", ["0", "65", "four"])
def test_a_shard_count_outside_1_to_64_is_refused_with_its_name(
    value: str, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, setting in {
        "RABBITMQ_URL": "amqp://x/",
        "MONGODB_URL": "memory://",
        "LOG_HASH_KEY": "k",
        "LINE_CHANNEL_SECRET": "s",
        "LINE_EVENT_SHARDS": value,
    }.items():
        clean_env.setenv(name, setting)
    with pytest.raises(SystemExit):
        load_settings(_Settings, "soudan-test")
    assert "invalid setting LINE_EVENT_SHARDS" in capsys.readouterr().err


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


def test_rabbitmq_url_may_list_every_node_of_a_cluster_and_a_wrong_one_is_named_without_it(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in {
        "MONGODB_URL": "memory://",
        "LOG_HASH_KEY": "k",
        "LINE_CHANNEL_SECRET": "s",
        "RABBITMQ_URL": "amqp://u:pw1@rabbit-1:5672/, amqp://u:pw1@rabbit-2:5672/,",
        "RABBITMQ_QUORUM_GROUP_SIZE": "3",
    }.items():
        clean_env.setenv(name, value)
    settings = load_settings(_Settings, "soudan-test")
    assert broker_urls(settings.rabbitmq_url.get_secret_value()) == [
        "amqp://u:pw1@rabbit-1:5672/",
        "amqp://u:pw1@rabbit-2:5672/",
    ]
    topology = settings.topology()
    assert topology.queue_arguments(topology.queues[0])["x-quorum-initial-group-size"] == 3

    clean_env.setenv("RABBITMQ_URL", "amqp://u:pw1@rabbit-1:5672/,rabbit-2:pw2")
    with pytest.raises(SystemExit):
        load_settings(_Settings, "soudan-test")
    err = capsys.readouterr().err
    assert "RABBITMQ_URL" in err
    assert "broker address 2 of 2" in err
    assert "pw1" not in err
    assert "pw2" not in err


def test_without_a_group_size_quorum_queues_are_left_to_the_broker(
    clean_env: pytest.MonkeyPatch,
) -> None:
    for name, value in {
        "MONGODB_URL": "memory://",
        "LOG_HASH_KEY": "k",
        "LINE_CHANNEL_SECRET": "s",
        "RABBITMQ_URL": "amqp://x/",
    }.items():
        clean_env.setenv(name, value)
    topology = load_settings(_Settings, "soudan-test").topology()
    for spec in topology.queues:
        assert "x-quorum-initial-group-size" not in topology.queue_arguments(spec)
        assert topology.queue_arguments(spec)["x-queue-type"] == "quorum"
