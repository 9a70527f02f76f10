"""Start and stop ``notebooks/apps/triton_chat.py`` (PyTriton) from a notebook or a test.

PyTriton needs ``numpy<2`` and its own ``protobuf``, so it runs from an environment of its
own, ``.venv-pytriton`` (``make .venv-pytriton``; ``$PYTRITON_PYTHON`` names another
interpreter). The kernel talks to it over plain HTTP only::

    server = start_triton("triton.log")      # blocks until the three models are ready
    ...                                       # POST http://127.0.0.1:8100/v2/models/chat/infer
    server.stop()                             # SIGINT: Triton stops its server and model processes
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .cluster import wait_for_http
from .processes import count_processes, start_background, stop_process_tree

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "notebooks" / "apps" / "triton_chat.py"
MODELS = ("chat", "chat_batched", "chat_stream")
DEFAULT_PORT = 8100


def pytriton_python() -> Path:
    """The interpreter of the PyTriton environment; FileNotFoundError saying how to make it."""
    python = Path(os.environ.get("PYTRITON_PYTHON") or ROOT / ".venv-pytriton" / "bin" / "python")
    if not python.exists():
        raise FileNotFoundError(
            f"{python} does not exist: create PyTriton's environment with `make .venv-pytriton` "
            "(or set PYTRITON_PYTHON to a Python that has nvidia-pytriton installed)"
        )
    return python


def library_dir(python: Path) -> str:
    """The folder holding ``python``'s own libpython.

    Triton's Python backend loads ``libpython3.X.so`` by name: without this folder first on
    ``LD_LIBRARY_PATH`` it may load the system's copy, which does not match an interpreter
    built elsewhere (pyenv, conda), and the models fail to load.
    """
    code = "import sysconfig; print(sysconfig.get_config_var('LIBDIR') or '')"
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout.strip()


@dataclass
class TritonServer:
    """A running ``triton_chat.py``; ``startup_s`` is from the process start to all models ready."""

    process: subprocess.Popen[bytes]
    url: str
    log_file: Path
    startup_s: float
    command: list[str] = field(default_factory=list)

    def stop(self, timeout_s: float = 60) -> int:
        """Stop it with SIGINT (as Ctrl-C would) and wait for every process it started."""
        return stop_process_tree(self.process, signal.SIGINT, timeout_s)


def start_triton(
    log_file: str | Path,
    *,
    http_port: int = DEFAULT_PORT,
    model: str | None = None,
    num_threads: int | None = None,
    max_queue_delay_ms: float = 10,
    timeout_s: float = 180,
    app: str | Path = APP,
) -> TritonServer:
    """Start ``triton_chat.py`` from PyTriton's environment and wait until its models are ready.

    ``num_threads`` sets torch's threads in it (``OMP_NUM_THREADS``); ``model`` a checkpoint
    folder (default: ``$SERVE_CHAT_MODEL``, else tiny-chat); ``app`` another copy of the module.
    """
    app = Path(app).resolve()
    python = pytriton_python()
    command = [str(python), str(app), "--http-port", str(http_port), "--max-queue-delay-ms", str(max_queue_delay_ms)]
    if model:
        command += ["--model", str(model)]
    env = {"LD_LIBRARY_PATH": os.pathsep.join(p for p in (library_dir(python), os.environ.get("LD_LIBRARY_PATH")) if p)}
    if num_threads:
        env["OMP_NUM_THREADS"] = str(num_threads)
    start = time.perf_counter()
    process = start_background(command, log_file, cwd=app.parent, env=env)
    url = f"http://127.0.0.1:{http_port}"
    try:
        for name in MODELS:
            remaining = timeout_s - (time.perf_counter() - start)
            if process.poll() is not None:
                raise RuntimeError(f"triton_chat.py exited with {process.returncode}; see {log_file}")
            wait_for_http(f"{url}/v2/models/{name}/ready", timeout_s=max(remaining, 1))
    except BaseException:
        stop_process_tree(process, signal.SIGINT, 30)
        raise
    return TritonServer(process, url, Path(log_file), time.perf_counter() - start, command)


def tritonserver_processes() -> int:
    """How many ``tritonserver`` processes run on this machine (0 after a clean stop)."""
    return count_processes(r"(^|/)tritonserver( |$)")


if __name__ == "__main__":  # python -m helpers.pytriton: start it, print its URL, stop on Ctrl-C
    server = start_triton(sys.argv[1] if len(sys.argv) > 1 else "triton.log")
    print(f"ready at {server.url} after {server.startup_s:.1f} s; Ctrl-C stops it")
    try:
        server.process.wait()
    except KeyboardInterrupt:
        server.stop()
