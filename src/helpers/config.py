"""Check a Serve config file before deploying it: schema errors and keys Serve would drop.

``serve deploy`` and ``serve run`` read a config file with Ray's own
:class:`ray.serve.schema.ServeDeploySchema` (pydantic 2 models). Most of those models keep
pydantic's default of *ignoring* keys they do not know: a typo (``num_replica``) or an
option that no longer exists (``max_concurrent_queries``, replaced by
``max_ongoing_requests``) is dropped without a word, and the deployment silently runs with
the default. Only a few nested models (``logging_config``, ``tracing_config``,
``controller_options``, ``backpressure_config``) reject unknown keys. Some fields are typed
"a dict or a model" (``autoscaling_config``, ``request_router_config``,
``deployment_actors``): the schema keeps them as plain dicts and only the deploy checks
them. So this module

* validates the config with ``ServeDeploySchema`` and reports every error with its
  location (``applications[0].deployments[0].num_replicas: ...``);
* walks the config alongside the schema's models, at every level, and reports each key the
  schema does not know, with a hint for options that moved or were removed; free-form
  dicts (``user_config``, ``runtime_env``, ``resources``, ``args``, ...) are not entered;
* validates the "dict or model" fields against their model, as the deploy would;
* checks each application's ``route_prefix`` as the deploy would.

In a notebook::

    from helpers import validate_serve_config
    validate_serve_config("serve_config.yaml")   # [] when the file is fine

From a shell, with exit code 1 when any file has a problem::

    python -m helpers.config serve_config.yaml other.yaml
"""

from __future__ import annotations

import argparse
import collections.abc
import difflib
import sys
import types
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Callable, Union, get_args, get_origin

# Where each of Ray's config models sits in a config file, to say where a misplaced key
# belongs. Keyed by class name, so that nothing from Ray is imported at import time.
_PLACES = {
    "ServeDeploySchema": "the top level",
    "HTTPOptionsSchema": "http_options",
    "gRPCOptionsSchema": "grpc_options",
    "LoggingConfig": "logging_config",
    "ServeApplicationSchema": "an application (applications[i])",
    "DeploymentSchema": "a deployment (applications[i].deployments[j])",
    "RayActorOptionsSchema": "a deployment's ray_actor_options",
    "AutoscalingConfig": "a deployment's autoscaling_config",
}

# Fields a model declares but the schema rejects when they are set (ServeDeploySchema's
# ``nested_host_and_port`` validator): never suggest them as the place for a key.
_NOT_A_PLACE = {("ServeApplicationSchema", "host"), ("ServeApplicationSchema", "port")}

_TOP_LEVEL_APP_FIELD = (
    "an application option: a config with the application's fields at the top level is "
    "the old single-application format, which Ray 2.60 no longer reads; move it into an "
    "entry of `applications:`"
)
_IN_RAY_ACTOR_OPTIONS = "not a deployment option; it belongs in the deployment's ray_actor_options"
_IN_AUTOSCALING = "not a deployment option; it belongs in the deployment's autoscaling_config"

