"""Check a Serve config before deploying it: schema errors, and keys Serve would ignore.

Reports the errors of Ray's ``ServeDeploySchema``; the unknown keys most of its models drop without
a word (free-form dicts such as ``user_config`` are not entered); errors in "dict or model" fields
(``autoscaling_config``), which it mostly leaves unchecked; and ``route_prefix`` rules checked on deploy.
"""

import argparse
import difflib
import os
import re
import types
import warnings
from collections import abc
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import pydantic
import ray
import yaml
from ray.serve.schema import ServeApplicationSchema, ServeDeploySchema

RENAMED = {  # keys that readers still find in old examples, and what replaced them
    "max_concurrent_queries": "removed; use max_ongoing_requests",
    "target_num_ongoing_requests_per_replica": "renamed to autoscaling_config.target_ongoing_requests",
    "init_args": "removed; pass constructor arguments with .bind(), or the application's args to a builder",
    "init_kwargs": "removed; pass constructor arguments with .bind(), or the application's args to a builder",
}
ROUTE_PREFIX_RULES = {  # the schema takes any string; Serve refuses these when it deploys
    "must start with '/'": lambda p: p.startswith("/"),
    "must not end with '/'": lambda p: p == "/" or not p.endswith("/"),
    "must not contain '{' or '}'": lambda p: "{" not in p and "}" not in p,
}


