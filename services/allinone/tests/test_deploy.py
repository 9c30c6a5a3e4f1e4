"""The first `make up`, checked without Docker (none runs here): the deploy/.env that
deploy/init-env.sh writes on a fresh machine starts every service of compose.yaml, and
compose.yaml's services, ports, health checks and references agree with the code. The same for
the HA stack (deploy/compose.ha.yaml): its services' settings, the RabbitMQ nodes' cluster
configuration and the MongoDB replica set agree with the URLs the services are given."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic_settings import BaseSettings
from pymongo.uri_parser import parse_uri
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


# -- the HA stack (deploy/compose.ha.yaml) ------------------------------------------------------

HA_FILE = ROOT / "deploy" / "compose.ha.yaml"
HA_RABBIT_NODES = ("rabbit1", "rabbit2", "rabbit3")
HA_MONGO_NODES = ("mongo1", "mongo2", "mongo3")


@pytest.fixture(scope="module")
def ha() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(HA_FILE.read_text(encoding="utf-8"))
    return loaded


def _interpolate(value: str, env: dict[str, str]) -> str:
    """What Compose makes of a value with ``--env-file deploy/.env``: ${VAR}, ${VAR:?message},
    ${VAR:-default}; ``$$`` is a literal ``$``."""

    def substitute(match: re.Match[str]) -> str:
        name, operator, word = match.group(1), match.group(2) or "", match.group(3) or ""
        if name in env and (env[name] or ":" not in operator):
            return env[name]
        if operator.endswith("?"):
            raise AssertionError(f"{name} is required ({word}) and missing from deploy/.env")
        return word if operator.endswith("-") else ""

    escaped = value.replace("$$", "\0")
    return re.sub(r"\$\{([A-Z0-9_]+)(:?[-?])?([^}]*)\}", substitute, escaped).replace("\0", "$")


def _ha_service_env(definition: dict[str, Any], env: dict[str, str]) -> dict[str, str]:
    """A service's environment in the container: env_file (deploy/.env), the image's ENV
    underneath, the service's own ``environment`` on top."""
    assert definition["env_file"] == ".env"  # relative to deploy/, where the file lives
    seen = dict(env)
    for key, value in _image_env(definition["build"]["target"]).items():
        seen.setdefault(key, value)
    for key, value in definition.get("environment", {}).items():
        seen[key] = _interpolate(str(value), env)
    return seen


def _rabbitmq_conf(path: Path) -> dict[str, str]:
    """rabbitmq.conf's format (sysctl-like): ``key = value`` lines and # comments."""
    settings: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, equals, value = line.partition("=")
        assert equals, f"{path}:{number}: not key = value: {line}"
        assert re.fullmatch(r"[a-z0-9_.$]+", key.strip()), f"{path}:{number}: {line}"
        assert key.strip() not in settings, f"{path}:{number}: {key.strip()} given twice"
        settings[key.strip()] = value.strip()
    return settings


def _erlang_terms(text: str) -> Any:
    """The one term of an advanced.config (lists, tuples, atoms, integers; %% comments), as
    Python lists, tuples, strings and ints; anything else fails."""
    text = re.sub(r"%[^\n]*", "", text)
    tokens = re.findall(r"[\[\]{},.]|[a-z][a-zA-Z0-9_@]*|-?\d+|\S", text)
    position = 0

    def term() -> Any:
        nonlocal position
        token = tokens[position]
        position += 1
        if token in ("[", "{"):
            close = "]" if token == "[" else "}"
            items: list[Any] = []
            while tokens[position] != close:
                items.append(term())
                if tokens[position] == ",":
                    position += 1
                else:
                    assert tokens[position] == close, f"expected {close}, got {tokens[position]}"
            position += 1
            return items if close == "]" else tuple(items)
        if re.fullmatch(r"-?\d+", token):
            return int(token)
        assert re.fullmatch(r"[a-z][a-zA-Z0-9_@]*", token), f"unexpected {token!r}"
        return token

    value = term()
    assert tokens[position:] == ["."], f"trailing {tokens[position:]}"
    return value


