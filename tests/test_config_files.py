"""Every Serve config YAML under notebooks/ is valid, except the deliberate ``*.broken.yaml``.

A KubeRay ``RayService`` manifest counts as the Serve config it carries (``serveConfigV2``).

Files named ``*.broken.yaml`` are teaching examples of mistakes Serve would not report
(or would report late): they must have at least one problem, so that they keep showing one.
"""

from pathlib import Path

import pytest

from helpers.config import validate_serve_config
from kuberay import serve_config_of

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
BROKEN_SUFFIX = ".broken.yaml"


def config_files() -> list[Path]:
    return sorted(
        path
        for path in NOTEBOOKS.rglob("*.yaml")
        # generated/: what notebook 03 writes, its outdated.yaml wrong on purpose (git ignores it)
        if not {".ipynb_checkpoints", "generated"} & set(path.relative_to(NOTEBOOKS).parts)
    )


def test_notebooks_folder_is_there():
    """Always runs, even while no notebook has a config file yet."""
    assert NOTEBOOKS.is_dir()
    assert all(path.suffix == ".yaml" for path in config_files())


@pytest.mark.parametrize(
    "path", config_files(), ids=lambda p: str(p.relative_to(NOTEBOOKS))
)
def test_config_file(path):
    text = path.read_text()
    if "kind: RayService" in text:
        problems = validate_serve_config(serve_config_of(text))
    else:
        problems = validate_serve_config(path)
    if path.name.endswith(BROKEN_SUFFIX):
        assert problems, f"{path.name} is meant to show a mistake, but it has no problem"
    else:
        assert problems == [], "\n".join(problems)
