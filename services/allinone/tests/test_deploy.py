"""The first `make up`, checked without Docker (none runs here): the deploy/.env that
deploy/init-env.sh writes on a fresh machine starts every service of compose.yaml, and
compose.yaml's services, ports, health checks and references agree with the code."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings
from soudan_console.settings import ConsoleSettings
from soudan_dispatch.settings import DispatchSettings
from soudan_ingress.settings import IngressSettings
from soudan_reporting.settings import ReportingSettings
from soudan_triage.settings import TriageSettings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
SETTINGS: dict[str, type[BaseSettings]] = {
    "soudan-ingress": IngressSettings,
    "soudan-console": ConsoleSettings,
    "soudan-triage": TriageSettings,
    "soudan-dispatch": DispatchSettings,
    "soudan-reporting": ReportingSettings,
}
SOUDAN_SERVICES = ("ingress", "console", "triage", "dispatch", "reporting")


def _fresh_env(tmp_path: Path) -> dict[str, str]:
    """Run deploy/init-env.sh as `make up` does on a machine without deploy/.env."""
    deploy = tmp_path / "deploy"
    deploy.mkdir(parents=True)
    for name in ("init-env.sh", ".env.example"):
        shutil.copy(ROOT / "deploy" / name, deploy / name)
    subprocess.run(["sh", str(deploy / "init-env.sh")], check=True, capture_output=True)
    env: dict[str, str] = {}
    for line in (deploy / ".env").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value
    return env


def _stage(name: str) -> str:
    """The instructions of one stage of deploy/Dockerfile, with those of the stages it is built
    on (``FROM base AS demo``) first; comments left out."""
    text = (ROOT / "deploy" / "Dockerfile").read_text(encoding="utf-8")
    dockerfile = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    stages: dict[str, tuple[str, str]] = {}
    for block in dockerfile.split("\nFROM ")[1:]:
        header, _, body = block.partition("\n")
        base, _, stage = header.partition(" AS ")
        stages[stage.strip()] = (base.strip(), body)
    text = ""
    while name in stages:
        name, body = stages[name]
        text = body + "\n" + text
    return text


def _image_env(stage: str) -> dict[str, str]:
    return dict(re.findall(r"^\s*(?:ENV\s+)?([A-Z][A-Z0-9_]+)=(\S+)", _stage(stage), re.M))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    return loaded


def test_a_fresh_env_is_a_demo_with_fresh_secrets_and_nothing_left_to_fill_in(
    tmp_path: Path,
) -> None:
    first = _fresh_env(tmp_path / "one")
    second = _fresh_env(tmp_path / "two")
    assert first["SOUDAN_DEMO"] == "true"
    assert first["LINE_API_BASE_URL"] == "http://fakeline:9000"
    assert not [k for k, v in first.items() if "change-me" in v]
    for key in ("RABBITMQ_DEFAULT_PASS", "MONGO_INITDB_ROOT_PASSWORD", "LOG_HASH_KEY"):
        assert len(first[key]) >= 32, key
        assert first[key] != second[key], f"{key} is the same on two machines"
    # The accounts the containers create are the ones the services' URLs sign in with.
    assert f":{first['RABBITMQ_DEFAULT_PASS']}@rabbitmq:" in first["RABBITMQ_URL"]
    assert f":{first['MONGO_INITDB_ROOT_PASSWORD']}@mongodb:" in first["MONGODB_URL"]


@pytest.mark.parametrize("service", SOUDAN_SERVICES)
def test_every_service_starts_with_the_fresh_env(
    service: str, compose: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the container would see: deploy/.env (env_file) and the image's own ENV only."""
    definition = compose["services"][service]
    (command,) = definition["command"]
    assert command in {e.name for e in entry_points(group="console_scripts")}
    env = _fresh_env(tmp_path)
    assert definition["build"]["target"] == "runtime"
    for key, value in _image_env("runtime").items():
        env.setdefault(key, value)
    for key in list(os.environ):
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)

    settings: Any = SETTINGS[command]()  # a missing or invalid setting raises here

    port = getattr(settings, f"{service}_port")
    assert f"127.0.0.1:{port}:{port}" in definition["ports"]
    assert f"http://127.0.0.1:{port}/healthz" in " ".join(definition["healthcheck"]["test"])


def test_every_reference_in_compose_names_something_that_exists(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    services = compose["services"]
    for name, definition in services.items():
        for needed in definition.get("depends_on", {}):
            assert needed in services, f"{name} depends on unknown {needed}"
        for volume in definition.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in compose["volumes"], f"{name} uses undeclared volume {source}"
    # Every ${VAR} without a default is in the fresh deploy/.env (`--env-file deploy/.env`).
    env = _fresh_env(tmp_path)
    text = (ROOT / "compose.yaml").read_text(encoding="utf-8")
    for name, operator in re.findall(r"\$\{([A-Z0-9_]+)(:?[-?+]?)", text):
        if operator in ("", ":?", "?"):
            assert name in env, f"compose.yaml needs {name}, which deploy/.env lacks"
    # The demo's fake LINE platform is where the fresh env sends dispatch.
    fake = services["fakeline"]
    assert "demo" in fake["profiles"]
    assert fake["command"][fake["command"].index("--port") + 1] == "9000"
    student = services["students"]["command"]
    assert student[student.index("--webhook") + 1] == "http://ingress:8080/webhook"


def test_the_demo_image_carries_the_fake_line_platform_and_the_production_image_does_not(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert services["fakeline"]["build"]["target"] == "demo"
    assert services["students"]["image"] == services["fakeline"]["image"] != "soudan:local"
    demo, runtime = _stage("demo"), _stage("runtime")
    (source, target) = re.findall(r"^COPY (tools/fakeline/\S+) (\S+)", demo, re.M)[0]
    assert (ROOT / source / "soudan_fakeline" / "main.py").is_file()
    assert _image_env("demo")["PYTHONPATH"].rstrip("/") == target.rstrip("/")
    assert "fakeline" not in runtime
    assert "PYTHONPATH" not in _image_env("runtime")
    # Nothing of the checkout is mounted into the demo: the image alone runs it.
    assert not services["fakeline"].get("volumes")
    assert not services["students"].get("volumes")