def test_a_fresh_env_has_its_own_erlang_cookie_and_replica_set_key(tmp_path: Path) -> None:
    first = _fresh_env(tmp_path / "one")
    second = _fresh_env(tmp_path / "two")
    for key in ("RABBITMQ_ERLANG_COOKIE", "MONGODB_REPLICA_KEY"):
        assert len(first[key]) >= 32, key
        assert first[key] != second[key], f"{key} is the same on two machines"
    # A keyfile holds 6 to 1024 characters of the base64 alphabet.
    assert re.fullmatch(r"[A-Za-z0-9+/=]{6,1024}", first["MONGODB_REPLICA_KEY"])
    assert re.fullmatch(r"[A-Za-z0-9]{1,255}", first["RABBITMQ_ERLANG_COOKIE"])


@pytest.mark.parametrize("service", SOUDAN_SERVICES)
def test_every_service_of_the_ha_stack_starts_with_the_fresh_env_and_names_every_node(
    service: str, ha: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    definition = ha["services"][service]
    (command,) = definition["command"]
    assert command in {e.name for e in entry_points(group="console_scripts")}
    assert definition["build"]["target"] == "runtime"
    assert (
        HA_FILE.parent / definition["build"]["context"] / definition["build"]["dockerfile"]
    ).is_file()
    env = _fresh_env(tmp_path)
    seen = _ha_service_env(definition, env)
    for key in list(os.environ):
        monkeypatch.delenv(key)
    for key, value in seen.items():
        monkeypatch.setenv(key, value)

    settings: Any = SETTINGS[command]()  # a missing or invalid setting raises here

    port = getattr(settings, f"{service}_port")
    assert str(port) in [str(p) for p in definition["expose"]]
    assert f"http://127.0.0.1:{port}/healthz" in " ".join(definition["healthcheck"]["test"])
    assert "ports" not in definition, "a fixed host port cannot be shared by several instances"
    assert definition["deploy"]["replicas"] >= 2
    # RabbitMQ: one URL per node, each with the account the nodes create.
    urls = [urlsplit(u) for u in settings.rabbitmq_url.get_secret_value().split(",")]
    assert [(u.scheme, u.hostname, u.port) for u in urls] == [
        ("amqp", node, 5672) for node in HA_RABBIT_NODES
    ]
    for url in urls:
        assert (url.username, url.password) == (
            env["RABBITMQ_DEFAULT_USER"],
            env["RABBITMQ_DEFAULT_PASS"],
        )
    if hasattr(settings, "mongodb_url"):
        mongo = parse_uri(settings.mongodb_url.get_secret_value())
        assert mongo["nodelist"] == [(node, 27017) for node in HA_MONGO_NODES]
        assert mongo["options"]["replicaSet"] == "rs0"
        assert (mongo["username"], mongo["password"]) == (
            env["MONGO_INITDB_ROOT_USERNAME"],
            env["MONGO_INITDB_ROOT_PASSWORD"],
        )
        assert ha["services"][service]["depends_on"]["mongo-init"] == {
            "condition": "service_completed_successfully"
        }
    for node in HA_RABBIT_NODES:
        assert definition["depends_on"][node] == {"condition": "service_healthy"}


def test_every_reference_in_the_ha_stack_names_something_that_exists(
    ha: dict[str, Any], tmp_path: Path
) -> None:
    services = ha["services"]
    used_volumes: set[str] = set()
    for name, definition in services.items():
        assert "image" in definition, f"{name} has no image"
        for needed in definition.get("depends_on", {}):
            assert needed in services, f"{name} depends on unknown {needed}"
        for volume in definition.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (HA_FILE.parent / source).is_file(), f"{name} mounts missing {source}"
            else:
                assert source in ha["volumes"], f"{name} uses undeclared volume {source}"
                used_volumes.add(source)
        for kind in ("secrets", "configs"):
            for item in definition.get(kind, []):
                source = item["source"] if isinstance(item, dict) else item
                assert source in ha.get(kind, {}), f"{name} uses undeclared {kind} {source}"
    assert used_volumes == set(ha["volumes"]), "a declared volume is used by nobody"
    # Every ${VAR} without a default is in the fresh deploy/.env (`--env-file deploy/.env`).
    env = _fresh_env(tmp_path)
    text = HA_FILE.read_text(encoding="utf-8")
    for name, operator in re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)(:?[-?+]?)", text):
        if operator in ("", ":?", "?"):
            assert name in env, f"compose.ha.yaml needs {name}, which deploy/.env lacks"
    # The one-shot services run once, and what they need comes first.
    for one_shot in ("ha-secrets", "mongo-init"):
        assert services[one_shot]["restart"] == "no"
    for node in (*HA_RABBIT_NODES, *HA_MONGO_NODES):
        assert services[node]["depends_on"]["ha-secrets"] == {
            "condition": "service_completed_successfully"
        }


