"""Ray's deprecation warnings reach the reader, and a notebook cell that triggers one fails.

``helpers`` makes them visible (Python hides a ``DeprecationWarning`` raised inside a library
by default); the repository's ``conftest.py`` fails any notebook cell whose output shows one.
Unit tests turn them into errors (``filterwarnings`` in ``pyproject.toml``).
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("root_conftest", ROOT / "conftest.py")
root_conftest = importlib.util.module_from_spec(spec)
spec.loader.exec_module(root_conftest)

USES_DEPRECATED = (
    "from ray.serve.config import AutoscalingConfig\n"
    "AutoscalingConfig(metrics_interval_s=0.5, look_back_period_s=30)\n"
)


def stderr_of(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_python_alone_hides_rays_deprecation():
    assert not root_conftest.RAY_DEPRECATION.search(stderr_of(USES_DEPRECATED))


def test_helpers_shows_it_and_the_notebook_check_catches_it():
    printed = stderr_of("import helpers\n" + USES_DEPRECATED)
    found = root_conftest.RAY_DEPRECATION.search(printed)
    assert found and "metrics_interval_s" in found.group(0)


def test_rays_own_pydantic_warning_is_shown_once_and_not_counted():
    """Ray's own pydantic models (Field with extra keywords) warn at 18 places when Serve is
    imported: the reader sees it once, and the notebook check does not count it as the
    notebook's use of a deprecated API."""
    printed = stderr_of("import helpers\nimport ray.serve\n")
    assert printed.count("Using extra keyword arguments on `Field`") == 1
    assert not root_conftest.RAY_DEPRECATION.search(printed)
    quiet = stderr_of("import ray.serve\n")  # Python alone shows none of them
    assert "Using extra keyword arguments on `Field`" not in quiet


def test_the_announced_push_interval_variables_are_not_read_by_this_ray():
    """Notebook 06 says Ray 2.60 defines RAY_SERVE_*_AUTOSCALING_METRIC_PUSH_INTERVAL_S but
    still pushes autoscaling metrics every ``metrics_interval_s``. If a Ray release starts
    reading them, this fails, and the notebook should teach them instead."""
    import ray.serve

    serve_dir = Path(ray.serve.__file__).parent
    names = ("RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S", "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S")
    readers = [
        path.relative_to(serve_dir).as_posix()
        for path in serve_dir.rglob("*.py")
        if any(name in path.read_text(encoding="utf-8", errors="replace") for name in names)
    ]
    # defined in _private/constants.py, named in config.py's deprecation message, used nowhere
    assert sorted(readers) == ["_private/constants.py", "config.py"]
