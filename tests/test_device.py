"""helpers.device: each detection path faked, so no hardware is needed."""

import pytest

from helpers import device
from helpers.device import Accelerator


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
