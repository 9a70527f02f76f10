"""apps.accelerator: each detection path faked, so no hardware is needed."""

import json
import re
from pathlib import Path

import pytest

from apps import accelerator as device
from apps.accelerator import Accelerator, actor_options

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.fixture
def fake(monkeypatch):
    """Fake the NPU and CUDA probes: fake(npu=(count, name), cuda=(count, name))."""

    def _fake(npu=(0, ""), cuda=(0, "")):
        monkeypatch.setattr(device, "_npu_devices", lambda: npu)
        monkeypatch.setattr(device, "_cuda_devices", lambda: cuda)

    return _fake


def test_npu_wins_over_cuda(fake):
    fake(npu=(8, "Ascend910B"), cuda=(2, "NVIDIA A100"))
    acc = device.probe_accelerator()
    assert acc == Accelerator("npu", 8, "Ascend910B")
    assert acc.torch_device == "npu:0"
    assert acc.ray_resource == "NPU"
    assert acc.ray_actor_options() == {"num_cpus": 1.0, "resources": {"NPU": 1.0}}


def test_cuda_when_no_npu(fake):
    fake(cuda=(1, "NVIDIA H100"))
    acc = device.probe_accelerator()
    assert (acc.kind, acc.count, acc.torch_device) == ("cuda", 1, "cuda:0")
    assert acc.ray_actor_options(fraction=0.25, num_cpus=0.5) == {"num_cpus": 0.5, "num_gpus": 0.25}


def test_cpu_when_nothing(fake):
    fake()
    acc = device.probe_accelerator()
    assert acc == Accelerator("cpu", 1, "cpu")
    assert acc.torch_device == "cpu"
    assert acc.ray_resource is None
    assert acc.ray_actor_options(num_cpus=0.2) == {"num_cpus": 0.2}


def test_npu_without_torch_npu_is_cpu(monkeypatch):
    """No torch_npu installed: the real NPU probe reports nothing (this machine has none)."""
    monkeypatch.setattr(device.importlib.util, "find_spec", lambda name: None)
    assert device._npu_devices() == (0, "")


def test_broken_npu_driver_counts_as_none(monkeypatch):
    monkeypatch.setattr(device.importlib.util, "find_spec", lambda name: object())

    def broken(name):
        raise RuntimeError("libascendcl.so: cannot open shared object file")

    monkeypatch.setattr(device.importlib, "import_module", broken)
    assert device._npu_devices() == (0, "")


def test_cuda_probe_on_this_machine_matches_torch():
    import torch

    count, _ = device._cuda_devices()
    assert count == (torch.cuda.device_count() if torch.cuda.is_available() else 0)


@pytest.mark.parametrize("fraction", [0, -1, 3])
def test_bad_fraction(fraction):
    with pytest.raises(ValueError, match="fraction"):
        Accelerator("cuda", 2, "gpu").ray_actor_options(fraction=fraction)


def test_fraction_above_one_allowed_up_to_count():
    assert Accelerator("npu", 4, "x").ray_actor_options(fraction=2) == {
        "num_cpus": 1.0,
        "resources": {"NPU": 2},
    }


def test_negative_cpus_rejected():
    with pytest.raises(ValueError, match="num_cpus"):
        Accelerator("cpu", 1, "cpu").ray_actor_options(num_cpus=-1)


def test_detect_is_cached(fake):
    device.detect_accelerator.cache_clear()
    fake(cuda=(1, "gpu"))
    first = device.detect_accelerator()
    fake()  # the machine "changes"; the cached answer does not
    assert device.detect_accelerator() is first
    device.detect_accelerator.cache_clear()


def test_module_level_ray_actor_options(fake):
    acc = Accelerator("npu", 2, "Ascend910B")
    assert device.ray_actor_options(0.5, 0.1, accelerator=acc) == {
        "num_cpus": 0.1,
        "resources": {"NPU": 0.5},
    }


# -- changing a deployment's options without dropping its accelerator -------------------------


@pytest.fixture(params=["npu", "cuda"])
def fake_machine(request, fake):
    """A deployment declared as the apps declare theirs, on a (faked) NPU or GPU machine."""
    from ray import serve

    fake(**{request.param: (2, "fake")})
    device.detect_accelerator.cache_clear()

    @serve.deployment(num_replicas=1, ray_actor_options=device.ray_actor_options(num_cpus=0.5))
    class Model:
        pass

    yield request.param, Model
    device.detect_accelerator.cache_clear()


