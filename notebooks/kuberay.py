"""A KubeRay ``RayService`` manifest made from a Serve config file, so that the two never drift.

On Kubernetes, the KubeRay operator runs Ray: a ``RayService`` names a Ray cluster (a head
group and worker groups of pods, each pod one Ray node started with ``ray start``) and the
Serve config to deploy on it (``serveConfigV2``, the same YAML that ``serve deploy`` takes).
This module writes that manifest from a config file of this repository::

    from kuberay import rayservice_yaml
    Path("configs/rayservice_llm.yaml").write_text(rayservice_yaml("configs/llm_prod.yaml"))

``serveConfigV2`` is the config file's text, comments and all. The accelerator decides the
worker pods' Kubernetes resources and the Ray resources their ``ray start`` declares:

===========  ===============================  =====================================
accelerator  worker pod asks Kubernetes for   Ray resource on the node
===========  ===============================  =====================================
``gpu``      ``nvidia.com/gpu: 1``            ``GPU`` (Ray detects it)
``npu``      ``huawei.com/Ascend910: 1``      ``NPU`` (Ray detects it)
``cpu``      nothing more                     ``CPU`` only
===========  ===============================  =====================================

Ray detects both kinds of accelerator on the node it starts on (for Ascend NPUs:
``ray/_private/accelerators/npu.py`` counts them with AscendCL, or the ``/dev/davinci*``
devices, and names the resource ``NPU``), so ``rayStartParams`` declares neither.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

Accelerator = Literal["gpu", "npu", "cpu"]

# What each accelerator adds to a worker pod's container limits, and to its `ray start`.
_POD_RESOURCES: dict[str, dict[str, str]] = {
    "gpu": {"nvidia.com/gpu": "1"},
    "npu": {"huawei.com/Ascend910": "1"},  # the name Ascend's Kubernetes device plugin uses
    "cpu": {},
}
_RAY_START: dict[str, dict[str, str]] = {
    "gpu": {},  # Ray counts the GPUs it sees
    "npu": {},  # Ray counts the NPUs it sees (the devices the pod was given) and names them NPU
    "cpu": {},
}


def rayservice(
    serve_config_file: str | Path,
    *,
    name: str = "serve-chat",
    image: str = "registry.example.com/serve-chat:1.0",
    accelerator: Accelerator = "gpu",
    min_workers: int = 2,
    max_workers: int = 8,
    worker_cpus: int = 4,
    worker_memory: str = "16Gi",
) -> dict[str, Any]:
    """The ``RayService`` as a dict (see :func:`rayservice_yaml` for the YAML text).

    Args:
        serve_config_file: the Serve config; its text becomes ``serveConfigV2`` unchanged.
        name: the RayService's name (KubeRay names the cluster and services after it).
        image: the container image of every pod: Ray (the same version on every pod and
            in ``rayVersion``) plus the application's code and model.
        accelerator: ``gpu``, ``npu`` or ``cpu``: what each worker pod asks Kubernetes for.
        min_workers, max_workers: the worker group's size range; Ray's autoscaler (on, in
            the head) adds pods when Serve's autoscaling wants replicas that do not fit.
        worker_cpus, worker_memory: each worker pod's CPU and memory.
    """
    import ray

    if accelerator not in _POD_RESOURCES:
        raise ValueError(f"accelerator must be one of {sorted(_POD_RESOURCES)}, not {accelerator!r}")
    if not 0 <= min_workers <= max_workers:
        raise ValueError("need 0 <= min_workers <= max_workers")
    serve_config = Path(serve_config_file).read_text(encoding="utf-8")
    _check_fits(serve_config, accelerator)
    limits = {"cpu": str(worker_cpus), "memory": worker_memory, **_POD_RESOURCES[accelerator]}
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": name},
        "spec": {
            "serveConfigV2": serve_config,
            "rayClusterConfig": {
                "rayVersion": ray.__version__,
                "enableInTreeAutoscaling": True,
                "authOptions": {"mode": "token"},
                "headGroupSpec": {
                    # No CPUs for Ray on the head: replicas go to the workers, the head keeps
                    # the GCS, the dashboard, Serve's controller and a proxy.
                    "rayStartParams": {"num-cpus": "0"},
                    "template": _pod("ray-head", image, {"cpu": "2", "memory": "8Gi"}),
                },
                "workerGroupSpecs": [
                    {
                        "groupName": f"{accelerator}-workers",
                        "replicas": min_workers,
                        "minReplicas": min_workers,
                        "maxReplicas": max_workers,
                        "rayStartParams": dict(_RAY_START[accelerator]),
                        "template": _pod("ray-worker", image, limits),
                    }
                ],
            },
        },
    }


def _check_fits(serve_config: str, accelerator: str) -> None:
    """Refuse a cluster whose workers lack what a deployment asks for (it would never start)."""
    import yaml

    config = yaml.safe_load(serve_config)
    for app in config.get("applications", []):
        for dep in app.get("deployments", []):
            options = dep.get("ray_actor_options") or {}
            wants = {"gpu": options.get("num_gpus", 0) > 0, "npu": (options.get("resources") or {}).get("NPU", 0) > 0}
            for kind, wanted in wants.items():
                if wanted and accelerator != kind:
                    raise ValueError(
                        f"deployment {dep.get('name')!r} of application {app.get('name')!r} asks for "
                        f"{'num_gpus' if kind == 'gpu' else 'resources: {NPU: ...}'}, which {accelerator} "
                        "workers do not have: change the config or the accelerator"
                    )


def _pod(container: str, image: str, limits: dict[str, str]) -> dict[str, Any]:
    return {
        "spec": {
            "containers": [
                {
                    "name": container,
                    "image": image,
                    # requests = limits: Kubernetes reserves what Ray is told the node has.
                    "resources": {"limits": dict(limits), "requests": dict(limits)},
                }
            ]
        }
    }


def rayservice_yaml(serve_config_file: str | Path, **options: Any) -> str:
    """The ``RayService`` manifest as YAML text, ``serveConfigV2`` as a readable block."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _Dumper.add_representer(str, text)
    source = Path(serve_config_file).name
    header = (
        f"# A KubeRay RayService for {source}, written by rayservice_yaml in notebooks/kuberay.py\n"
        f"# (notebook 10): serveConfigV2 is {source} as it is. Apply it with\n"
        "#   kubectl apply -f <this file>\n"
        "# on a Kubernetes cluster that runs the KubeRay operator.\n"
    )
    body = yaml.dump(rayservice(serve_config_file, **options), Dumper=_Dumper, sort_keys=False, width=100)
    return header + body


def serve_config_of(manifest_text: str) -> dict[str, Any]:
    """Parse a RayService manifest and return its ``serveConfigV2`` as a dict."""
    import yaml

    manifest = yaml.safe_load(manifest_text)
    if manifest.get("apiVersion") != "ray.io/v1" or manifest.get("kind") != "RayService":
        raise ValueError("not a ray.io/v1 RayService")
    return yaml.safe_load(manifest["spec"]["serveConfigV2"])
