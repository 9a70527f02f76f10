"""Find the accelerator once and turn it into a torch device and Ray resource options.

The order of preference is Ascend NPU (``torch_npu`` importable and at least one device),
then CUDA, then the CPU. The same :class:`Accelerator` gives

* the torch device string to move a model to (``"npu:0"``, ``"cuda:0"`` or ``"cpu"``), and
* the ``ray_actor_options`` that make Ray place a replica where that device is:
  ``{"resources": {"NPU": n}}`` for Ascend (Ray then sets ``ASCEND_RT_VISIBLE_DEVICES`` for
  the replica), ``{"num_gpus": n}`` for CUDA (Ray sets ``CUDA_VISIBLE_DEVICES``), and only
  ``num_cpus`` for the CPU.

A deployment asks for its device in its decorator::

    @serve.deployment(ray_actor_options=ray_actor_options(num_cpus=0.5))
    class LLM: ...

and :func:`actor_options` changes its CPU share (or anything else) later *without dropping
that request*, which a plain ``.options(ray_actor_options={"num_cpus": 0.25})`` would do::

    LLM.options(num_replicas=2, ray_actor_options=actor_options(LLM, num_cpus=0.25))

Nothing here needs the hardware: the probes are small functions that tests replace. The module
needs only torch (and ``torch_npu`` where there is an NPU): copy it into your project as is.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["npu", "cuda", "cpu"]


@dataclass(frozen=True)
class Accelerator:
    """The accelerator a replica will use.

    Attributes:
        kind: ``"npu"``, ``"cuda"`` or ``"cpu"``.
        count: how many devices of that kind this machine has (1 for the CPU).
        name: a human-readable device name, e.g. ``"Ascend910B"`` or ``"cpu"``.
    """

    kind: Kind
    count: int
    name: str

    @property
    def torch_device(self) -> str:
        """The torch device string for the first device of this kind."""
        return "cpu" if self.kind == "cpu" else f"{self.kind}:0"

    @property
    def ray_resource(self) -> str | None:
        """The Ray resource name that stands for one device, or ``None`` on the CPU."""
        return {"npu": "NPU", "cuda": "GPU", "cpu": None}[self.kind]

    def ray_actor_options(self, fraction: float = 1.0, num_cpus: float = 1.0) -> dict[str, Any]:
        """``ray_actor_options`` for a replica that uses ``fraction`` of one device.

        Args:
            fraction: how much of one device each replica asks for. Fractions below 1 let
                several replicas share a device; Ray only counts, it does not isolate
                memory, so the replicas must fit together.
            num_cpus: CPUs reserved for the replica (fractions allowed).
        """
        if not 0 < fraction <= self.count:
            raise ValueError(f"fraction must be in (0, {self.count}], got {fraction}")
        if num_cpus < 0:
            raise ValueError(f"num_cpus must be >= 0, got {num_cpus}")
        options: dict[str, Any] = {"num_cpus": num_cpus}
        if self.kind == "npu":
            options["resources"] = {"NPU": fraction}
        elif self.kind == "cuda":
            options["num_gpus"] = fraction
        return options


def _npu_devices() -> tuple[int, str]:
    """Number and name of Ascend NPUs, (0, "") when torch_npu is absent or sees none."""
    if importlib.util.find_spec("torch_npu") is None:
        return 0, ""
    try:
        importlib.import_module("torch_npu")  # registers the "npu" device with torch
        import torch

        count = int(torch.npu.device_count())  # type: ignore[attr-defined]
        name = str(torch.npu.get_device_name(0)) if count else ""  # type: ignore[attr-defined]
        return count, name
    except Exception:  # a broken driver install means: no usable NPU
        return 0, ""


def _cuda_devices() -> tuple[int, str]:
    """Number and name of CUDA GPUs visible to torch."""
    try:
        import torch
    except ImportError:
        return 0, ""
    if not torch.cuda.is_available():
        return 0, ""
    count = int(torch.cuda.device_count())
    return count, (torch.cuda.get_device_name(0) if count else "")


def probe_accelerator() -> Accelerator:
    """Look for an accelerator now (no caching): NPU, then CUDA, then CPU."""
    count, name = _npu_devices()
    if count:
        return Accelerator("npu", count, name or "Ascend NPU")
    count, name = _cuda_devices()
    if count:
        return Accelerator("cuda", count, name or "CUDA GPU")
    return Accelerator("cpu", 1, "cpu")


@functools.cache
def detect_accelerator() -> Accelerator:
    """The accelerator of this process, probed once and then cached."""
    return probe_accelerator()


def ray_actor_options(
    fraction: float = 1.0, num_cpus: float = 1.0, accelerator: Accelerator | None = None
) -> dict[str, Any]:
    """``ray_actor_options`` for the detected (or given) accelerator.

    >>> ray_actor_options(accelerator=Accelerator("npu", 8, "Ascend910B"), fraction=0.5)
    {'num_cpus': 1.0, 'resources': {'NPU': 0.5}}
    """
    return (accelerator or detect_accelerator()).ray_actor_options(fraction, num_cpus)


def actor_options(deployment: Any, **changes: Any) -> dict[str, Any]:
    """``deployment``'s ``ray_actor_options`` with ``changes`` applied, its accelerator kept.

    ``.options(ray_actor_options=...)`` *replaces* the whole dictionary, so passing only
    ``{"num_cpus": 0.25}`` silently drops a ``num_gpus`` or ``resources: {"NPU": 1}`` request,
    and the replicas then use a device nobody reserved for them. This merges instead:

    >>> actor_options(LLM, num_cpus=0.25)               # on an NPU machine
    {'num_cpus': 0.25, 'resources': {'NPU': 1.0}}
    >>> actor_options(LLM, resources={"NPU": 0.5})      # resources are merged key by key
    {'num_cpus': 0.5, 'resources': {'NPU': 0.5}}

    ``deployment`` is a Serve deployment (anything with ``ray_actor_options``) or a dict.
    """
    current = deployment if isinstance(deployment, dict) else (deployment.ray_actor_options or {})
    merged = {**current, **changes}
    if "resources" in changes:
        merged["resources"] = {**current.get("resources", {}), **changes["resources"]}
    return merged
