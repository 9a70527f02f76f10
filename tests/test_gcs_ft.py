"""GCS fault tolerance with an external Redis: the head killed and started again, the cluster kept.

A real ``redis-server`` (Debian's package) on 127.0.0.1 with a password, a head started with
``RAY_REDIS_ADDRESS`` and ``--redis-password`` (as Ray's GCS fault-tolerance guide says), and one
worker node. The head's processes are SIGKILLed and the same ``ray start --head`` runs again: the
new GCS must load the node table from Redis, so the worker stays the same node (same id, never
restarted) and the old head is listed dead. About a minute; on ports of its own (25000 and up,
Redis on 25600), in a temporary directory and a HOME of its own, so it runs beside other Rays.
"""

import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import requests

from helpers.cluster import port_in_use, wait_until
from multinode import LocalCluster, auth_token
from helpers.processes import run_cli

BASE_PORT = 25000
REDIS_PORT = 25600
PASSWORD = "gcs-ft-test-password"

pytestmark = [
    pytest.mark.ray,  # starts Ray: not part of `make check`
    pytest.mark.skipif(
        shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
        reason="redis-server is not installed (Debian package redis-server; .ci/run installs it)",
    ),
]


def redis_cli(*args: str, password: str | None = PASSWORD) -> str:
    auth = ["--no-auth-warning", "-a", password] if password else []
    done = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(REDIS_PORT), *auth, *args],
                          capture_output=True, text=True, timeout=10)
    return done.stdout.strip()


@pytest.fixture
def redis_server():
    assert not port_in_use(REDIS_PORT, "127.0.0.1"), f"port {REDIS_PORT} is taken"
    workdir = tempfile.mkdtemp(prefix="gcsft")
    proc = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(REDIS_PORT), "--requirepass", PASSWORD,
         "--save", "", "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: redis_cli("PING") == "PONG", 20, "redis to answer")
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def cluster(monkeypatch):
    monkeypatch.setenv("HOME", tempfile.mkdtemp(prefix="gcsfth"))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    c = LocalCluster(1, head_num_cpus=0, base_port=BASE_PORT, temp_dir=tempfile.mkdtemp(prefix="gcsftr"))
    yield c
    c.stop()
    assert c.processes() == []


def node_table(cluster: LocalCluster) -> dict[str, tuple[str, str]]:
    """node id -> (address, state) for every node the GCS knows, dead ones included."""
    response = requests.get(f"{cluster.dashboard_url}/api/v0/nodes", params={"limit": 100}, timeout=5,
                            headers={"Authorization": f"Bearer {auth_token()}"})
    response.raise_for_status()
    return {n["node_id"]: (n["node_ip"], n["state"]) for n in response.json()["data"]["result"]["result"]}


def start_head(cluster: LocalCluster, command: list[str], env: dict[str, str]) -> None:
    """`ray start --head`, once more on failure (a raylet on a busy machine may give up on its agents).

    The address file goes first: `ray start --head` refuses when it names a GCS that a raylet on
    this machine still uses, and on one machine the worker's raylet is such a raylet.
    """
    for _ in range(2):
        Path(cluster.temp_dir, "ray_current_cluster").unlink(missing_ok=True)
        started = run_cli(command, env=env, timeout_s=120)
        if started.returncode == 0:
            break
        cluster.stop_node(cluster.head, signal.SIGKILL)
    assert started.returncode == 0, "\n".join(started.lines[-10:])
    wait_until(lambda: cluster.head.ip in cluster.alive_ips(), 60, "the head to be alive", interval_s=0.2)


def test_redis_refuses_without_the_password(redis_server):
    assert redis_cli("PING") == "PONG"
    assert redis_cli("PING", password=None).startswith("NOAUTH")


def test_head_killed_and_restarted_keeps_the_cluster(redis_server, cluster):
    head, worker = cluster.head, cluster.workers[0]
    assert run_cli([cluster.ray, "get-auth-token", "--generate"]).returncode == 0
    env = {**cluster.env, "RAY_REDIS_ADDRESS": f"127.0.0.1:{REDIS_PORT}"}
    command = cluster.command(head) + [f"--redis-password={PASSWORD}"]

    start_head(cluster, command, env)
    cluster.start_node(worker)
    before = node_table(cluster)
    ids = {ip: node_id for node_id, (ip, state) in before.items() if state == "ALIVE"}
    assert set(ids) == {head.ip, worker.ip}
    assert int(redis_cli("DBSIZE")) > 0, "the GCS wrote nothing to Redis"
    worker_raylet = [p for p in cluster.processes(worker) if p.name() == "raylet"]
    assert len(worker_raylet) == 1

    t0 = time.monotonic()
    cluster.stop_node(head, signal.SIGKILL)
    assert not [p for p in cluster.processes(head) if p.name() == "gcs_server"]
    start_head(cluster, command, env)

    def restored() -> bool:
        table = node_table(cluster)
        alive = {ip: node_id for node_id, (ip, state) in table.items() if state == "ALIVE"}
        return (alive.get(worker.ip) == ids[worker.ip] and head.ip in alive
                and table.get(ids[head.ip]) == (head.ip, "DEAD"))

    wait_until(restored, 90, "the worker alive under its old id, the old head dead")
    took = time.monotonic() - t0
    # The worker was never restarted: the same raylet process, still running.
    assert worker_raylet[0].is_running() and worker_raylet[0].status() != "zombie"
    assert took < 150, f"the cluster took {took:.0f} s to be whole again"
