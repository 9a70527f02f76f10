"""multinode (notebooks/multinode.py): a head and two workers on 127.0.0.2-4, one stopped, all stopped, nothing left.

It starts real `ray start` processes (about 25 s), on ports of their own (25000 and up: notebook 10
uses 23000-23599 and its head-node section 24000 and up) and in a temporary directory of their
own, so that it runs beside the suite's private Ray.
"""

import os
import shlex
import signal
import tempfile

import psutil
import pytest

from multinode import LocalCluster, LocalNode

# Starts Ray, a model server or a browser: not part of `make check` (see tests/conftest.py).
pytestmark = pytest.mark.ray

BASE_PORT = 25000


def test_ports_differ_per_node_and_never_overlap():
    cluster = LocalCluster(3, base_port=BASE_PORT)
    seen: dict[int, str] = {}
    for node in cluster.nodes:
        ports = node.ports()
        assert ports["min-worker-port"] < ports["max-worker-port"]
        ranges = [p for flag, p in ports.items() if "worker-port" not in flag]
        ranges += list(range(ports["min-worker-port"], ports["max-worker-port"] + 1))
        for port in ranges:
            assert port not in seen, f"{node.name} and {seen[port]} share port {port}"
            seen[port] = node.name
    assert [n.ip for n in cluster.nodes] == ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]
    assert cluster.address == f"127.0.0.2:{BASE_PORT}"


def test_start_commands_set_every_port_and_the_token():
    cluster = LocalCluster(2, base_port=BASE_PORT, resources={"NPU": 1}, head_num_cpus=0)
    script = cluster.script()
    assert script.count("RAY_AUTH_MODE=token ray start") == 3
    # The token command prints the token: the script sends it nowhere and makes the file private.
    assert "ray get-auth-token --generate > /dev/null && chmod 600 ~/.ray/auth_token" in script
    head_args = cluster.head.start_args(cluster.address, cluster.temp_dir)
    worker_args = cluster.workers[0].start_args(cluster.address, cluster.temp_dir)
    for flag in ("node-manager-port", "object-manager-port", "runtime-env-agent-port", "dashboard-agent-grpc-port",
                 "dashboard-agent-listen-port", "metrics-export-port", "min-worker-port", "max-worker-port"):
        assert any(a.startswith(f"--{flag}=") for a in head_args)
        assert any(a.startswith(f"--{flag}=") for a in worker_args)
    for flag in ("port", "dashboard-port", "ray-client-server-port", "dashboard-host"):
        assert any(a.startswith(f"--{flag}=") for a in head_args)
    assert "--num-cpus=0" in head_args and "--head" in head_args
    assert f"--address={cluster.address}" in worker_args and '--resources={"NPU":1}' in worker_args
    # What the notebook prints is a shell script that a reader can paste: it parses.
    for block in script.split("\n\n")[1:]:
        command = [line for line in block.splitlines() if not line.startswith("#")]
        assert shlex.split(" ".join(line.rstrip("\\") for line in command))[1:3] == ["ray", "start"]


def test_node_env_goes_to_that_node_only():
    env = {"RAY_SERVE_WORKER_PROXY_HTTP_PORT": str(BASE_PORT + 280)}
    cluster = LocalCluster(2, base_port=BASE_PORT, node_env={"worker-1": env})
    assert cluster.env_of(cluster.workers[0])["RAY_SERVE_WORKER_PROXY_HTTP_PORT"] == str(BASE_PORT + 280)
    assert "RAY_SERVE_WORKER_PROXY_HTTP_PORT" not in cluster.env_of(cluster.workers[1])
    assert "RAY_SERVE_WORKER_PROXY_HTTP_PORT" not in cluster.env_of(cluster.head)
    assert all(cluster.env_of(n)["RAY_AUTH_MODE"] == "token" for n in cluster.nodes)
    blocks = cluster.script().split("\n\n")
    worker_1 = next(b for b in blocks if b.startswith("# worker-1"))
    worker_2 = next(b for b in blocks if b.startswith("# worker-2"))
    assert f"RAY_SERVE_WORKER_PROXY_HTTP_PORT={BASE_PORT + 280} ray start" in worker_1
    assert "RAY_SERVE_WORKER_PROXY_HTTP_PORT" not in worker_2
    with pytest.raises(ValueError, match="worker-9"):
        LocalCluster(2, node_env={"worker-9": env})


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError):
        LocalCluster(0)
    with pytest.raises(ValueError):
        LocalCluster(30)