EXPECTED = {"npu": {"resources": {"NPU": 1.0}}, "cuda": {"num_gpus": 1.0}}


def test_the_decorator_asks_for_the_detected_accelerator(fake_machine):
    kind, model = fake_machine
    assert model.ray_actor_options == {"num_cpus": 0.5, **EXPECTED[kind]}


def test_plain_options_drop_the_accelerator_and_actor_options_keep_it(fake_machine):
    kind, model = fake_machine
    dropped = model.options(num_replicas=2, ray_actor_options={"num_cpus": 0.25})
    assert dropped.ray_actor_options == {"num_cpus": 0.25}  # the trap: no NPU/GPU reserved any more
    kept = model.options(num_replicas=2, ray_actor_options=actor_options(model, num_cpus=0.25))
    assert kept.ray_actor_options == {"num_cpus": 0.25, **EXPECTED[kind]}
    assert kept.num_replicas == 2
    halved = model.options(ray_actor_options=actor_options(model, resources={"NPU": 0.5}))
    assert halved.ray_actor_options["resources"] == {"NPU": 0.5}


def test_the_apps_declare_their_models_with_the_detected_accelerator():
    from apps import chatbot, embedder, llm, llm_prod, rag

    detected = device.ray_actor_options(num_cpus=0.5)  # a CPU-only machine here
    for deployment in (llm.LLM, llm.Generator, llm_prod.ProductionLLM):
        assert deployment.ray_actor_options == detected
    assert chatbot.model._bound_deployment.ray_actor_options == detected
    assert embedder.Embedder.ray_actor_options == device.ray_actor_options(fraction=0.5, num_cpus=0.5)
    assert rag.generator._bound_deployment.ray_actor_options == device.ray_actor_options(fraction=0.5, num_cpus=0.5)


def test_actor_options_merges_resources_key_by_key():
    base = {"num_cpus": 1, "resources": {"NPU": 1, "ssd": 1}}
    assert actor_options(base, resources={"NPU": 0.5}) == {"num_cpus": 1, "resources": {"NPU": 0.5, "ssd": 1}}
    assert actor_options(base, num_gpus=1) == {"num_cpus": 1, "num_gpus": 1, "resources": {"NPU": 1, "ssd": 1}}
    assert base == {"num_cpus": 1, "resources": {"NPU": 1, "ssd": 1}}  # not modified


def notebook_code():
    for path in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] == "code":
                yield path.name, "".join(cell["source"])


def _called_by(code: str, at: int) -> str:
    """The text just before the opening parenthesis of the call that encloses position `at`."""
    depth = 0
    for k in range(at - 1, -1, -1):
        if code[k] in ")]}":
            depth += 1
        elif code[k] in "([{":
            if depth:
                depth -= 1
            elif code[k] == "(":
                return code[:k].rstrip()
    return ""


def test_notebooks_never_replace_ray_actor_options_by_hand():
    """Every `.options(ray_actor_options=...)` in a notebook keeps the accelerator request.

    A deployment's own decorator may name its resources (02's first, CPU-only deployment;
    10's placement-group example); replacing them from outside with a dict drops the
    accelerator the module asked for. A dict that starts from the deployment's own
    (`{**dep.ray_actor_options, ...}`) keeps it.
    """
    offenders = [
        (name, code[m.start():].splitlines()[0])
        for name, code in notebook_code()
        for m in re.finditer(r"ray_actor_options\s*=\s*\{(?!\s*\*\*\w[\w.]*\.ray_actor_options\b)", code)
        if not _called_by(code, m.start()).endswith("@serve.deployment")
    ]
    assert offenders == []


def test_the_check_tells_a_decorator_from_options():
    decorator = '@serve.deployment(\n    num_replicas=2,\n    ray_actor_options={"num_cpus": 1},\n)'
    options = 'app = Model.options(\n    ray_actor_options={"num_cpus": 1},\n).bind()'
    assert _called_by(decorator, decorator.index("ray_actor_options")).endswith("@serve.deployment")
    assert _called_by(options, options.index("ray_actor_options")).endswith(".options")
