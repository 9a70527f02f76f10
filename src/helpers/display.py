"""Show code in a notebook from where it lives, so that no app is copied into a cell."""

from __future__ import annotations

import inspect
from types import ModuleType
from typing import Any


def show_source(obj: ModuleType | type | Any, language: str = "python") -> Any:
    """Return the source of a module, class or function as syntax-highlighted code.

    In Jupyter the result renders highlighted; as plain text it is the source itself.
    """
    from IPython.display import Code

    return Code(inspect.getsource(obj), language=language)


def show_file(path: str, language: str | None = None) -> Any:
    """Return a text file (a YAML config, a .proto) as syntax-highlighted code."""
    from IPython.display import Code

    with open(path, encoding="utf-8") as f:
        return Code(f.read(), language=language)


def show_lines(obj: ModuleType | type | Any, start: str, end: str | None = None, language: str = "python") -> Any:
    """Return part of an object's source: from the first line containing ``start`` up to, not
    including, the first later line containing ``end`` (or to the end)."""
    from IPython.display import Code

    lines = inspect.getsource(obj).splitlines()
    first = next(i for i, line in enumerate(lines) if start in line)
    last = next((i for i in range(first + 1, len(lines)) if end and end in lines[i]), len(lines))
    return Code("\n".join(lines[first:last]).rstrip() + "\n", language=language)
