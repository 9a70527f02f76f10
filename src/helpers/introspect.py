"""Stable, ID-free views of a running Serve instance: its actors, its status, a picture.

Serve runs as ordinary Ray actors in the ``serve`` namespace:

=============  ======================================  ======================================
kind           actor name                              actor class
=============  ======================================  ======================================
controller     ``SERVE_CONTROLLER_ACTOR``              ``ServeController``
proxy          ``SERVE_PROXY_ACTOR-<node id>``         ``ProxyActor`` (one per node)
replica        ``SERVE_REPLICA::<app>#<dep>#<id>``     ``ServeReplica:<app>:<dep>``
=============  ======================================  ======================================

Names and ids change on every run, so the functions here group actors by what they are
(kind, class, state, node) and count them; nodes are called ``head``, ``worker-1``, ...
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

SERVE_NAMESPACE = "serve"


@dataclass(frozen=True, order=True)
class ServeActor:
    """One Serve actor, without ids."""

    kind: str  # "controller", "proxy" or "replica"
    class_name: str
    state: str  # Ray's actor state: ALIVE, RESTARTING, DEAD, ...
    node: str  # "head", "worker-1", ...
    app: str = ""
    deployment: str = ""


def kind_of(name: str) -> str:
    """The kind of Serve actor a Ray actor name stands for ('' if none)."""
    if name == "SERVE_CONTROLLER_ACTOR":
        return "controller"
    if name.startswith("SERVE_PROXY_ACTOR"):
        return "proxy"
    if name.startswith("SERVE_REPLICA::"):
        return "replica"
    return ""


def node_labels() -> dict[str, str]:
    """Map each Ray node id to ``head`` or ``worker-N`` (workers ordered by address)."""
    import ray

    nodes = ray.nodes()
    labels: dict[str, str] = {}
    workers = []
    for node in nodes:
        if any(r.startswith("node:__internal_head__") for r in node.get("Resources", {})):
            labels[node["NodeID"]] = "head"
        else:
            workers.append((node.get("NodeManagerAddress", ""), node["NodeID"]))
    for i, (_, node_id) in enumerate(sorted(workers), start=1):
        labels[node_id] = f"worker-{i}"
    return labels


def connected_dashboard() -> str:
    """The dashboard address of the Ray cluster this process is connected to."""
    from ray._private.worker import global_worker  # private: Ray has no public accessor

    url = global_worker.node.address_info.get("webui_url") if global_worker.node else None
    if not url:
        raise RuntimeError("this process is not connected to a Ray cluster with a dashboard")
    return url if url.startswith("http") else f"http://{url}"


def serve_actors(include_dead: bool = False) -> list[ServeActor]:
    """The Serve actors of the Ray cluster this process is connected to, sorted.

    Uses Ray's state API, through the dashboard of *this* cluster: without an explicit
    address the state API would follow ``/tmp/ray/ray_current_cluster``, which may name
    another cluster on the machine (or a dead one that a failed notebook left behind).
    """
    from ray.util.state import list_actors

    labels = node_labels()
    rows = list_actors(
        address=connected_dashboard(),
        filters=[("ray_namespace", "=", SERVE_NAMESPACE)],
        limit=10_000,
        raise_on_missing_output=False,
    )
    actors = []
    for row in rows:
        name = row.name or ""
        kind = kind_of(name)
        if not kind:
            continue
        app = dep = ""
        if kind == "replica":
            app, dep, _ = name.removeprefix("SERVE_REPLICA::").split("#", 2)
        actors.append(ServeActor(kind, row.class_name, row.state, labels.get(row.node_id or "", "?"), app, dep))
    if not include_dead:
        actors = [a for a in actors if a.state != "DEAD"]
    order = {"controller": 0, "proxy": 1, "replica": 2}
    return sorted(actors, key=lambda a: (order[a.kind], a.class_name, a.state, a.node))


def actor_table(actors: list[ServeActor] | None = None, include_dead: bool = False) -> str:
    """A plain-text table of Serve actors grouped by kind, class, state and node, with counts."""
    if actors is None:
        actors = serve_actors(include_dead=include_dead)
    counts = Counter((a.kind, a.class_name, a.state, a.node) for a in actors)
    order = {"controller": 0, "proxy": 1, "replica": 2}
    rows = sorted(counts.items(), key=lambda kv: (order.get(kv[0][0], 9), kv[0]))
    header = ("kind", "class", "state", "node", "count")
    body = [(*key, str(n)) for key, n in rows]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + f"  {{:>{widths[-1]}}}"
    return "\n".join(fmt.format(*r).rstrip() for r in [header, *body])


def _field(obj: Any, name: str) -> Any:
    """``obj.name`` for status objects, ``obj[name]`` for the parsed YAML of ``serve status``."""
    value = obj[name] if isinstance(obj, dict) else getattr(obj, name)
    return getattr(value, "value", value)  # enums -> their string value


def status_summary(status: Any = None) -> str:
    """Serve's status as a few stable lines: proxies, applications, deployments, replicas.

    ``status`` is what ``serve.status()`` returns (the default) or the parsed YAML that the
    ``serve status`` command prints (``yaml.safe_load(output)``).
    """
    if status is None:
        from ray import serve

        status = serve.status()
    proxies = _field(status, "proxies") or {}
    applications = _field(status, "applications") or {}
    proxy_states = Counter(str(getattr(s, "value", s)) for s in proxies.values())
    lines = ["proxies: " + ", ".join(f"{n} {s}" for s, n in sorted(proxy_states.items()))]
    if not applications:
        lines.append("applications: none")
    for app_name, app in sorted(applications.items()):
        lines.append(f"application {app_name!r}: {_field(app, 'status')}")
        for dep_name, dep in sorted(_field(app, "deployments").items()):
            replicas = ", ".join(f"{n} {s}" for s, n in sorted(_field(dep, "replica_states").items()))
            lines.append(f"  deployment {dep_name!r}: {_field(dep, 'status')}; replicas: {replicas or 'none'}")
    return "\n".join(lines)


def serve_details(dashboard_url: str = "http://127.0.0.1:8265") -> dict[str, Any]:
    """Serve's full state from the dashboard's REST API (``GET /api/serve/applications/``).

    It holds what ``serve status`` leaves out: each deployment's effective
    ``deployment_config`` and its replicas (ids, states). Ray's token authentication is on
    by default, so the request carries the token from ``$RAY_AUTH_TOKEN`` or
    ``~/.ray/auth_token``.
    """
    import os
    from pathlib import Path

    import requests

    token = os.environ.get("RAY_AUTH_TOKEN") or (Path.home() / ".ray" / "auth_token").read_text().strip()
    response = requests.get(
        f"{dashboard_url}/api/serve/applications/", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    response.raise_for_status()
    return response.json()


class Topology:
    """A drawing of the live topology; Jupyter shows it as a PNG picture.

    Attributes:
        figure: the matplotlib ``Figure``, e.g. to ``figure.savefig("topology.png")``.
        actors: the actors it was drawn from.
    """

    def __init__(self, figure: Any, actors: list[ServeActor]) -> None:
        self.figure = figure
        self.actors = actors

    def _repr_png_(self) -> bytes:
        import io

        buf = io.BytesIO()
        self.figure.savefig(buf, format="png", dpi=100)
        return buf.getvalue()

    def __repr__(self) -> str:
        kinds = Counter(a.kind for a in self.actors)
        parts = [f"{kinds[k]} {k}{'s' if kinds[k] != 1 else ''}" for k in ("controller", "proxy", "replica")]
        return f"<Serve topology: {', '.join(parts)}>".replace("proxys", "proxies")


def draw_topology(actors: list[ServeActor] | None = None, title: str = "Ray Serve, live") -> Topology:
    """Draw the live topology: client -> proxy -> replicas per node, controller beside them.

    Returns a :class:`Topology`, which Jupyter shows as a picture when it is a cell's last value.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    if actors is None:
        actors = serve_actors()
    nodes = sorted({a.node for a in actors if a.kind != "controller"}) or ["head"]
    replica_groups: dict[str, Counter[tuple[str, str]]] = {n: Counter() for n in nodes}
    for a in actors:
        if a.kind == "replica":
            replica_groups[a.node][(a.app, a.deployment)] += 1
    proxies = Counter(a.node for a in actors if a.kind == "proxy")
    controller = next((a for a in actors if a.kind == "controller"), None)

    rows_per_node = [max(1, sum(replica_groups[n].values())) for n in nodes]
    height = 2.2 + sum(0.75 * r + 0.6 for r in rows_per_node)
    fig = Figure(figsize=(9, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 10)
    ax.set_ylim(0, height)
    ax.axis("off")

    def box(x: float, y: float, w: float, h: float, text: str, color: str, style: str = "-") -> None:
        ax.add_patch(
            FancyBboxPatch(
                (x, y), w, h, boxstyle="round,pad=0.05", fc=color, ec="#333333", ls=style, lw=1.2
            )
        )
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=9)

    def arrow(x0: float, y0: float, x1: float, y1: float, style: str = "-", color: str = "#333333") -> None:
        ax.add_patch(
            FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=12, ls=style, color=color)
        )

    ax.text(0.2, height - 0.35, title, fontsize=12, weight="bold", va="center")
    # The controller sits above the nodes, beside the request path.
    cx, cy, cw, ch = 5.6, height - 1.45, 3.6, 0.75
    if controller is not None:
        box(cx, cy, cw, ch, f"Controller\n{controller.class_name} ({controller.state}, {controller.node})", "#fde2a7")
    box(0.2, height - 1.45, 1.6, 0.75, "client\nHTTP :8000", "#e8e8e8")

    y = height - 1.9
    for node, n_rows in zip(nodes, rows_per_node):
        node_h = 0.75 * n_rows + 0.4
        y -= node_h
        ax.add_patch(
            FancyBboxPatch((2.2, y), 7.5, node_h, boxstyle="round,pad=0.05", fc="none", ec="#999999", ls="--")
        )
        ax.text(2.3, y + node_h - 0.05, f"node: {node}", fontsize=8, va="top", color="#666666")
        py = y + node_h / 2 - 0.3
        if proxies.get(node):
            label = "HTTP proxy\nProxyActor" + (f" x{proxies[node]}" if proxies[node] > 1 else "")
            box(2.6, py, 2.2, 0.6, label, "#b9d7f0")
            arrow(1.0, height - 1.5, 2.6, py + 0.3)
            if controller is not None:
                arrow(cx + 0.4, cy, 4.4, py + 0.6, style="--", color="#b07d00")
        ry = y + node_h - 0.35 - 0.6
        for (app, dep), count in sorted(replica_groups[node].items()):
            for i in range(count):
                box(6.0, ry, 3.4, 0.55, f"Replica {i + 1} of {app}/{dep}", "#c8e6c9")
                if proxies.get(node):
                    arrow(4.8, py + 0.3, 6.0, ry + 0.275)
                if controller is not None:
                    ax.add_patch(
                        FancyArrowPatch(
                            (cx + cw - 0.2, cy), (9.4, ry + 0.3), arrowstyle="-|>", mutation_scale=12,
                            ls="--", color="#b07d00", connectionstyle="arc3,rad=-0.35",
                        )
                    )
                ry -= 0.75
        y -= 0.2
    ax.text(
        9.8, 0.15, "solid: requests    dashed: controller (health checks, config, scaling)",
        fontsize=7.5, ha="right", color="#555555",
    )
    return Topology(fig, actors)