@pytest.fixture
def cluster(monkeypatch):
    home = tempfile.mkdtemp(prefix="mnh")
    temp = tempfile.mkdtemp(prefix="mnr")  # short: Ray's socket paths must stay under 108 bytes
    monkeypatch.setenv("HOME", home)  # a fresh HOME: no token yet, start() must create one
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    c = LocalCluster(2, num_cpus=1, base_port=BASE_PORT, temp_dir=temp, node_env={"worker-2": {"NODE_ENV_PROBE": "w2"}})
    yield c
    c.stop()


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_three_nodes_up_one_stopped_then_all_stopped(cluster):
    took = cluster.start()
    assert set(took) == {"head", "worker-1", "worker-2"}
    token_file = os.path.join(os.environ["HOME"], ".ray", "auth_token")
    assert os.path.isfile(token_file)
    assert os.stat(token_file).st_mode & 0o077 == 0, "the token file must be readable by its owner only"
    assert cluster.alive_ips() == {"127.0.0.2", "127.0.0.3", "127.0.0.4"}
    with pytest.raises(RuntimeError, match="taken"):
        cluster.start()  # a second cluster on the same ports

    # Each node's processes are its own: a raylet each, and the GCS on the head only.
    per_node = {n.name: cluster.processes(n) for n in cluster.nodes}
    pids = {name: {p.pid for p in procs} for name, procs in per_node.items()}
    assert not (pids["head"] & pids["worker-1"]) and not (pids["worker-1"] & pids["worker-2"])
    for name, procs in per_node.items():
        names = [p.name() for p in procs]
        assert names.count("raylet") == 1, (name, names)
        assert ("gcs_server" in names) == (name == "head")
    everything = cluster.processes()
    assert {p.pid for p in everything} >= set().union(*pids.values())

    # A node's environment reaches its own raylet, and no other node's.
    raylets = {name: next(p for p in procs if p.name() == "raylet") for name, procs in per_node.items()}
    assert raylets["worker-2"].environ().get("NODE_ENV_PROBE") == "w2"
    assert "NODE_ENV_PROBE" not in raylets["worker-1"].environ() and "NODE_ENV_PROBE" not in raylets["head"].environ()

    # Everything listens on the cluster's own ports, never on Ray's shared defaults.
    ours = {p.pid for p in everything}
    listening = {c.laddr.port for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.pid in ours}
    assert not listening & {6379, 8265, 52365, 10001}, sorted(listening)

    # A token is required: without it the dashboard refuses.
    import requests

    assert requests.get(f"{cluster.dashboard_url}/api/v0/nodes", timeout=10).status_code in (401, 403)

    # One worker stopped (gracefully): only its processes go, the cluster lists it dead.
    worker = cluster.workers[0]
    stopped = cluster.stop_node(worker, signal.SIGTERM)
    assert stopped == len(per_node["worker-1"])
    assert _alive(per_node["worker-1"]) == []
    assert _alive(per_node["worker-2"]) and _alive(per_node["head"])
    from helpers.cluster import wait_until

    wait_until(lambda: cluster.alive_ips() == {"127.0.0.2", "127.0.0.4"}, 30, "worker-1 to be marked dead")

    # It comes back under the same address.
    cluster.start_node(worker)
    assert cluster.alive_ips() == {"127.0.0.2", "127.0.0.3", "127.0.0.4"}

    # A drain (the GCS's DrainNode, as `ray drain-node` sends it) is accepted for a busy-or-idle
    # worker with the preemption reason; an idle draining node then leaves by itself.
    command = cluster.drain_command(cluster.workers[1], deadline_s=60)
    assert command[1] == "drain-node" and "--reason=DRAIN_NODE_REASON_PREEMPTION" in command
    cluster.drain_node(cluster.workers[1])
    wait_until(lambda: "127.0.0.4" not in cluster.alive_ips(), 60, "the drained, idle worker-2 to leave")

    # All stopped: nothing of this cluster is left (and only this cluster was touched).
    everything = cluster.processes()
    cluster.stop()
    assert _alive(everything) == []
    assert cluster.processes() == []


def test_local_node_describes_itself():
    node = LocalNode("worker-1", "127.0.0.3", 23200, 1)
    assert not node.is_head
    assert node.ports()["node-manager-port"] == 23201
