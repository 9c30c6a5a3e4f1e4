"""A three-node RabbitMQ cluster on this machine, for the ``cluster`` tests (issue 15).

Three ``rabbitmq-server`` nodes of Debian's RabbitMQ (``/usr/lib/rabbitmq/bin``), each with its
own node name, AMQP and distribution ports (free ones), configuration, data and log directories
under a temporary directory, and one Erlang cookie of their own; the second and third are joined
to the first with ``stop_app`` / ``join_cluster`` / ``start_app``. Run as the ``rabbitmq`` user
when the tests run as root (as Debian's broker does), as the current user otherwise.

Nothing here touches the shared broker (``rabbit@localhost`` on 127.0.0.1:5672): the nodes read
no file of ``/etc/rabbitmq``. :meth:`Cluster.stop` stops every node and kills what is left of
it by process id, so no ``beam.smp`` outlives the run, also when starting failed half-way.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from soudan_shared.testing.proxy import free_port

RABBITMQ_BIN = Path(os.environ.get("SOUDAN_RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))
STARTUP_TIMEOUT = 120  # seconds for a node to boot (the first boot creates its database)
CTL_TIMEOUT = 120


class ClusterUnavailable(RuntimeError):
    """The cluster could not be started; the message says why (and what to install)."""


@dataclass
class Node:
    """One node: its name, ports and directory; ``pid`` of its ``beam.smp`` while it runs."""

    name: str  # e.g. soudan-1a2b3c-1@localhost
    amqp_port: int
    dist_port: int
    base: Path
    pid: int | None = None

    @property
    def url(self) -> str:
        # Heartbeats every few seconds: a client of a node that stops answering (paused, cut
        # off) gives it up within about 20 s instead of the default 3 minutes.
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/?heartbeat=5"

    @property
    def pid_file(self) -> Path:
        return self.base / "beam.pid"


@dataclass
class Cluster:
    """The nodes of a cluster started by :func:`start_cluster`, and how to hurt them."""

    nodes: list[Node]
    base: Path
    home: Path
    user: str | None  # run as this user (root only); None: as the current user
    _started: list[Node] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def rabbitmq_url(self) -> str:
        """Every node's address, comma-separated, as the services' ``RABBITMQ_URL`` takes it."""
        return ",".join(self.urls)

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    # -- running commands as the nodes' user --------------------------------------------------

    def _env(self, node: Node | None = None) -> dict[str, str]:
        env = {
            "PATH": f"{RABBITMQ_BIN}:/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }
        if node is not None:
            env.update(
                {
                    "RABBITMQ_NODENAME": node.name,
                    "RABBITMQ_DIST_PORT": str(node.dist_port),
                    "RABBITMQ_CONFIG_FILE": str(node.base / "rabbitmq.conf"),
                    "RABBITMQ_MNESIA_BASE": str(node.base / "mnesia"),
                    "RABBITMQ_LOG_BASE": str(node.base / "log"),
                    "RABBITMQ_ENABLED_PLUGINS_FILE": str(node.base / "enabled_plugins"),
                    "RABBITMQ_CONF_ENV_FILE": str(node.base / "rabbitmq-env.conf"),
                    "RABBITMQ_PID_FILE": str(node.pid_file),
                    # A node that stops answering is seen as down within seconds (the default,
                    # 60 s, would hold a partition test for a minute); one scheduler pair per
                    # node, the machine has two cores for the three.
                    "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel net_ticktime 10 +S 1:1",
                }
            )
        return env

    def _command(self, args: list[str], env: dict[str, str]) -> list[str]:
        if self.user is None:
            return args
        assignments = [f"{k}={v}" for k, v in env.items()]
        return ["runuser", "-u", self.user, "--", "env", *assignments, *args]

    def ctl(
        self, node: Node, *args: str, timeout: float = CTL_TIMEOUT, tool: str = "rabbitmqctl"
    ) -> str:
        """``<tool> -n <node> args`` (``rabbitmqctl`` by default, or another of RabbitMQ's
        command-line tools); raise :class:`ClusterUnavailable` with its output."""
        env = self._env()
        command = self._command([str(RABBITMQ_BIN / tool), "-n", node.name, *args], env)
        try:
            done = subprocess.run(  # noqa: S603 - fixed program, arguments of our own
                command,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ClusterUnavailable(
                f"{tool} {' '.join(args)} on {node.name} took over {timeout}s"
            ) from exc
        if done.returncode != 0:
            raise ClusterUnavailable(
                f"{tool} {' '.join(args)} on {node.name} failed ({done.returncode}): "
                f"{(done.stderr or done.stdout).strip()[-800:]}"
            )
        return done.stdout

    # -- life cycle of one node ---------------------------------------------------------------

    def start_node(self, node: Node, *, wait: bool = True) -> None:
        """Start ``node`` (detached) on its directory; with ``wait``, until it has booted."""
        env = self._env(node)
        node.pid_file.unlink(missing_ok=True)
        command = self._command([str(RABBITMQ_BIN / "rabbitmq-server"), "-detached"], env)
        if node not in self._started:
            self._started.append(node)
        # Its output goes to a file, not a pipe: the detached node outlives this call, and a
        # node writing to a closed pipe would die of it.
        output = node.base / "start.out"
        with output.open("ab") as out:
            code = subprocess.run(  # noqa: S603
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                timeout=60,
                check=False,
            ).returncode
        if code != 0:
            raise ClusterUnavailable(
                f"rabbitmq-server -detached for {node.name} failed ({code}): "
                f"{output.read_text(errors='replace').strip()[-800:]}; see {node.base / 'log'}"
            )
        if wait:
            self.await_node(node)

    def await_node(self, node: Node) -> None:
        try:
            # ``wait`` first: await_startup gives up at once on a node not yet registered.
            timeout = str(STARTUP_TIMEOUT)
            self.ctl(node, "wait", str(node.pid_file), "--timeout", timeout)
            self.ctl(node, "await_startup", "--timeout", timeout)
        except ClusterUnavailable as exc:
            raise ClusterUnavailable(f"{exc}; the node's log is in {node.base / 'log'}") from None
        node.pid = self._read_pid(node)

    def _read_pid(self, node: Node) -> int:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                return int(node.pid_file.read_text().strip())
            time.sleep(0.1)
        raise ClusterUnavailable(f"{node.name} wrote no pid file at {node.pid_file}")

    def kill(self, node: Node, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the node's ``beam.smp`` (SIGKILL: a hard stop, no goodbye)."""
        if node.pid is None:
            raise RuntimeError(f"{node.name} is not running")
        os.kill(node.pid, sig)
        if sig == signal.SIGKILL:
            _wait_gone(node.pid, 30)
            node.pid = None

    def stop_node(self, node: Node) -> None:
        """Stop ``node`` the polite way (``rabbitmqctl stop``), killing it if that fails."""
        pid = node.pid
        with contextlib.suppress(ClusterUnavailable):
            self.ctl(node, "stop", timeout=60)
        if pid is not None and not _wait_gone(pid, 30):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, 10)
        node.pid = None

    def stop(self) -> None:
        """Stop every node this cluster started, then kill by pid whatever is left of them."""
        for node in self._started:
            if node.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(node.pid, signal.SIGCONT)  # a paused node cannot stop
        for node in self._started:
            self.stop_node(node)
        names = {node.name for node in self._started}
        for pid in _beams_of(names):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, 10)
        self._started.clear()

    # -- the cluster as a whole ----------------------------------------------------------------

    def running_nodes(self, via: Node) -> set[str]:
        """The nodes ``via`` sees running in its cluster."""
        out = self.ctl(via, "eval", "rabbit_nodes:all_running().", timeout=30)
        return {part.strip(" []'\n") for part in out.strip().strip("[]").split(",") if part.strip()}

    def wait_running(self, via: Node, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        seen: set[str] = set()
        while time.monotonic() < deadline:
            with contextlib.suppress(ClusterUnavailable):
                seen = self.running_nodes(via)
                if len(seen & {n.name for n in self.nodes}) >= count:
                    return
            time.sleep(0.5)
        raise ClusterUnavailable(f"{via.name} sees {sorted(seen)} running, not {count} nodes")

    def wait_quorum_safe(self, node: Node, timeout: float = 120) -> None:
        """Wait until stopping ``node`` would leave every quorum queue a majority of replicas in
        sync (``rabbitmq-queues check_if_node_is_quorum_critical``), as before an upgrade."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.ctl(node, "check_if_node_is_quorum_critical", tool="rabbitmq-queues")
                return
            except ClusterUnavailable:
                if time.monotonic() >= deadline:
                    raise
            time.sleep(0.5)

    def queue_leader(self, queue: str, via: Node | None = None) -> Node:
        """The node leading quorum queue ``queue`` (in the default virtual host)."""
        via = via or next(n for n in self.nodes if n.pid is not None)
        out = self.ctl(via, "list_queues", "name", "leader", "--quiet", "--no-table-headers")
        for line in out.splitlines():
            name, _, leader = line.strip().partition("\t")
            if name == queue:
                return self.node(leader.strip())
        raise LookupError(f"no queue {queue} on {via.name}")

    def queue_members(self, queue: str, via: Node | None = None) -> list[str]:
        via = via or next(n for n in self.nodes if n.pid is not None)
        out = self.ctl(via, "list_queues", "name", "members", "--quiet", "--no-table-headers")
        for line in out.splitlines():
            name, _, members = line.strip().partition("\t")
            if name == queue:
                return [m.strip(" []\"'") for m in members.strip().strip("[]").split(",")]
        raise LookupError(f"no queue {queue} on {via.name}")


def _wait_gone(pid: int, timeout: float) -> bool:
    """Wait until process ``pid`` is gone (a zombie counts as gone); whether it went."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state == "Z":
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
            return True
        time.sleep(0.05)
    return False


def _beams_of(names: set[str]) -> list[int]:
    """Process ids of the ``beam.smp`` processes running one of the nodes ``names``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "exe").resolve().name != "beam.smp":
                continue
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in environ:
            if item.startswith(b"RABBITMQ_NODENAME=") and item.split(b"=", 1)[1].decode() in names:
                found.append(int(entry.name))
    return found


def _check_installed() -> None:
    missing = [p for p in ("rabbitmq-server", "rabbitmqctl") if not (RABBITMQ_BIN / p).exists()]
    if missing:
        raise ClusterUnavailable(
            f"{', '.join(missing)} not found in {RABBITMQ_BIN}: the cluster tests start Debian's "
            "RabbitMQ themselves (apt-get install rabbitmq-server; `make test` installs it as root)"
        )


def start_cluster(size: int = 3, base: Path | None = None) -> Cluster:
    """Start ``size`` nodes and join them into one cluster; stopped again if any step fails."""
    _check_installed()
    base = base or Path(tempfile.mkdtemp(prefix="soudan-cluster-"))
    user = "rabbitmq" if os.geteuid() == 0 else None
    prefix = f"soudan-{uuid.uuid4().hex[:6]}"
    home = base / "home"
    home.mkdir(parents=True, exist_ok=True)
    cookie = home / ".erlang.cookie"
    cookie.write_text(secrets.token_hex(20).upper())
    cookie.chmod(0o400)
    nodes = []
    for i in range(1, size + 1):
        node_dir = base / f"n{i}"
        node = Node(f"{prefix}-{i}@localhost", free_port(), free_port(), node_dir)
        (node_dir / "log").mkdir(parents=True)
        (node_dir / "mnesia").mkdir()
        (node_dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{node.amqp_port}\n"
            # A node cut off from the others and back (after a pause, a partition) is restarted
            # by the cluster itself and rejoins; pause_minority leaves Debian's 3.10 with the
            # partition recorded and the node out, until an operator restarts it.
            "cluster_partition_handling = autoheal\n"
            # The shared machine's disk may be fuller than the default 50 MB margin allows.
            "disk_free_limit.absolute = 1MB\n"
        )
        (node_dir / "enabled_plugins").write_text("[].\n")
        (node_dir / "rabbitmq-env.conf").write_text("")
        nodes.append(node)
    if user is not None:
        shutil.chown(base, user, user)
        for path in base.rglob("*"):
            shutil.chown(path, user, user)
    cluster = Cluster(nodes, base, home, user)
    try:
        for node in nodes:  # booted in parallel, then waited for one by one
            cluster.start_node(node, wait=False)
        for node in nodes:
            cluster.await_node(node)
        first = nodes[0]
        for node in nodes[1:]:
            cluster.ctl(node, "stop_app")
            cluster.ctl(node, "join_cluster", first.name)
            cluster.ctl(node, "start_app")
        cluster.wait_running(first, size)
    except BaseException:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
        raise
    return cluster


@contextlib.contextmanager
def running_cluster(size: int = 3) -> Iterator[Cluster]:
    """A cluster for the ``with`` block, stopped and its directory removed afterwards."""
    cluster = start_cluster(size)
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.base, ignore_errors=True)
