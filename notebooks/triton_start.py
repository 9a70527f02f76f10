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
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from helpers.cluster import port_in_use
from helpers.processes import count_processes, start_background, stop_process_tree

ROOT = Path(__file__).resolve().parents[1]
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


# __library_dir_begin__
def library_dir(python: Path) -> str:
    """The folder holding ``python``'s own libpython.

    Triton's Python backend loads ``libpython3.X.so`` by name: without this folder first on
    ``LD_LIBRARY_PATH`` it may load the system's copy, which does not match an interpreter
    built elsewhere (pyenv, conda), and the models fail to load.
    """
    code = "import sysconfig; print(sysconfig.get_config_var('LIBDIR') or '')"
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout.strip()
# __library_dir_end__


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

    ``num_threads`` sets torch's CPU threads in it (default 1); ``model`` a checkpoint
    folder (default: ``$SERVE_CHAT_MODEL``, else tiny-chat); ``app`` another copy of the module.
    """
    app = Path(app).resolve()
    python = pytriton_python()
    command = [str(python), str(app), "--http-port", str(http_port), "--max-queue-delay-ms", str(max_queue_delay_ms)]
    if model:
        command += ["--model", str(model)]
    env = {"LD_LIBRARY_PATH": os.pathsep.join(p for p in (library_dir(python), os.environ.get("LD_LIBRARY_PATH")) if p)}
    if num_threads:
        command += ["--torch-threads", str(num_threads)]
    taken = [port for port in (http_port, http_port + 1, http_port + 2) if port_in_use(port)]
    if taken:
        raise RuntimeError(
            f"port(s) {', '.join(map(str, taken))} on 127.0.0.1 are taken (another Triton server, or "
            "another program): stop it, or pass another http_port (the next two ports go with it)"
        )
    start = time.perf_counter()
    process = start_background(command, log_file, cwd=app.parent, env=env)
    url = f"http://127.0.0.1:{http_port}"

    def ready() -> bool:
        try:
            return all(requests.get(f"{url}/v2/models/{name}/ready", timeout=2).status_code == 200 for name in MODELS)
        except requests.RequestException:
            return False

    try:
        while not ready():
            if process.poll() is not None:
                tail = Path(log_file).read_text(errors="replace")[-2000:]
                raise RuntimeError(f"triton_chat.py exited with {process.returncode}; the end of its log:\n{tail}")
            if time.perf_counter() - start > timeout_s:
                raise TimeoutError(f"the PyTriton server's models were not ready after {timeout_s:g} s; see {log_file}")
            time.sleep(0.2)
    except BaseException:
        if process.poll() is None:
            stop_process_tree(process, signal.SIGINT, 30)
        raise
    return TritonServer(process, url, Path(log_file), time.perf_counter() - start, command)


def tritonserver_processes() -> int:
    """How many ``tritonserver`` processes run on this machine (0 after a clean stop)."""
    return count_processes(r"(^|/)tritonserver( |$)")

