"""Run a command-line tool (``serve run``, ``ray start``) from a notebook and stop it cleanly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

import psutil

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def start_background(
    args: Sequence[str], log_file: str | Path, cwd: str | Path | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``args`` in the background, its stdout and stderr going to ``log_file``."""
    log = open(log_file, "wb")  # noqa: SIM115 (the child keeps writing to it)
    return subprocess.Popen(
        list(args),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        start_new_session=True,  # Ctrl-C in Jupyter does not reach it; we stop it ourselves
    )


def stop_process_tree(proc: subprocess.Popen[bytes], sig: int = signal.SIGINT, timeout_s: float = 60) -> int:
    """Send ``sig`` (Ctrl-C by default) to ``proc``; wait until it and all its children exit.

    Returns the exit code of ``proc``. Anything still alive after ``timeout_s`` is killed,
    and a ``TimeoutError`` says so.
    """
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    proc.send_signal(sig)
    _, alive = psutil.wait_procs(family, timeout=timeout_s)
    if alive:
        for p in alive:
            p.kill()
        raise TimeoutError(f"{len(alive)} process(es) were still running {timeout_s:g} s after the signal")
    return proc.wait()


def log_lines(log_file: str | Path, *patterns: str) -> list[str]:
    """The lines of a Ray/Serve log that contain each pattern, without timestamps and pids.

    One line per pattern (its first match), in the order of ``patterns``; a pattern with
    no match gives ``"(not found) <pattern>"``. So the result reads the same on every run.
    """
    text = Path(log_file).read_text(errors="replace").splitlines()
    # "INFO 2026-01-01 12:00:00,123 serve 4242 -- Started Serve": keep what follows " -- ".
    cleaned = [_ANSI.sub("", line).split(" -- ", 1)[-1].strip() for line in text]
    found = []
    for pattern in patterns:
        match = next((line for line in cleaned if pattern in line), None)
        found.append(match if match is not None else f"(not found) {pattern}")
    return found