def validate_serve_config(source: str | Path | abc.Mapping) -> list[str]:
    """The problems of a Serve config (a YAML file's path, or a mapping); runs none of its code."""
    if not isinstance(source, abc.Mapping):
        try:
            source = yaml.safe_load(Path(source).read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            return [f"(file): not valid YAML: {' '.join(str(exc).split())}"]
        if not isinstance(source, abc.Mapping):
            got = "an empty file" if source is None else f"a {type(source).__name__}"
            return [f"(top level): expected a mapping with `applications:`, got {got}"]
    found: list[tuple[tuple, str]] = []
    found += _errors(ServeDeploySchema, _walk(ServeDeploySchema, source, (), found), ())
    # An error that a "dict or model" check found at a more precise location is kept there.
    return list(dict.fromkeys(f"{_format(loc)}: {msg}" for loc, msg in found if not any(
        m == msg and len(l) > len(loc) and l[: len(loc)] == loc for l, m in found)))


def check_serve_config(source: str | Path | abc.Mapping) -> None:
    """Raise ``ValueError`` listing every problem of a Serve config; return if it has none."""
    if problems := validate_serve_config(source):
        name = f" {str(source)!r}" if isinstance(source, (str, Path)) else ""
        listed = "".join(f"\n  - {p}" for p in problems)
        raise ValueError(f"Serve config{name} has {len(problems)} problem(s):{listed}")


def _walk(annotation: Any, data: Any, loc: tuple, found: list) -> Any:
    """Add what the schema misses in ``data`` to ``found``; return ``data`` less the strings of
    ``str | Callable`` fields (``policy_function``, ``request_router_class``): Ray's models import
    them when pydantic builds them, even to try a union's members."""
    models, items, takes_dict, _ = _kinds(annotation)
    if isinstance(data, list) and items:
        return [_walk(items[0], item, loc + (i,), found) for i, item in enumerate(data)]
    if not isinstance(data, abc.Mapping) or len(models) != 1:
        return data  # a value, a free-form dict, or a wrong type that the schema reports
    model, clean = models[0], {}
    for key, value in data.items():
        field = model.model_fields.get(key)
        if field is None and model.model_config.get("extra") != "allow":
            found.append((loc + (key,), _unknown(model, str(key), _format(loc))))
        elif field and isinstance(value, str) and _kinds(field.annotation)[3]:
            continue  # an import path
        clean[key] = _walk(field.annotation, value, loc + (key,), found) if field else value
        if model is ServeApplicationSchema and key == "route_prefix" and isinstance(value, str):
            found += [(loc + (key,), f"{value!r} {rule} (Serve checks this only when it deploys)")
                      for rule, ok in ROUTE_PREFIX_RULES.items() if not ok(value)]
    if takes_dict:  # "a dict or a model": the schema mostly keeps the dict; the deploy builds it
        found += _errors(model, clean, loc)
    return clean


def _kinds(annotation: Any) -> tuple[list, list, bool, bool]:
    """A field type's models, its lists' item types, whether it takes a dict, and a callable."""
    members = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else [annotation]
    origins = [get_origin(m) or m for m in members]  # typing.Dict[str, Any] -> dict
    models = [m for m in members if isinstance(m, type) and issubclass(m, pydantic.BaseModel)]
    items = [get_args(m)[0] for m in members if get_origin(m) is list]
    return models, items, dict in origins, abc.Callable in origins


def _places(annotation: Any, loc: str = "") -> abc.Iterator[tuple[type, str]]:
    """Each model, with where it sits in a config: ``applications[i].deployments[i]``, ..."""
    models, items, _, _ = _kinds(annotation)
    for item in items:
        yield from _places(item, f"{loc}[i]")
    for model in models:
        yield model, loc or "the top level"
        for name, field in model.model_fields.items():
            yield from _places(field.annotation, f"{loc}.{name}".lstrip("."))


def _unknown(model: type, key: str, where: str) -> str:
    verdict = "rejected" if model.model_config.get("extra") == "forbid" else "silently ignored"
    places = dict.fromkeys(place for m, place in _places(ServeDeploySchema) if key in m.model_fields
                           and not (m is ServeApplicationSchema and key in ("host", "port")))  # rejected there
    near = lambda place: len(os.path.commonprefix([place, re.sub(r"\[\d+\]", "[i]", where)]))  # noqa: E731
    places = [p for p in places if near(p) == max(map(near, places))]  # the nearest: one's own parts first
    close = [f"did you mean {c!r}?" for c in difflib.get_close_matches(key, list(model.model_fields))]
    hint = RENAMED.get(key) or (places and f"it belongs in {' or '.join(places)}") or "".join(close[:1])
    return f"unknown key, {verdict} by Ray Serve {ray.__version__}" + (f"; {hint}" if hint else "")


def _errors(model: type, data: Any, prefix: tuple) -> list[tuple[tuple, str]]:
    """Validate ``data`` with ``model``: [(location, message)], less unknown keys (_walk's)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Ray's deprecation notices are not problems
            model.model_validate(data)
        return []
    except pydantic.ValidationError as exc:
        errors = [err for err in exc.errors() if err["type"] != "extra_forbidden"]
    except Exception as exc:  # a Ray validator that fails on a wrong type, e.g. AttributeError
        return [(prefix, f"{type(exc).__name__}: {exc}")]
    found = []
    for err in errors:  # located in data: not at the union member that failed ("constrained-int")
        node, n, loc = data, 0, err["loc"]
        while n < len(loc) and (isinstance(node, abc.Mapping) and loc[n] in node
                                or isinstance(node, list) and isinstance(loc[n], int)):
            node, n = node[loc[n]], n + 1
        n += err["type"] == "missing" and n == len(loc) - 1  # the missing key itself
        found.append((prefix + loc[:n], err["msg"].removeprefix("Value error, ")))
    return found


def _format(loc: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "(top level)"


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers.config FILE...``: print each file's problems; exit code 1 if any."""
    parser = argparse.ArgumentParser(prog="python -m helpers.config", description=__doc__)
    parser.add_argument("files", nargs="+", metavar="FILE", help="a Serve config YAML file")
    try:
        found = {name: validate_serve_config(name) for name in parser.parse_args(argv).files}
    except OSError as exc:
        parser.error(f"cannot read {exc.filename}: {exc.strerror}")  # exit code 2
    print("\n".join(f"{name}: {p}" for name, problems in found.items() for p in problems or ["ok"]))
    return int(any(found.values()))


if __name__ == "__main__":
    raise SystemExit(main())