def test_the_three_rabbitmq_nodes_form_one_cluster_by_their_names_with_one_shared_cookie(
    ha: dict[str, Any],
) -> None:
    services = ha["services"]
    conf = _rabbitmq_conf(HA_FILE.parent / "ha" / "rabbitmq.conf")
    assert conf["cluster_formation.peer_discovery_backend"] == "classic_config"
    listed = {v for k, v in conf.items() if k.startswith("cluster_formation.classic_config.nodes.")}
    assert listed == {f"rabbit@{services[node]['hostname']}" for node in HA_RABBIT_NODES}
    assert [services[node]["hostname"] for node in HA_RABBIT_NODES] == list(HA_RABBIT_NODES)
    assert conf["cluster_partition_handling"] == "pause_minority"
    advanced = _erlang_terms((HA_FILE.parent / "ha" / "advanced.config").read_text("utf-8"))
    rabbit = dict(dict(advanced)["rabbit"])
    assert rabbit["quorum_cluster_size"] == 3
    cookie = services["ha-secrets"]
    script = cookie["command"][0]
    assert cookie["environment"]["ERLANG_COOKIE"] == "${RABBITMQ_ERLANG_COOKIE:?set in deploy/.env}"
    for node in HA_RABBIT_NODES:
        volumes = dict(v.split(":")[:2] for v in services[node]["volumes"])
        assert services[node]["image"].startswith("rabbitmq:4.")
        assert volumes["./ha/rabbitmq.conf"].startswith("/etc/rabbitmq/conf.d/")
        assert volumes["./ha/advanced.config"] == "/etc/rabbitmq/advanced.config"
        # ha-secrets writes the cookie into the node's home (its data volume), mode 400.
        data = next(source for source, target in volumes.items() if target == "/var/lib/rabbitmq")
        assert f"{data}:/cookies/{node}" in cookie["volumes"]
    assert "for node in rabbit1 rabbit2 rabbit3; do" in script
    assert 'chmod 400 "/cookies/$$node/.erlang.cookie"' in script


def test_the_replica_set_has_the_three_mongodb_hosts_the_services_connect_to(
    ha: dict[str, Any], tmp_path: Path
) -> None:
    services = ha["services"]
    env = _fresh_env(tmp_path)
    url = _interpolate(ha["x-engines"]["MONGODB_URL"], env)
    parsed = parse_uri(url)
    initiate = (HA_FILE.parent / "ha" / "mongo-init.js").read_text(encoding="utf-8")
    members = re.findall(r'host: "([^"]+)"', initiate)
    assert members == [f"{host}:{port}" for host, port in parsed["nodelist"]]
    assert f'_id: "{parsed["options"]["replicaSet"]}"' in initiate
    keyfile_volume = "mongodb-keyfile"
    assert f"{keyfile_volume}:/mongo-keyfile" in services["ha-secrets"]["volumes"]
    assert "chmod 400 /mongo-keyfile/replica.key" in services["ha-secrets"]["command"][0]
    for host, _ in parsed["nodelist"]:
        node = services[host]
        assert node["hostname"] == host
        command = node["command"]
        assert command[command.index("--replSet") + 1] == parsed["options"]["replicaSet"]
        keyfile = Path(command[command.index("--keyFile") + 1])
        assert f"{keyfile_volume}:{keyfile.parent}:ro" in node["volumes"]
        assert keyfile.name == "replica.key"
    # Only the first member creates the root account; the others get it by the initial sync.
    assert "MONGO_INITDB_ROOT_PASSWORD" in services["mongo1"]["environment"]
    assert "environment" not in services["mongo2"]
    assert "environment" not in services["mongo3"]
    init = services["mongo-init"]
    assert "./ha/mongo-init.js:/mongo-init.js:ro" in init["volumes"]
    assert "mongodb://mongo1:27017/" in init["command"][-1]
    assert set(init["depends_on"]) == set(HA_MONGO_NODES)
