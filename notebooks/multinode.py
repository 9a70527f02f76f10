"""A multi-node Ray cluster on one machine: a head and N worker nodes, each on its own address.

Notebook 10 uses it to show Serve across nodes, and a node lost, on a laptop::

    cluster = LocalCluster(workers=2)
    print(cluster.script())          # the plain `ray start` commands it runs
    cluster.start()                  # head on 127.0.0.2, workers on 127.0.0.3 and 127.0.0.4
    ...
    cluster.stop_node(cluster.workers[0], signal.SIGKILL)   # a machine dies
    cluster.start_node(cluster.workers[0])                  # and comes back
    cluster.stop()                   # every process of this cluster, and only those

Why it is done this way:

* Each node needs an address of its own, or Ray sees one node three times. Linux answers on
  every address of ``127.0.0.0/8``, so ``127.0.0.2``, ``.3`` and ``.4`` are three local
  "machines". (``--node-ip-address=127.0.0.1`` is replaced by the machine's network address.)
* Every per-node port is set explicitly: the defaults (6379, 8265, 52365, ...) are shared by
  every Ray on the machine, and some of Ray's services listen on all interfaces.
* ``ray stop`` stops **every** Ray process on the machine. One node is stopped by signalling
  its own processes: those that name its address on their command line, and their children.
* Token authentication is on (``RAY_AUTH_MODE=token``): ``ray start --head`` otherwise runs
  the cluster open when no token file exists.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from helpers.processes import CliResult, run_cli

# The port plan: node k (0 = head) uses BASE + 200*k + offset, workers' own ports above +100.
_PORT_OFFSETS = {
    "node-manager-port": 1,
    "object-manager-port": 2,
    "runtime-env-agent-port": 3,
    "dashboard-agent-grpc-port": 4,
    "dashboard-agent-listen-port": 5,
    "metrics-export-port": 6,
}
_HEAD_PORT_OFFSETS = {"port": 0, "ray-client-server-port": 7, "dashboard-port": 8}
AUTH_ENV = {"RAY_AUTH_MODE": "token"}


@dataclass(frozen=True)
class LocalNode:
    """One node of a :class:`LocalCluster`: its name, address, ports and resources."""

    name: str  # "head", "worker-1", ...
    ip: str  # 127.0.0.2, 127.0.0.3, ...
    base_port: int
    num_cpus: int
    resources: Mapping[str, float] = field(default_factory=dict)

    @property
    def is_head(self) -> bool:
        return self.name == "head"

    def ports(self) -> dict[str, int]:
        """Every port ``ray start`` is given for this node."""
        offsets = {**(_HEAD_PORT_OFFSETS if self.is_head else {}), **_PORT_OFFSETS}
        ports = {flag: self.base_port + off for flag, off in offsets.items()}
        ports["min-worker-port"] = self.base_port + 100
        ports["max-worker-port"] = self.base_port + 199
        return ports

    def start_args(self, head_address: str, temp_dir: str) -> list[str]:
        """The arguments of ``ray start`` for this node (after ``ray start``)."""
        args = ["--head"] if self.is_head else [f"--address={head_address}"]
        args.append(f"--node-ip-address={self.ip}")
        args += [f"--{flag}={port}" for flag, port in self.ports().items()]
        if self.is_head:
            args.append(f"--dashboard-host={self.ip}")
            args.append(f"--temp-dir={temp_dir}")
        args.append(f"--num-cpus={self.num_cpus}")
        if self.resources:
            args.append("--resources=" + json.dumps(dict(self.resources), separators=(",", ":")))
        args.append("--disable-usage-stats")
        return args


class LocalCluster:
    """A head and ``workers`` worker nodes on 127.0.0.2, 127.0.0.3, ... of this machine.

    Args:
        workers: how many worker nodes.
        num_cpus: whole CPUs each node declares (a share of this machine's cores, not a reservation).
        head_num_cpus: CPUs of the head node (default: ``num_cpus``). KubeRay clusters often
            give the head 0, so that no replica runs beside the controller.
        resources: custom resources each worker declares, e.g. ``{"NPU": 1}``.
        base_port: the head's GCS port; every other port of node k is ``base_port + 200*k + n``.
        temp_dir: Ray's temporary directory for this cluster (sessions, logs, sockets, and the
            address file ``ray_current_cluster``). Default: ``/tmp/ray-local-<base_port>``.
            Keep it short: Ray's socket paths inside it must stay under 108 bytes.
        env: extra environment for the Ray processes of every node (e.g. ``PYTHONPATH``).
        node_env: extra environment for one node's Ray processes, by node name, e.g.
            ``{"worker-1": {"RAY_SERVE_WORKER_PROXY_HTTP_PORT": "23280"}}``. Everything that
            node starts (raylet, workers, Serve's proxy and replicas there) inherits it, as on
            a real machine where ``ray start`` runs with that environment.

    The ``ray start`` commands run with ``RAY_AUTH_MODE=token``. A Python process that joins
    the cluster (``ray.init``) needs it in its environment too, *before* it imports ``ray``:
    Ray reads the mode once, at import.
    """

    def __init__(
        self,
        workers: int = 2,
        *,
        num_cpus: int = 1,
        head_num_cpus: int | None = None,
        resources: Mapping[str, float] | None = None,
        base_port: int = 23000,
        temp_dir: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        node_env: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        if not 1 <= workers <= 20:
            raise ValueError("workers must be between 1 and 20")
        self.head = LocalNode("head", "127.0.0.2", base_port, head_num_cpus if head_num_cpus is not None else num_cpus)
        self.workers = [
            LocalNode(f"worker-{k}", f"127.0.0.{2 + k}", base_port + 200 * k, num_cpus, dict(resources or {}))
            for k in range(1, workers + 1)
        ]
        # Its own temporary directory (by default one per port plan): Ray's sessions, logs and
        # address file, and how this helper tells its processes from another cluster's.
        self.temp_dir = str(temp_dir or Path(tempfile.gettempdir()) / f"ray-local-{base_port}")
        # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which helpers.start sets for a private Ray in
        # this process, would make `ray start` refuse to add nodes: not for this cluster.
        self.env = {**AUTH_ENV, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", **(env or {})}
        self.node_env = {name: dict(values) for name, values in (node_env or {}).items()}
        unknown = set(self.node_env) - {n.name for n in self.nodes}
        if unknown:
            raise ValueError(f"node_env names no node of this cluster: {sorted(unknown)}")
        self.ray = str(Path(sys.executable).with_name("ray"))

    @property
    def nodes(self) -> list[LocalNode]:
        return [self.head, *self.workers]

    @property
    def address(self) -> str:
        """The head's GCS address, which ``ray start --address`` and ``ray.init`` join."""
        return f"{self.head.ip}:{self.head.base_port}"

    @property
    def dashboard_url(self) -> str:
        """The dashboard (``serve deploy --address``, the state API, Serve's REST API)."""
        return f"http://{self.head.ip}:{self.head.ports()['dashboard-port']}"

    def node(self, name: str) -> LocalNode:
        return next(n for n in self.nodes if n.name == name)

    def command(self, node: LocalNode) -> list[str]:
        return [self.ray, "start", *node.start_args(self.address, self.temp_dir)]

    def env_of(self, node: LocalNode) -> dict[str, str]:
        """The extra environment ``ray start`` runs with on ``node``."""
        return {**self.env, **self.node_env.get(node.name, {})}

    def script(self) -> str:
        """The shell commands :meth:`start` runs, as a reader would type them."""
        lines = [
            "# once, on the head: create ~/.ray/auth_token (if there is none), readable by you only.\n"
            "# The command also prints the token: keep it out of logs and shared terminals.\n"
            "ray get-auth-token --generate > /dev/null && chmod 600 ~/.ray/auth_token"
        ]
        for node in self.nodes:
            args = node.start_args(self.address, self.temp_dir)
            env = {**AUTH_ENV, **self.node_env.get(node.name, {})}
            prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
            text = f"{prefix} ray start " + " \\\n    ".join(shlex.quote(a) for a in args)
            lines.append(f"# {node.name} on {node.ip}\n{text}")
        return "\n\n".join(lines)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout_s: float = 120) -> dict[str, float]:
        """Create the token if needed, start the head, then each worker; wait until all are alive.

        Returns the seconds each node took to start, by name. Raises ``RuntimeError`` (with
        Ray's output) when a node fails to start, ``TimeoutError`` when it never turns alive.
        """
        taken = [p for n in self.nodes for p in n.ports().values() if _port_taken(n.ip, p)]
        if taken:
            raise RuntimeError(f"ports already taken: {taken[:5]}... stop the other cluster, or pass base_port=")
        if self.processes():
            raise RuntimeError(f"a cluster at {self.address} is already running: call stop() first")
        token = run_cli([self.ray, "get-auth-token", "--generate"])  # prints the token: not shown
        if token.returncode != 0:
            raise RuntimeError("ray get-auth-token failed (its output is not shown: it may hold the token)")
        # Ray writes the file with the process's umask (often world-readable): yours only.
        token_file = Path.home() / ".ray" / "auth_token"
        if token_file.exists():
            token_file.chmod(0o600)
        return {node.name: self.start_node(node, timeout_s) for node in self.nodes}

    def start_node(self, node: LocalNode, timeout_s: float = 120) -> float:
        """``ray start`` one node (again); return the seconds until the cluster lists it alive."""
        t0 = time.monotonic()
        result: CliResult = run_cli(self.command(node), env=self.env_of(node), timeout_s=timeout_s)
        if result.returncode != 0:
            raise RuntimeError(f"ray start for {node.name} failed:\n" + "\n".join(result.lines[-15:]))
        _wait(lambda: node.ip in self.alive_ips(), timeout_s, f"{node.name} to be alive")
        return time.monotonic() - t0

    def alive_nodes(self) -> list[dict]:
        """The nodes the head's GCS lists as alive (``node_ip``, ``node_id``, ...)."""
        import requests

        # Ray's state API over the dashboard's REST endpoint, with the token: this works from
        # any process, whatever RAY_AUTH_MODE it imported ray with.
        response = requests.get(
            f"{self.dashboard_url}/api/v0/nodes",
            params={"filter_keys": "state", "filter_predicates": "=", "filter_values": "ALIVE", "limit": 1000},
            headers={"Authorization": f"Bearer {auth_token()}"},
            timeout=10,
        )
        response.raise_for_status()
        return response.json()["data"]["result"]["result"]

    def alive_ips(self) -> set[str]:
        """The addresses of the nodes the head's GCS lists as alive."""
        return {n["node_ip"] for n in self.alive_nodes()}

    def processes(self, node: LocalNode | None = None) -> list[psutil.Process]:
        """The processes of one node (or of the whole cluster), children included.

        A process belongs to this cluster when its command line names the cluster's
        temporary directory or its GCS address; to a node when it also names the node's
        address (``--node-ip-address=``): the raylet, with its agents and workers as
        children, and the log monitor. The rest (GCS, dashboard, autoscaler monitor, client
        server) is the head's.
        """
        ours = re.compile(rf"{re.escape(self.temp_dir)}/|{re.escape(self.address)}(?!\d)")

        def node_of(cmd: str) -> str:
            for n in self.workers:
                if re.search(rf"node[-_]ip[-_]address={re.escape(n.ip)}(?!\d)", cmd):
                    return n.name
            return self.head.name

        found: dict[int, psutil.Process] = {}
        for proc in psutil.process_iter(["cmdline"]):
            try:
                cmd = " ".join(proc.info["cmdline"] or [])
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if ours.search(cmd) and (node is None or node_of(cmd) == node.name):
                found[proc.pid] = proc
        for proc in list(found.values()):
            try:
                for child in proc.children(recursive=True):
                    found.setdefault(child.pid, child)
            except psutil.NoSuchProcess:
                continue
        return sorted(found.values(), key=lambda p: p.pid)

    def node_id(self, node: LocalNode) -> str:
        """The Ray node id of ``node``'s current (alive) incarnation."""
        ids = [n["node_id"] for n in self.alive_nodes() if n["node_ip"] == node.ip]
        if not ids:
            raise LookupError(f"{node.name} is not alive")
        return ids[0]

    def drain_command(self, node: LocalNode, reason: str = "DRAIN_NODE_REASON_PREEMPTION",
                      message: str = "preempted", deadline_s: int | None = None) -> list[str]:
        """``ray drain-node`` for ``node``: ask the GCS to drain it (what the autoscaler does)."""
        command = [self.ray, "drain-node", f"--address={self.address}", f"--node-id={self.node_id(node)}",
                   f"--reason={reason}", f"--reason-message={message}"]
        if deadline_s is not None:
            command.append(f"--deadline-remaining-seconds={deadline_s}")
        return command

    def drain_node(self, node: LocalNode, **options: object) -> CliResult:
        """Run :meth:`drain_command`; raise ``RuntimeError`` if the GCS does not accept the drain."""
        result = run_cli(self.drain_command(node, **options), env=self.env)  # type: ignore[arg-type]
        if result.returncode != 0:
            raise RuntimeError(f"ray drain-node for {node.name} failed:\n" + "\n".join(result.lines[-10:]))
        return result

    def stop_node(self, node: LocalNode, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int:
        """Send ``sig`` to every process of ``node``; wait until they are gone. Returns how many.

        SIGTERM lets the raylet say goodbye to the head (the node is marked dead at once);
        SIGKILL is a machine that vanished (the head notices only when health checks fail).
        Whatever still runs after ``timeout_s`` is killed.
        """
        procs = self.processes(node)
        for proc in procs:
            try:
                proc.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=timeout_s)
        for proc in alive:
            proc.kill()
        psutil.wait_procs(alive, timeout=10)
        return len(procs)

    def stop(self, timeout_s: float = 30) -> int:
        """Stop every process of this cluster (workers, then the head), and only those.

        Unlike ``ray stop``, other Ray instances on this machine keep running. Returns how
        many processes were stopped.
        """
        count = 0
        for node in [*self.workers, self.head]:
            count += self.stop_node(node, signal.SIGTERM, timeout_s)
        leftovers = self.processes()
        for proc in leftovers:
            proc.kill()
        psutil.wait_procs(leftovers, timeout=10)
        return count + len(leftovers)


def auth_token() -> str:
    """The cluster's token, from ``$RAY_AUTH_TOKEN`` or ``~/.ray/auth_token``."""
    return os.environ.get("RAY_AUTH_TOKEN") or (Path.home() / ".ray" / "auth_token").read_text().strip()


def _port_taken(host: str, port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _wait(predicate, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    from helpers.cluster import wait_until

    wait_until(predicate, timeout_s, what, interval_s=0.2)
