"""cluster/: every YAML parses, launcher configs pass Ray's own validation, job entry points exist."""

from __future__ import annotations

import importlib.util
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
    assert config["available_node_types"][config["head_node_type"]]["resources"] == {"CPU": 0}
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "RAY_AUTH_MODE=token" in head

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


def test_raycluster_keeps_the_dashboard_private():
    cluster = yaml.safe_load((CLUSTER / "kuberay" / "raycluster.yaml").read_text())
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    assert cluster["spec"]["headGroupSpec"]["serviceType"] == "ClusterIP"
    assert cluster["spec"]["rayVersion"] == "2.60.0"
    for group in [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]:
        env = {e["name"]: e["value"] for e in group["template"]["spec"]["containers"][0]["env"]}
        assert env["RAY_AUTH_MODE"] == "token"
        assert group["template"]["spec"]["containers"][0]["volumeMounts"][0]["mountPath"] == "/mnt/fmgnn"