# Keys that are easy to get wrong, by the model (class name) whose level they appear at.
HINTS: dict[str, dict[str, str]] = {
    "ServeDeploySchema": {
        "host": "belongs in http_options (http_options.host)",
        "port": "belongs in http_options (http_options.port; grpc_options.port for gRPC)",
        "import_path": _TOP_LEVEL_APP_FIELD,
        "deployments": _TOP_LEVEL_APP_FIELD,
        "runtime_env": _TOP_LEVEL_APP_FIELD,
        "route_prefix": _TOP_LEVEL_APP_FIELD,
        "args": _TOP_LEVEL_APP_FIELD,
    },
    "HTTPOptionsSchema": {
        "location": "removed from http_options; use the top-level proxy_location",
        "num_cpus": "removed; Serve no longer reserves CPUs for its proxies",
        "middlewares": "removed; add middlewares to a FastAPI ingress deployment instead",
    },
    "LoggingConfig": {
        "level": "use log_level",
    },
    "DeploymentSchema": {
        "max_concurrent_queries": "removed; use max_ongoing_requests",
        "route_prefix": (
            "not a deployment option; route_prefix belongs to the application "
            "(applications[i].route_prefix)"
        ),
        "version": "removed; Serve manages deployment versions itself",
        "import_path": (
            "not a deployment option; import_path belongs to the application "
            "(applications[i].import_path)"
        ),
        "runtime_env": (
            "not a deployment option; use ray_actor_options.runtime_env, or the "
            "application's runtime_env"
        ),
        "init_args": (
            "not a config option; pass constructor arguments with .bind() in code, or "
            "through the application's args to an application builder"
        ),
        "init_kwargs": (
            "not a config option; pass constructor arguments with .bind() in code, or "
            "through the application's args to an application builder"
        ),
        "max_constructor_retry_count": (
            "only settable in code (@serve.deployment); a config file cannot override it"
        ),
        "num_cpus": _IN_RAY_ACTOR_OPTIONS,
        "num_gpus": _IN_RAY_ACTOR_OPTIONS,
        "memory": _IN_RAY_ACTOR_OPTIONS,
        "resources": _IN_RAY_ACTOR_OPTIONS,
        "accelerator_type": _IN_RAY_ACTOR_OPTIONS,
        "min_replicas": _IN_AUTOSCALING,
        "max_replicas": _IN_AUTOSCALING,
        "initial_replicas": _IN_AUTOSCALING,
        "target_ongoing_requests": _IN_AUTOSCALING,
        "target_num_ongoing_requests_per_replica": (
            "removed; use autoscaling_config.target_ongoing_requests"
        ),
    },
    "RayActorOptionsSchema": {
        "max_concurrency": (
            "not allowed for Serve replicas; limit concurrent requests with the "
            "deployment's max_ongoing_requests"
        ),
        "max_restarts": "not allowed for Serve replicas; Serve restarts failed replicas itself",
        "max_task_retries": "not allowed for Serve replicas; Serve retries requests itself",
        "max_concurrent_queries": "removed; use the deployment's max_ongoing_requests",
    },
    "AutoscalingConfig": {
        "target_num_ongoing_requests_per_replica": "renamed; use target_ongoing_requests",
        "max_concurrent_queries": "removed; use the deployment's max_ongoing_requests",
        "num_replicas": (
            "not an autoscaling option; use min_replicas, max_replicas, initial_replicas"
        ),
    },
}
# At any other level.
_ANYWHERE_HINTS = {
    "max_concurrent_queries": "removed; use max_ongoing_requests (a deployment option)",
}

Loc = tuple[str | int, ...]


def validate_serve_config(source: str | Path | Mapping[str, Any]) -> list[str]:
    """Return the problems of a Serve config (a YAML file's path, or the loaded dict).

    Each problem is one line, ``location: what is wrong``; an empty list means the config
    is valid for Ray Serve 2.60 and every key in it is one that Serve reads. Raises
    ``OSError`` when the file cannot be read.
    """
    config, problems = _load(source)
    if problems:
        return problems
    return _problems(config)


def check_serve_config(source: str | Path | Mapping[str, Any]) -> None:
    """Raise ``ValueError`` listing every problem of a Serve config; return if it has none."""
    problems = validate_serve_config(source)
    if problems:
        what = "Serve config" + (f" {str(source)!r}" if isinstance(source, (str, Path)) else "")
        n = len(problems)
        raise ValueError(
            f"{what} has {n} problem{'s' if n != 1 else ''}:\n"
            + "\n".join(f"  - {p}" for p in problems)
        )


def _load(source: str | Path | Mapping[str, Any]) -> tuple[Any, list[str]]:
    """The config as plain data, or a problem when the file is not a YAML mapping."""
    if isinstance(source, Mapping):
        return source, []
    import yaml

    text = Path(source).read_text(encoding="utf-8")
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return None, [f"(file): not valid YAML: {' '.join(str(exc).split())}"]
    if not isinstance(config, Mapping):
        got = "an empty file" if config is None else f"a {type(config).__name__}"
        return None, [f"(top level): expected a mapping with `applications:`, got {got}"]
    return config, []


def _problems(config: Mapping[str, Any]) -> list[str]:
    from ray.serve.schema import ServeDeploySchema

    checkable = _without_import_paths(ServeDeploySchema, config)
    schema_errors = _validation_errors(ServeDeploySchema, checkable, ())
    unknown: list[tuple[Loc, str]] = []
    model_errors: list[tuple[Loc, str]] = []
    _walk_model(ServeDeploySchema, config, (), unknown, model_errors)

    # The unknown-key pass reports keys that strict models reject too, with hints: drop
    # pydantic's bare "Extra inputs are not permitted" for the same keys. Drop a schema
    # error that a "dict or model" check reported again at a more precise location.
    unknown_locs = {loc for loc, _ in unknown}
    kept = []
    for loc, msg, kind in schema_errors:
        if kind == "extra_forbidden" and loc in unknown_locs:
            continue
        if any(m == msg and l[: len(loc)] == loc for l, m in model_errors):
            continue
        kept.append((loc, msg))
    found = kept + model_errors + unknown + list(_route_prefix_problems(config))
    return _dedupe(f"{_format_loc(loc)}: {msg}" for loc, msg in found)


