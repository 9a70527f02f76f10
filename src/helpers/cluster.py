"""Start and stop Ray and Serve for a notebook: quietly, on 127.0.0.1, and safely re-runnable.

A notebook calls :func:`start` once near the top and :func:`stop` in its last cell::

    import helpers
    info = helpers.start()          # a private Ray on this machine + Serve on 127.0.0.1:8000
    ...
    helpers.stop()                  # nothing of that Ray is left running

Why a helper and not a bare ``ray.init()``:

* ``ray.init()`` with no address joins a cluster that ``ray start`` left running, if any.
  A notebook that should not touch such a cluster asks for a private one
  (``address="local"``), which is what :func:`start` does unless given an address.
* Ray and Serve log to the notebook with timestamps and process ids. Those lines differ on
  every run, so the helper sends replica logs to files only (``log_to_driver=False``) and
  keeps the driver's own loggers at WARNING. The logs are still on disk, in the session
  folder that :attr:`ClusterInfo.log_dir` names, and in the dashboard.
* Ray picks the machine's network address for its internal services. For a private,
  single-machine Ray the helper keeps everything on the loopback interface instead, as Ray
  itself does on macOS and Windows, so nothing listens on the network.
"""

from __future__ import annotations

import logging
import os
import re
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

HOST = "127.0.0.1"

# Ray reads this at import time; on Linux, "0" makes a local Ray use 127.0.0.1 for every
# internal service (the behaviour Ray has on laptops running macOS or Windows).
_LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}

# Loggers that print one-off, run-specific lines at INFO/WARNING level.
_NOISY_LOGGERS = {
    "ray": logging.WARNING,
    "ray.serve": logging.WARNING,
    "ray._private.authentication.authentication_token_setup": logging.ERROR,
    # With an "NPU" resource declared on a machine without Ascend's CANN toolkit, Ray logs a
    # traceback because it cannot read the NPU model name; scheduling works regardless.
    "ray._private.accelerators.npu": logging.CRITICAL,
}


