"""kuberay (notebooks/kuberay.py) and the committed RayService manifest of notebook 10."""

from pathlib import Path

import pytest
import yaml

from helpers.config import validate_serve_config
from kuberay import rayservice, rayservice_yaml, serve_config_of

CONFIGS = Path(__file__).resolve().parents[1] / "notebooks" / "configs"
MANIFEST = CONFIGS / "rayservice_llm.yaml"
NPU_MANIFEST = CONFIGS / "rayservice_llm_npu.yaml"
SOURCE = CONFIGS / "llm_prod.yaml"


def test_committed_manifest_is_what_the_generator_writes():
    # Generated, never edited by hand: regenerate it (notebook 10) after changing llm_prod.yaml.
    assert MANIFEST.read_text() == rayservice_yaml(SOURCE)


def test_manifest_is_a_rayservice_whose_serve_config_is_valid_for_this_ray():
    import ray

    manifest = yaml.safe_load(MANIFEST.read_text())
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayService"
    cluster = manifest["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["authOptions"] == {"mode": "token"}
    config = serve_config_of(MANIFEST.read_text())
    assert config == yaml.safe_load(SOURCE.read_text())
    assert validate_serve_config(config) == []  # Ray 2.60's ServeDeploySchema, and no ignored keys


def test_worker_group_matches_what_the_deployment_asks_for():
    manifest = rayservice(SOURCE)
    group = manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    deployment = yaml.safe_load(SOURCE.read_text())["applications"][0]["deployments"][0]
    assert limits["nvidia.com/gpu"] == str(deployment["ray_actor_options"]["num_gpus"])
    # Enough workers for the autoscaler's range (one GPU per replica, one GPU per pod).
    scaling = deployment["autoscaling_config"]
    assert group["minReplicas"] >= scaling["min_replicas"] and group["maxReplicas"] >= scaling["max_replicas"]
    head = manifest["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert head["rayStartParams"] == {"num-cpus": "0"}


def _npu_config(tmp_path) -> Path:
    # What notebook 10 does: llm_prod.yaml with its one `num_gpus: 1` line asking for an NPU.
    import re

    text = re.sub(r"num_gpus: 1 .*", "resources: {NPU: 1}        # one Ascend NPU per replica", SOURCE.read_text())
    path = tmp_path / "llm_prod_npu.yaml"
    path.write_text(text)
    return path


def test_npu_workers_ask_kubernetes_for_npus_and_ray_detects_them(tmp_path):
    npu_config = _npu_config(tmp_path)
    config = yaml.safe_load(npu_config.read_text())
    assert config["applications"][0]["deployments"][0]["ray_actor_options"] == {"num_cpus": 1, "resources": {"NPU": 1}}
    group = rayservice(npu_config, accelerator="npu")["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    # Ray 2.60 detects Ascend NPUs (ray/_private/accelerators/npu.py) and names them NPU: nothing declared.
    assert "resources" not in group["rayStartParams"]
    assert group["template"]["spec"]["containers"][0]["resources"]["limits"]["huawei.com/Ascend910"] == "1"
    assert serve_config_of(rayservice_yaml(npu_config, accelerator="npu")) == config


def test_committed_npu_manifest_is_what_the_generator_writes(tmp_path):
    assert NPU_MANIFEST.read_text() == rayservice_yaml(_npu_config(tmp_path), accelerator="npu", name="serve-chat-npu")
    assert validate_serve_config(serve_config_of(NPU_MANIFEST.read_text())) == []


@pytest.mark.parametrize("accelerator", ["npu", "cpu"])
def test_a_cluster_without_the_deployments_accelerator_is_refused(accelerator):
    with pytest.raises(ValueError, match="num_gpus"):
        rayservice(SOURCE, accelerator=accelerator)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        rayservice(SOURCE, accelerator="tpu")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        rayservice(SOURCE, min_workers=3, max_workers=2)


def test_serve_config_of_refuses_other_kinds():
    with pytest.raises(ValueError):
        serve_config_of("apiVersion: ray.io/v1\nkind: RayCluster\nspec: {}\n")
