"""pytest settings for the notebooks (nbval), applied however pytest is started in this repo.

* Each notebook's outputs are compared strictly, except stderr: Ray and Serve print
  warnings there whose wording and timing are theirs, not the notebook's.
* Outputs are normalised with ``tests/nbval_sanitize.cfg`` (ports, addresses, ANSI codes)
  unless another sanitize file is given with ``--nbval-sanitize-with``.
"""

from pathlib import Path

import pytest

SANITIZE = Path(__file__).parent / "tests" / "nbval_sanitize.cfg"


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config.option, "nbval_sanitize_with") and not config.option.nbval_sanitize_with:
        config.option.nbval_sanitize_with = str(SANITIZE)


def pytest_collectstart(collector: pytest.Collector) -> None:
    if collector.fspath and collector.fspath.ext == ".ipynb":
        collector.skip_compare += ("stderr",)
