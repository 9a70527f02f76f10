"""helpers.processes: command-line tools run from a notebook, and their cleaned output."""

import signal
import sys
import time

import psutil

from helpers.processes import count_processes, log_lines, run_cli, start_background, stop_process_tree

RAY_STYLE = (
    "2026-11-23 14:41:07,585\tINFO scripts.py:499 -- Running import path: 'apps.llm:app'.\n"
    "\x1b[36m(ProxyActor pid=21671)\x1b[0m INFO 2026-11-23 14:41:25,675 proxy 10.0.0.1 -- Proxy starting.\n"
    "plain line\n"
)


def test_run_cli_cleans_ray_log_lines():
    code = f"import sys; sys.stdout.write({RAY_STYLE!r}); sys.stderr.write('oops -- failed\\n'); sys.exit(3)"
    result = run_cli([sys.executable, "-c", code])
    assert result.returncode == 3
    assert result.lines == ["Running import path: 'apps.llm:app'.", "Proxy starting.", "plain line", "failed"]
    assert result.grep("Proxy", "plain") == ["Proxy starting.", "plain line"]
    assert "2026-11-23" in result.stdout and "\x1b[" not in result.stdout


def test_log_lines_one_per_pattern_in_order(tmp_path):
    log = tmp_path / "serve.log"
    log.write_text(RAY_STYLE)
    assert log_lines(log, "Proxy", "Running", "missing") == [
        "Proxy starting.",
        "Running import path: 'apps.llm:app'.",
        "(not found) missing",
    ]


def test_background_process_tree_stopped_with_ctrl_c(tmp_path):
    # A parent that starts a child and forwards nothing: both must be gone afterwards.
    code = (
        "import subprocess, sys, time, signal\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "signal.signal(signal.SIGINT, lambda *a: (child.terminate(), sys.exit(0)))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = start_background([sys.executable, "-c", code], tmp_path / "out.log")
    deadline = time.monotonic() + 20
    while "ready" not in (tmp_path / "out.log").read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children
    assert stop_process_tree(proc, signal.SIGINT, timeout_s=20) == 0
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)


def test_ctrl_c_reaches_a_child_started_from_a_background_job(tmp_path):
    """`make test &` starts pytest with Ctrl-C ignored, and exec would pass that on to
    `serve run`: the child must still stop on Ctrl-C, as Python does (KeyboardInterrupt)."""
    code = (
        "import time\n"
        "print('ready', flush=True)\n"
        "try:\n"
        "    time.sleep(60)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n"
    )
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        proc = start_background([sys.executable, "-c", code], tmp_path / "out.log")
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.monotonic() + 20
    while "ready" not in (tmp_path / "out.log").read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stop_process_tree(proc, signal.SIGINT, timeout_s=20) == 0
    assert "interrupted" in (tmp_path / "out.log").read_text()


def test_count_processes():
    assert count_processes(r"^\S*python") >= 1  # this test's own interpreter
    assert count_processes(r"no-such-program-\d{9}") == 0