@dataclass(frozen=True)
class ClusterInfo:
    """What :func:`start` started, in a form that prints the same on every run."""

    private: bool
    num_cpus: float
    resources: Mapping[str, float]
    http_url: str | None
    dashboard_url: str | None
    log_dir: str = field(repr=False, compare=False)
    options: tuple[tuple[str, Any], ...] = field(repr=False, default=())

    def describe(self) -> str:
        """A short, stable description (no ports chosen at random, no ids, no paths)."""
        lines = [
            f"Ray:       {'private instance on ' + HOST if self.private else 'joined an existing cluster'}",
        ]
        if self.resources:
            extra = ", ".join(f"{k}={v:g}" for k, v in sorted(self.resources.items()))
            lines.append(f"resources: {extra}")
        lines.append(f"Serve:     {self.http_url or 'not started'}")
        lines.append(f"dashboard: {self.dashboard_url or 'off'}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.describe()


_current: ClusterInfo | None = None


# Lines Ray prints on the driver's stdout when a call to a restarting actor is retried
# automatically (e.g. while the Serve controller restarts). They are expected and carry no
# action for the reader; every other error line Ray reports is still printed, unless a
# notebook hides more with hide_driver_notices.
_BENIGN_ERRORS = [re.compile(r"There are infinite retries remaining, so the task will be retried")]


def _use_loopback(on: bool) -> None:
    """Make a private Ray use 127.0.0.1 for all its services (or undo that)."""
    from ray._private import ray_constants

    if on:
        os.environ.update(_LOOPBACK_ENV)
    else:
        for key in _LOOPBACK_ENV:
            os.environ.pop(key, None)
    # Ray read the variable when it was imported; set the value it derived from it too.
    ray_constants.ENABLE_RAY_CLUSTER = not on


def hide_driver_notices(*patterns: str) -> None:
    """Keep the cluster notices that Ray prints on the driver and match ``patterns`` out of cells.

    Ray pushes some cluster events to every driver, printed with a ``(raylet)`` prefix and
    with ids that change on every run (e.g. "The node with node id: ... has been marked
    dead"). A notebook that reports the same event from its own measurement hides them with
    this; they stay in Ray's logs and the dashboard. Automatic-retry notices are always hidden.
    """
    import ray._private.worker as worker

    _BENIGN_ERRORS.extend(re.compile(re.escape(p)) for p in patterns)
    original = worker.print_to_stdstream
    if getattr(original, "_filters_benign", False):
        return

    def print_filtered(data: dict[str, Any], ignore_prefix: bool) -> None:
        lines = [line for line in data.get("lines", []) if not any(rx.search(line) for rx in _BENIGN_ERRORS)]
        if lines:
            original({**data, "lines": lines}, ignore_prefix)

    print_filtered._filters_benign = True  # type: ignore[attr-defined]
    worker.print_to_stdstream = print_filtered


def _filter_benign_errors() -> None:
    """Keep Ray's automatic-retry notices out of notebook cells (they stay in Ray's logs)."""
    hide_driver_notices()


def show_ray_deprecations() -> None:
    """Show every deprecation and future-change warning raised in Ray's code, each text once.

    A ``DeprecationWarning`` names an option the reader should stop using, so it must be
    seen; Python shows them only for code in ``__main__`` unless asked, and Ray raises them
    from its own modules (e.g. for a deprecated ``autoscaling_config`` field). Nothing is
    hidden; "once" only prints the same text a single time: Ray 2.60's own pydantic models
    trigger pydantic's "extra keyword arguments on `Field`" warning at 18 places when Serve
    is imported, and it appears once.
    """
    warnings.filterwarnings("once", module=r"ray(\.|$)", category=DeprecationWarning)
    warnings.filterwarnings("once", module=r"ray(\.|$)", category=FutureWarning)


# Ray's and Serve's lines in a notebook: level, logger and message, without the timestamp
# and process id of their default formats (so that a cell prints the same on every run).
LOG_FORMAT = "%(levelname)s %(name)s -- %(message)s"


def _quiet_logging() -> None:
    for name, level in _NOISY_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    # Serve sets up its logger in this process when ray.serve is imported; only its format
    # changes here, never what it prints.
    for handler in logging.getLogger("ray.serve").handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setFormatter(logging.Formatter(LOG_FORMAT))


def start(
    *,
    address: str | None = None,
    num_cpus: float | None = None,
    resources: Mapping[str, float] | None = None,
    serve: bool = True,
    http_port: int = 8000,
    grpc_options: Mapping[str, Any] | None = None,
    dashboard: bool = True,
    env: Mapping[str, str] | None = None,
) -> ClusterInfo:
    """Start (or reuse) Ray and, unless ``serve=False``, Serve's HTTP proxy on 127.0.0.1.

    Args:
        address: ``None`` for a private Ray on this machine; otherwise the address of a
            cluster to join (``"auto"`` or ``"127.0.0.1:6379"``).
        num_cpus: CPUs the private Ray may use (default: all of them).
        resources: custom resources to declare on a private Ray, e.g. ``{"NPU": 2}``.
        serve: also start Serve (its controller and HTTP proxy).
        http_port: the port Serve's HTTP proxy listens on.
        grpc_options: Serve's gRPC options, e.g. ``{"port": 9000,
            "grpc_servicer_functions": [...]}``.
        dashboard: start Ray's dashboard on 127.0.0.1:8265 (needed by ``ray.util.state``).
        env: environment variables to set before Ray starts; Ray's processes inherit them
            (e.g. ``RAY_SERVE_PROXY_HEALTH_CHECK_PERIOD_S``).

    Calling it again in the same kernel with the same arguments reuses what is running;
    with different arguments it stops the old Ray first.
    """
    global _current
    import ray
    import ray.serve  # noqa: F401  (configures Serve's logger at import: quiet it after)

    options = tuple(
        sorted(
            {
                "address": address,
                "num_cpus": num_cpus,
                "resources": tuple(sorted((resources or {}).items())),
                "serve": serve,
                "http_port": http_port,
                "grpc_options": repr(sorted((grpc_options or {}).items())),
                "dashboard": dashboard,
                "env": tuple(sorted((env or {}).items())),
            }.items()
        )
    )
    if _current is not None and ray.is_initialized():
        if _current.options == options:
            return _current
        stop()
    elif ray.is_initialized():  # started by hand in this kernel: start over, ours
        ray.shutdown()

    private = address is None
    if private:
        check_ports_free([http_port if serve else None, 8265 if dashboard else None, (grpc_options or {}).get("port")])
    os.environ.update(env or {})
    _use_loopback(private)
    _quiet_logging()
    _filter_benign_errors()

    init_kwargs: dict[str, Any] = dict(
        logging_level=logging.WARNING,
        logging_format=LOG_FORMAT,
        log_to_driver=False,
        configure_logging=True,
    )
    if private:
        init_kwargs.update(
            address="local",
            num_cpus=num_cpus,
            resources=dict(resources or {}),
            include_dashboard=dashboard,
            dashboard_host=HOST,
        )
    else:
        init_kwargs.update(address=address)
    ray.init(**init_kwargs)
    _quiet_logging()  # ray.init configures its loggers again

    http_url = None
    if serve:
        from ray import serve as ray_serve

        start_kwargs: dict[str, Any] = {
            "http_options": {"host": HOST, "port": http_port},
            "logging_config": {"log_level": "WARNING"},
        }
        if grpc_options:
            start_kwargs["grpc_options"] = dict(grpc_options)
        ray_serve.start(**start_kwargs)
        http_url = f"http://{HOST}:{http_port}"

        # serve.start returns before the proxy reports HEALTHY; wait, so that what a notebook
        # prints next does not depend on how fast this machine is.
        def proxies_healthy() -> bool:
            states = [getattr(s, "value", s) for s in ray_serve.status().proxies.values()]
            return bool(states) and all(state == "HEALTHY" for state in states)

        wait_until(proxies_healthy, 60, "Serve's HTTP proxy to be healthy", interval_s=0.1)

    from ray._private.worker import global_worker

    webui = global_worker.node.address_info.get("webui_url") if private else None
    total = ray.cluster_resources()
    declared = {k: v for k, v in total.items() if k in dict(resources or {})}
    _current = ClusterInfo(
        private=private,
        num_cpus=total.get("CPU", 0.0),
        resources=declared,
        http_url=http_url,
        dashboard_url=f"http://{webui}" if webui else None,
        log_dir=os.path.join(global_worker.node.get_session_dir_path(), "logs"),
        options=options,
    )
    return _current


def check_ports_free(ports: list[int | None]) -> None:
    """Raise a RuntimeError that says what to do when any of ``ports`` is taken on 127.0.0.1."""
    taken = [port for port in ports if port and port_in_use(port)]
    if taken:
        raise RuntimeError(
            f"port(s) {', '.join(map(str, taken))} on {HOST} are taken, most likely by another Ray "
            "on this machine (another notebook's kernel, `serve run`, or `ray start`). Shut it down "
            "first (`helpers.stop()` in that kernel, Ctrl-C for `serve run`, `ray stop` for a "
            "cluster), or pass other ports to helpers.start()."
        )


def port_in_use(port: int, host: str = HOST) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    import socket

    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


def ray_processes() -> list[Any]:
    """Processes this Python process started for Ray (GCS, raylet, workers, dashboard)."""
    import psutil

    me = psutil.Process()
    found = []
    for proc in me.children(recursive=True):
        try:
            name = " ".join(proc.cmdline()[:2]) + " " + proc.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if "ray" in name or "gcs_server" in name or "raylet" in name:
            found.append(proc)
    return found


def stop(timeout_s: float = 30.0) -> None:
    """Shut down Serve and Ray; for a private Ray, wait until none of its processes is left.

    On a joined cluster this removes Serve from that cluster (all its applications) and
    disconnects, leaving the cluster itself running.
    """
    global _current
    import ray

    if not ray.is_initialized():
        _current = None
        return
    private = _current.private if _current is not None else True
    procs = ray_processes() if private else []
    if not private:
        from ray import serve as ray_serve

        ray_serve.shutdown()
    # For a private Ray, ray.shutdown() ends the controller, proxies and replicas with
    # everything else; calling serve.shutdown() first would only add a second wait.
    ray.shutdown()
    _current = None

    def all_gone() -> bool:
        return not any(p.is_running() and p.status() != "zombie" for p in procs)

    wait_until(all_gone, timeout_s, "every Ray process of this notebook to exit")


def wait_until(
    predicate: Callable[[], T],
    timeout_s: float,
    what: str,
    interval_s: float = 0.1,
) -> float:
    """Call ``predicate`` until it returns something truthy; return the seconds it took.

    Exceptions raised by ``predicate`` count as "not yet". On timeout, raise
    ``TimeoutError`` naming ``what`` and the last value or exception seen.
    """
    start_t = time.monotonic()
    last: Any = None
    while True:
        try:
            last = predicate()
            if last:
                return time.monotonic() - start_t
        except Exception as exc:  # not ready yet
            last = exc
        if time.monotonic() - start_t > timeout_s:
            raise TimeoutError(f"waited {timeout_s:g} s for {what}; last result: {last!r}")
        time.sleep(interval_s)


def wait_for_http(url: str, timeout_s: float = 60.0, status: int = 200) -> float:
    """Wait until ``GET url`` answers with ``status``; return the seconds it took."""
    import requests

    def ok() -> bool:
        return requests.get(url, timeout=2).status_code == status

    return wait_until(ok, timeout_s, f"GET {url} to answer {status}", interval_s=0.2)
