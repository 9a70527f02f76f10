"""pytest settings for the notebooks (nbval), applied however pytest is started in this repo.

* Each notebook's outputs are compared strictly, except stderr: Ray and Serve print
  warnings there whose wording and timing are theirs, not the notebook's.
* Outputs are normalised with ``tests/nbval_sanitize.cfg`` (ports, addresses, ANSI codes)
  unless another sanitize file is given with ``--nbval-sanitize-with``.
* A cell fails if it makes Ray warn that something it uses is deprecated or about to change
  (a ``DeprecationWarning`` or ``FutureWarning`` raised in Ray's code): the notebooks teach
  the current API only. ``helpers`` makes such warnings visible (``show_ray_deprecations``).
"""

import re
from pathlib import Path

import pytest

SANITIZE = Path(__file__).parent / "tests" / "nbval_sanitize.cfg"
# "<path>/ray/serve/config.py:743: DeprecationWarning: The `metrics_interval_s` field ..."
RAY_DEPRECATION = re.compile(r"/ray/\S+:\d+: (\w*Deprecat\w*|FutureWarning): .*")


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
