"""Show code in a notebook from where it lives, so that no app is copied into a cell.

What a notebook shows of an app is a *named snippet*, marked in the app's file the way Ray's
own documentation marks its examples::

    # __llm_deployment_begin__
    @serve.deployment(...)
    class LLM:
        ...
    # __llm_deployment_end__

``show_snippet(llm, "llm_deployment")`` shows the lines between the markers. The markers, not
line numbers or searched-for text, decide what is shown, so editing the ``.py`` cannot
silently cut a decorator or a constructor out of what the notebook shows (the test suite
checks every snippet the notebooks name, and that no snippet splits a decorated definition).
"""

from __future__ import annotations

import inspect
import re
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

_MARKER = re.compile(r"^\s*# __(\w+)_(begin|end)__\s*$")


def _code(text: str, language: str) -> Any:
    from IPython.display import Code

    return Code(text, language=language)


def show_source(obj: ModuleType | type | Any, language: str = "python") -> Any:
    """Return the source of a module, class or function as syntax-highlighted code.

    In Jupyter the result renders highlighted; as plain text it is the source itself.
    """
    return _code(inspect.getsource(obj), language)


def show_file(path: str, language: str | None = None) -> Any:
    """Return a text file (a YAML config, a .proto) as syntax-highlighted code."""
    with open(path, encoding="utf-8") as f:
        return _code(f.read(), language)


def snippets(path: str | Path) -> dict[str, str]:
    """Every named snippet of a file: name -> its lines, dedented, without the markers.

    Raises ``ValueError`` for a marker without its partner, or a name used twice.
    """
    found: dict[str, str] = {}
    open_at: dict[str, int] = {}
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        match = _MARKER.match(line)
        if not match:
            continue
        name, which = match.groups()
        if which == "begin":
            if name in open_at or name in found:
                raise ValueError(f"{path}:{number + 1}: snippet {name!r} begins twice")
            open_at[name] = number
        else:
            if name not in open_at:
                raise ValueError(f"{path}:{number + 1}: snippet {name!r} ends without a begin")
            body = [ln for ln in lines[open_at.pop(name) + 1 : number] if not _MARKER.match(ln)]
            found[name] = textwrap.dedent("\n".join(body)).strip("\n") + "\n"
    if open_at:
        raise ValueError(f"{path}: snippet(s) never ended: {', '.join(sorted(open_at))}")
    return found


def show_snippet(module: ModuleType | str | Path, name: str, language: str = "python") -> Any:
    """Return the snippet ``name`` of a module (or file) as syntax-highlighted code."""
    path = inspect.getsourcefile(module) if isinstance(module, ModuleType) else module
    found = snippets(path)
    if name not in found:
        raise KeyError(f"no snippet {name!r} in {path}; it has: {', '.join(sorted(found)) or 'none'}")
    return _code(found[name], language)
