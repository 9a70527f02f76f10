"""Run command-line tools (``serve run``, ``serve deploy``, ``ray start``) from a notebook.

Ray's tools print log lines that start with a timestamp and a source location; the functions
here keep only the message, so that a notebook can print what matters the same on every run.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_DEFAULT_SIGINT_THEN_EXEC = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execvp(sys.argv[1], sys.argv[1:])"
)


def start_background(
    args: Sequence[str], log_file: str | Path, cwd: str | Path | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``args`` in the background, its stdout and stderr going to ``log_file``."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # A shell starts background jobs (`make test &`, nohup) with Ctrl-C ignored, and an
        # ignored signal stays ignored across exec: the child would never see the Ctrl-C of
        # stop_process_tree. Let it have Ctrl-C back before it starts.
        args = [sys.executable, "-c", _DEFAULT_SIGINT_THEN_EXEC, *args]
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


@dataclass(frozen=True)
class CliResult:
    """What a command printed.

    ``stdout`` is its standard output as is (e.g. the YAML of ``serve status``); ``lines`` is
    everything it printed, one message per line, with Ray's log decorations (time, source
    file, colours, indentation) removed.
    """

    returncode: int
    lines: list[str]
    stdout: str = ""

    def grep(self, *patterns: str) -> list[str]:
        """The lines that contain any of ``patterns``, in order."""
        return [line for line in self.lines if any(p in line for p in patterns)]


def _clean(line: str) -> str:
    # "2026-01-01 12:00:00,123\tINFO scripts.py:351 -- Sent deploy request": keep the message.
    return _ANSI.sub("", line).split(" -- ", 1)[-1].strip()


def run_cli(
    args: Sequence[str], env: dict[str, str] | None = None, cwd: str | Path | None = None, timeout_s: float = 300
) -> CliResult:
    """Run a command to completion; return its exit code and its cleaned, non-empty output lines."""
    done = subprocess.run(
        list(args),
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=timeout_s,
        stdin=subprocess.DEVNULL,
    )
    lines = [_clean(line) for line in (done.stdout + "\n" + done.stderr).splitlines()]
    return CliResult(done.returncode, [line for line in lines if line], _ANSI.sub("", done.stdout))


def count_processes(pattern: str) -> int:
    """How many processes on this machine have ``pattern`` (a regex) in their command line."""
    rx = re.compile(pattern)
    count = 0
    for p in psutil.process_iter(["cmdline"]):
        try:
            count += bool(rx.search(" ".join(p.info["cmdline"] or [])))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return count


def log_lines(log_file: str | Path, *patterns: str) -> list[str]:
    """The lines of a Ray/Serve log that contain each pattern, without timestamps and pids.

    One line per pattern (its first match), in the order of ``patterns``; a pattern with
    no match gives ``"(not found) <pattern>"``. So the result reads the same on every run.
    """
    text = Path(log_file).read_text(errors="replace").splitlines()
    cleaned = [_clean(line) for line in text]
    found = []
    for pattern in patterns:
        match = next((line for line in cleaned if pattern in line), None)
        found.append(match if match is not None else f"(not found) {pattern}")
    return found
