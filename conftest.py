"""pytest settings for the notebooks (nbval), applied however pytest is started in this repo.

* Each notebook's outputs are compared strictly, except stderr: Ray and Serve print
  warnings there whose wording and timing are theirs, not the notebook's.
* Outputs are normalised with ``tests/nbval_sanitize.cfg`` (ports, addresses, ANSI codes)
  unless another sanitize file is given with ``--nbval-sanitize-with``.
* A cell fails if it makes Ray warn that something it uses is deprecated or about to change
  (a ``DeprecationWarning`` or ``FutureWarning`` raised in Ray's code): the notebooks teach
  the current API only. ``helpers`` makes such warnings visible (``show_ray_deprecations``).
* A test run that leaves a Ray process behind fails: every raylet or GCS started while the
  tests ran (by a test, a notebook's kernel, a ``ray start``) must be gone when they end.
"""

import os
import re
import time
from pathlib import Path

import pytest

SANITIZE = Path(__file__).parent / "tests" / "nbval_sanitize.cfg"
# "<path>/ray/serve/config.py:743: DeprecationWarning: The `metrics_interval_s` field ..."
# Not counted: pydantic's warning about how Ray 2.60 declares its own models (printed once when
# Serve is imported; no notebook can act on it).
RAY_DEPRECATION = re.compile(
    r"/ray/\S+:\d+: (\w*Deprecat\w*|FutureWarning): (?!Using extra keyword arguments on `Field`).*"
)


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config.option, "nbval_sanitize_with") and not config.option.nbval_sanitize_with:
        config.option.nbval_sanitize_with = str(SANITIZE)


def pytest_collectstart(collector: pytest.Collector) -> None:
    if collector.fspath and collector.fspath.ext == ".ipynb":
        collector.skip_compare += ("stderr",)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    result = yield
    printed = "".join(out.get("text", "") for out in getattr(item, "test_outputs", None) or [])
    found = RAY_DEPRECATION.search(printed)
    if found:
        raise AssertionError(f"this cell uses something Ray deprecates: {found.group(0)}")
    return result


# Every process started while the tests run inherits this variable (kernels, `ray start`, Ray's
# own daemons), which tells this run's Ray processes from those of anything else on the machine.
_SESSION_MARK = "SERVE_SERIES_TEST_RUN"


def _ray_daemons(mark: str) -> set[int]:
    import psutil

    found = set()
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] not in ("raylet", "gcs_server"):
            continue
        try:
            if proc.environ().get(_SESSION_MARK) == mark:
                found.add(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def pytest_sessionstart(session: pytest.Session) -> None:
    os.environ[_SESSION_MARK] = f"{os.getpid()}-{time.time_ns()}"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    mark = os.environ.get(_SESSION_MARK, "")
    deadline = time.monotonic() + 30  # a Ray that is shutting down gets time to finish
    while (left := _ray_daemons(mark)) and time.monotonic() < deadline:
        time.sleep(0.5)
    if left:
        print(f"\n{len(left)} Ray process(es) started by these tests are still running (pids {sorted(left)})")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
