"""The applications of notebooks/apps/, found rather than listed: every module that assigns
``app`` at its top level (``app = MyDeployment.bind()``). The tests that copy, start and fuzz
the apps take each of them, so a new app module is tested without editing the tests."""

import ast
from pathlib import Path

APPS = Path(__file__).resolve().parents[1] / "notebooks" / "apps"


def modules_with_app() -> list[str]:
    found = []
    for path in sorted(APPS.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        targets = [t for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
                   for t in (node.targets if isinstance(node, ast.Assign) else [node.target])]
        if any(isinstance(t, ast.Name) and t.id == "app" for t in targets):
            found.append(path.stem)
    return found
