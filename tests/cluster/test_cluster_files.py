"""The cluster launcher files pass Ray's own validation (no cloud access). No credential is kept
in them or anywhere else in the repository: tests/test_security.py checks every tracked file."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
FILES = ["cluster/cluster.yaml", "cluster/local.yaml"]


def load(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


@pytest.mark.parametrize("name", FILES)
def test_cluster_file_passes_ray_validation(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(copy.deepcopy(load(name)))
    validate_config(config)  # Ray's JSON schema plus its checks on node types


def test_aws_file_has_an_autoscaling_gpu_worker_type():
    config = load("cluster/cluster.yaml")
    assert config["provider"]["type"] == "aws"
    workers = [t for name, t in config["available_node_types"].items()
               if name != config["head_node_type"]]
    assert len(workers) == 1
    assert workers[0]["min_workers"] == 0 and workers[0]["max_workers"] >= 1
    assert workers[0]["node_config"]["InstanceType"].startswith(("g", "p"))  # GPU instances
    commands = " ".join(config["setup_commands"])
    assert "WSSS_TUNE_STORAGE=s3://" in commands and "WSSS_MLFLOW_ARTIFACTS=s3://" in commands


@pytest.mark.parametrize("name", FILES)
def test_cluster_file_syncs_the_project_and_starts_mlflow_on_the_head(name):
    config = load(name)
    assert "~/src/wsss" in config["file_mounts"]
    assert any("node_env.sh" in c for c in config["setup_commands"])
    assert any("mlflow_server.sh" in c for c in config["head_start_ray_commands"])
    assert not any("mlflow" in c for c in config["worker_start_ray_commands"])
    assert "0.0.0.0" not in (REPO / name).read_text() + (REPO / "cluster/mlflow_server.sh").read_text()


def test_local_file_names_a_key_path_never_a_key():
    auth = load("cluster/local.yaml")["auth"]
    assert Path(auth["ssh_private_key"]).name and "\n" not in auth["ssh_private_key"]