def _validation_errors(model: type, data: Any, prefix: Loc) -> list[tuple[Loc, str, str]]:
    """Validate ``data`` with a pydantic model; return (location, message, error type)."""
    import pydantic

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Ray's deprecation notices are not problems
            model.model_validate(data)
    except pydantic.ValidationError as exc:
        errors = []
        for err in exc.errors(include_url=False):
            loc = prefix + _data_loc(data, err["loc"], err["type"])
            errors.append((loc, _message(err), err["type"]))
        return errors
    except Exception as exc:  # a Ray validator that raises something else, e.g. NotImplementedError
        return [(prefix, f"{type(exc).__name__}: {exc}", "exception")]
    return []


def _data_loc(data: Any, loc: Sequence[str | int], kind: str) -> Loc:
    """The part of pydantic's error location that points into the data.

    Pydantic adds the name of the union member that failed (``constrained-int``, ``str``)
    to the location; those names are not keys of the config and are left out.
    """
    kept: list[str | int] = []
    node = data
    for i, part in enumerate(loc):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif kind == "missing" and i == len(loc) - 1:
            pass  # the missing key itself
        else:
            break
        kept.append(part)
    return tuple(kept)


def _message(err: Mapping[str, Any]) -> str:
    msg = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    value = err.get("input")
    no_value = {"missing", "extra_forbidden", "value_error", "assertion_error"}
    if err["type"] not in no_value and (value is None or isinstance(value, (str, int, float, bool))):
        msg += f" (got {value!r})"
    return msg


def _walk_model(
    model: type,
    data: Any,
    loc: Loc,
    unknown: list[tuple[Loc, str]],
    model_errors: list[tuple[Loc, str]],
) -> None:
    """Report the keys of ``data`` that ``model`` does not know, then walk its fields."""
    if not isinstance(data, Mapping):
        return  # the schema reports the wrong type
    fields = model.model_fields
    known: dict[str, str] = {}
    for name, info in fields.items():
        known[name] = name
        for alias in (info.alias, info.validation_alias):
            if isinstance(alias, str):
                known[alias] = name
    extra = model.model_config.get("extra")
    for key, value in data.items():
        if key in known:
            _walk(fields[known[key]].annotation, value, loc + (key,), unknown, model_errors)
        elif extra != "allow":
            verdict = "rejected" if extra == "forbid" else "silently ignored"
            msg = f"unknown key, {verdict} by Ray Serve {_ray_version()}"
            hint = _hint(model.__name__, str(key), list(known))
            unknown.append((loc + (key,), f"{msg}; {hint}" if hint else msg))


def _walk(
    annotation: Any,
    value: Any,
    loc: Loc,
    unknown: list[tuple[Loc, str]],
    model_errors: list[tuple[Loc, str]],
) -> None:
    """Walk ``value`` alongside a field's type; free-form dicts are not entered."""
    from pydantic import BaseModel

    origin = get_origin(annotation)
    if origin is Annotated:
        _walk(get_args(annotation)[0], value, loc, unknown, model_errors)
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        _walk_model(annotation, value, loc, unknown, model_errors)
    elif origin in (Union, types.UnionType):
        members = [_unwrap(a) for a in get_args(annotation)]
        models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
        if isinstance(value, Mapping) and len(models) == 1:
            if any(m is dict or get_origin(m) is dict for m in members):
                # "a dict or a model": the schema keeps the dict; the deploy builds the model.
                checkable = _without_import_paths(models[0], value)
                for err_loc, msg, kind in _validation_errors(models[0], checkable, loc):
                    if kind != "extra_forbidden":
                        model_errors.append((err_loc, msg))
            _walk_model(models[0], value, loc, unknown, model_errors)
        elif isinstance(value, list):
            for member in members:
                if get_origin(member) is list:
                    _walk(member, value, loc, unknown, model_errors)
                    break
    elif origin is list and isinstance(value, list):
        (item_type,) = get_args(annotation) or (Any,)
        for i, item in enumerate(value):
            _walk(item_type, item, loc + (i,), unknown, model_errors)


