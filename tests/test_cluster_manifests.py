"""cluster/: every YAML parses, launcher configs pass Ray's own validation, job entry points exist."""

from __future__ import annotations

import importlib.util
import json
import shlex
from pathlib import Path

import pytest
import yaml

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
REPO = CLUSTER.parent


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_launcher_configs_pass_ray_autoscaler_validation(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((CLUSTER / name).read_text())
    validate_config(prepare_config(config))  # Ray's ray-schema.json, after filling the provider defaults
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0, "fmgnn_driver": 4}  # drivers only
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "RAY_AUTH_MODE=token" in head
    # Every node reads the token made where `ray up` runs; every container sees the shared file system.
    assert config["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"
    assert any("mount" in c and "/mnt/fmgnn" in c for c in config["initialization_commands"])
    assert "-v /mnt/fmgnn:/mnt/fmgnn" in config["docker"]["run_options"]
    # Each worker type is either the fmgnn image (node resource fmgnn_node, the pinned set installed) or
    # the vLLM image (vllm_node, nothing installed over vLLM's torch); a CPU-only type for Data tasks.
    workers = {kind: t for kind, t in types.items() if kind != config["head_node_type"]}
    images = {kind: {"fmgnn_node", "vllm_node"} & set(t["resources"]) for kind, t in workers.items()}
    assert all(len(found) == 1 for found in images.values()), images
    for kind, t in workers.items():
        vllm = images[kind] == {"vllm_node"}
        assert (t.get("docker", {}).get("worker_image", "").startswith("rayproject/ray-llm")) == vllm
        assert (t.get("worker_setup_commands") == []) == vllm
    assert any("GPU" not in t["resources"] and images[n] == {"fmgnn_node"} for n, t in workers.items())

    broken = yaml.safe_load((CLUSTER / name).read_text())
    broken["available_node_types"]["head"]["node_confg"] = {}
    with pytest.raises(Exception, match="node_confg"):
        validate_config(prepare_config(broken))


def rayjobs() -> list[Path]:
    return sorted((CLUSTER / "kuberay").glob("rayjob-*.yaml"))


def test_every_manifest_parses_and_rayjobs_cover_augment_train_tune():
    for path in CLUSTER.rglob("*.yaml"):
        assert yaml.safe_load(path.read_text()) is not None, path
    assert {p.stem for p in rayjobs()} == {"rayjob-augment", "rayjob-train", "rayjob-tune"}


@pytest.mark.parametrize("path", rayjobs(), ids=lambda p: p.stem)
def test_rayjob_entry_points_name_real_modules_and_configs(path):
    job = yaml.safe_load(path.read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": "fmgnn"}
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[:2] == ["python", "-m"] and importlib.util.find_spec(words[2]) is not None, words[2]
    if "--config" in words:
        assert (REPO / words[words.index("--config") + 1]).is_file()
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert runtime_env["env_vars"]["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "0.1"
    # The job's processes go to the fmgnn image's nodes, vLLM replicas to the vLLM image's, the driver to the head.
    assert "ray.node_resource=fmgnn_node" in words
    assert ("engine.node_resource=vllm_node" in words) == ("engine.kind=vllm" in words)
    assert json.loads(job["spec"]["entrypointResources"]) == {"fmgnn_driver": 1}


def test_raycluster_keeps_the_dashboard_private():
    cluster = yaml.safe_load((CLUSTER / "kuberay" / "raycluster.yaml").read_text())
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    assert cluster["spec"]["headGroupSpec"]["serviceType"] == "ClusterIP"
    assert cluster["spec"]["rayVersion"] == "2.60.0"
    # The operator makes the token Secret and sets RAY_AUTH_MODE/RAY_AUTH_TOKEN in every container.
    assert cluster["spec"]["authOptions"] == {"mode": "token"}
    head = cluster["spec"]["headGroupSpec"]
    assert json.loads(json.loads(head["rayStartParams"]["resources"])) == {"fmgnn_driver": 4}
    for group in [head, *cluster["spec"]["workerGroupSpecs"]]:
        container = group["template"]["spec"]["containers"][0]
        assert "RAY_AUTH_MODE" not in {e["name"] for e in container.get("env", [])}
        assert container["volumeMounts"][0]["mountPath"] == "/mnt/fmgnn"
    for group in cluster["spec"]["workerGroupSpecs"]:
        resources = json.loads(json.loads(group["rayStartParams"]["resources"]))
        image = group["template"]["spec"]["containers"][0]["image"]
        expected = {"vllm_node"} if image.startswith("rayproject/ray-llm") else {"fmgnn_node"}
        assert {"fmgnn_node", "vllm_node"} & set(resources) == expected, group["groupName"]
    assert any("nvidia.com/gpu" not in g["template"]["spec"]["containers"][0]["resources"]["limits"]
               for g in cluster["spec"]["workerGroupSpecs"])  # a CPU group for Ray Data's CPU tasks
