"""pyproject.toml and environment.yml must list the same dependencies."""

import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def normalise(spec: str) -> str:
    req = Requirement(spec)
    extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
    return f"{req.name.lower()}{extras}{req.specifier}"


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {normalise(s) for s in project["dependencies"]}
    wanted |= {normalise(s) for s in project["optional-dependencies"]["test"]}

    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_lists = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_lists) == 1, "environment.yml needs exactly one pip: section"
    pip = [s for s in pip_lists[0] if not s.startswith("-e")]
    assert {normalise(s) for s in pip} == wanted
    assert "-e ." in pip_lists[0], "environment.yml must install the helpers package itself"


def test_torch_range_admits_the_cpu_build():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch = next(Requirement(s) for s in project["dependencies"] if s.startswith("torch"))
    assert torch.specifier.contains("2.13.0")
    assert not torch.specifier.contains("3.0.0")


def test_ray_pinned_to_minor_release():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ray = next(Requirement(s) for s in project["dependencies"] if s.startswith("ray"))
    assert "serve" in ray.extras
    assert ray.specifier.contains("2.60.0") and ray.specifier.contains("2.60.9")
    assert not ray.specifier.contains("2.61.0") and not ray.specifier.contains("2.59.0")