def _without_import_paths(annotation: Any, value: Any) -> Any:
    """``value`` without the import paths that validating it as ``annotation`` would import.

    Some of Ray's models import the function or class an import path names as soon as they
    are built (``autoscaling_config.policy.policy_function``,
    ``request_router_config.request_router_class``), and pydantic builds them even while it
    only tries which member of a union fits. Checking a config must not run the
    application's code, so those keys are left out (the model's default is checked instead).
    """
    from pydantic import BaseModel

    annotation = _unwrap(annotation)
    origin = get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if not isinstance(value, Mapping):
            return value
        out = dict(value)
        for name, info in annotation.model_fields.items():
            if name not in out:
                continue
            members = [_unwrap(m) for m in (get_args(info.annotation) or (info.annotation,))]
            if isinstance(out[name], str) and any(_is_callable_type(m) for m in members):
                del out[name]
            else:
                out[name] = _without_import_paths(info.annotation, out[name])
        return out
    if origin in (Union, types.UnionType):
        members = [_unwrap(a) for a in get_args(annotation)]
        if isinstance(value, Mapping):
            models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
            return _without_import_paths(models[0], value) if len(models) == 1 else value
        if isinstance(value, list):
            lists = [m for m in members if get_origin(m) is list]
            return _without_import_paths(lists[0], value) if lists else value
        return value
    if origin is list and isinstance(value, list):
        (item_type,) = get_args(annotation) or (Any,)
        return [_without_import_paths(item_type, item) for item in value]
    return value


def _is_callable_type(annotation: Any) -> bool:
    return annotation is Callable or get_origin(annotation) is collections.abc.Callable


def _unwrap(annotation: Any) -> Any:
    return get_args(annotation)[0] if get_origin(annotation) is Annotated else annotation


def _hint(model_name: str, key: str, known: list[str]) -> str:
    """What to do about an unknown key: a known fix, where it belongs, or a close match."""
    if key in HINTS.get(model_name, {}):
        return HINTS[model_name][key]
    if key in _ANYWHERE_HINTS:
        return _ANYWHERE_HINTS[key]
    places = [
        place
        for name, place in _PLACES.items()
        if name != model_name and key in _place_fields(name) and (name, key) not in _NOT_A_PLACE
    ]
    if places:
        return f"not an option here; it belongs in {' or '.join(places)}"
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
    if close:
        return f"did you mean {close[0]!r}?"
    if model_name == "RayActorOptionsSchema":
        return "Serve replicas accept only " + ", ".join(sorted(known))
    return ""


def _place_fields(model_name: str) -> set[str]:
    from ray.serve import schema
    from ray.serve.config import AutoscalingConfig

    model = AutoscalingConfig if model_name == "AutoscalingConfig" else getattr(schema, model_name)
    return set(model.model_fields)


def _route_prefix_problems(config: Mapping[str, Any]) -> Iterator[tuple[Loc, str]]:
    """The route_prefix rules Serve applies when it deploys (the schema does not check them)."""
    apps = config.get("applications")
    if not isinstance(apps, list):
        return
    when = "(Serve checks this only when it deploys the application)"
    for i, app in enumerate(apps):
        prefix = app.get("route_prefix") if isinstance(app, Mapping) else None
        if not isinstance(prefix, str):
            continue
        loc: Loc = ("applications", i, "route_prefix")
        if not prefix.startswith("/"):
            yield loc, f"{prefix!r} must start with '/' {when}"
        elif prefix != "/" and prefix.endswith("/"):
            yield loc, f"{prefix!r} must not end with '/' {when}"
        if "{" in prefix or "}" in prefix:
            yield loc, f"{prefix!r} must not contain wildcards {{ }} {when}"


def _format_loc(loc: Loc) -> str:
    if not loc:
        return "(top level)"
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _dedupe(lines: Iterator[str]) -> list[str]:
    return list(dict.fromkeys(lines))


def _ray_version() -> str:
    import ray

    return ray.__version__


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m helpers.config FILE ...``: print each file's problems; 1 if any."""
    parser = argparse.ArgumentParser(
        prog="python -m helpers.config",
        description="Check Ray Serve config files: schema errors and keys Serve would ignore.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="a Serve config YAML file")
    args = parser.parse_args(argv)
    failed = False
    for name in args.files:
        try:
            problems = validate_serve_config(name)
        except OSError as exc:
            problems = [f"cannot read the file: {exc.strerror or exc}"]
        for problem in problems or ["ok"]:
            print(f"{name}: {problem}")
        failed = failed or bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
