"""The real launcher path: ``ray up`` a head on 127.0.0.1 over ssh from ``cluster/local.yaml``,
``ray submit`` it ``sweeps/erasing.py --smoke-test``, find the sweep's runs in the head's MLflow
store, ``ray down``.

The head is this machine (see ``conftest.py``): the file is rendered with this checkout and its
virtual environment instead of a fresh install, a temporary Tune storage folder, and free ports
so that the head's Ray does not meet the other Ray instances of the test suite.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

from wsss.tune.tracking import ROLE

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
EXPERIMENT = "cluster-erasing"


def render(head: Any, storage: Path, free_port: Callable[[], int]) -> dict[str, Any]:
    """``cluster/local.yaml`` for the test head: 127.0.0.1 as root with the test key (through
    ``nc`` to sshd's port), this checkout synced, this virtual environment instead of an install,
    ``storage`` for Tune, and free ports for MLflow and Ray."""
    cfg = yaml.safe_load((REPO / "cluster/local.yaml").read_text())
    cfg["cluster_name"] = f"wsss-test-{uuid.uuid4().hex[:8]}"
    cfg["provider"].update(head_ip="127.0.0.1", worker_ips=[])
    cfg["auth"] = {"ssh_user": "root", "ssh_private_key": str(head.key),
                   "ssh_proxy_command": f"nc 127.0.0.1 {head.port}"}
    cfg["file_mounts"] = {"~/src/wsss": str(project_snapshot(storage.parent / "project"))}
    venv = sys.prefix
    env_cmds = [c for c in cfg["setup_commands"] if "node_env.sh" in c]
    assert len(env_cmds) == 1, "local.yaml: one setup command runs cluster/node_env.sh"
    env_cmd = re.sub(r"WSSS_MLFLOW_PORT=\S+", f"WSSS_MLFLOW_PORT={free_port()}", env_cmds[0])
    env_cmd = re.sub(r"WSSS_TUNE_STORAGE=\S+", f"WSSS_TUNE_STORAGE={storage}", env_cmd)
    cfg["setup_commands"] = [env_cmd.replace("~/wsss-venv", venv)]
    ports = (f"--port={free_port()} --ray-client-server-port={free_port()} "
             f"--dashboard-port={free_port()} --dashboard-agent-listen-port={free_port()} "
             "--include-dashboard=false --num-cpus=2")
    # This "head" shares its memory with everything else on the machine: Ray's memory monitor
    # would kill the trials' workers for what other processes use.
    start = [re.sub(r"--port=\d+", ports, c) for c in cfg["head_start_ray_commands"]]
    cfg["head_start_ray_commands"] = [c.replace("ray start", "RAY_memory_monitor_refresh_ms=0 "
                                                "ray start") for c in start]
    return cfg


def project_snapshot(dest: Path) -> Path:
    """The files of this checkout that git does not ignore (what ``rsync_filter: .gitignore``
    syncs): ``ray up`` hashes every file under a mount's source, a virtual environment included."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split()
    for rel in files:
        if (REPO / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    return dest


def ray_cli(*args: str, timeout: float) -> subprocess.CompletedProcess:
    """Run the ``ray`` command of this environment; output echoed for the test log."""
    ray = Path(sys.executable).with_name("ray")
    proc = subprocess.run([str(ray), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    print(f"$ ray {' '.join(args)}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def cluster(ssh_head, tmp_path, free_port) -> Iterator[Path]:
    """``ray up`` the rendered file; ``ray down`` (and the local provider's state removed) after."""
    path = tmp_path / "cluster.yaml"
    cfg = render(ssh_head, tmp_path / "tune-storage", free_port)
    path.write_text(yaml.safe_dump(cfg))
    try:
        up = ray_cli("up", "-y", "--no-config-cache", str(path), timeout=600)
        assert up.returncode == 0, f"ray up failed:\n{up.stdout[-4000:]}\n{up.stderr[-4000:]}"
        yield path
    finally:
        ray_cli("down", "-y", str(path), timeout=300)
        for leftover in launcher_leftovers(cfg):
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() \
                else leftover.unlink(missing_ok=True)


def launcher_leftovers(cfg: dict[str, Any]) -> list[Path]:
    """What the launcher keeps on this machine for the cluster: the local provider's state and
    lock, the cached prepared config and the ssh control sockets' folder."""
    import copy
    import getpass
    import hashlib
    import json

    from ray.autoscaler._private.util import prepare_config

    def digest(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    name = cfg["cluster_name"]
    prepared = json.dumps([prepare_config(copy.deepcopy(cfg))], sort_keys=True)
    return [Path(f"/tmp/ray/cluster-{name}.state"), Path(f"/tmp/ray/cluster-{name}.lock"),
            Path(tempfile.gettempdir(), f"ray-config-{digest(prepared)}"),
            Path(f"/tmp/ray_ssh_{digest(getpass.getuser())[:10]}/{digest(name)[:10]}")]


def test_ray_submit_sweep_to_a_launched_head(cluster, ssh_head):
    import mlflow

    submit = ray_cli("submit", "--no-config-cache", str(cluster), str(REPO / "sweeps/erasing.py"),
                     "--", "--smoke-test", "--num-samples", "2", "--max-concurrent", "2",
                     "--eval-images", "8", "--experiment", EXPERIMENT, timeout=900)
    output = submit.stdout + submit.stderr
    assert submit.returncode == 0, f"ray submit failed:\n{output[-6000:]}"
    assert "Started a local Ray instance" not in output  # it joined the head's Ray

    env = (ssh_head.home / ".wsss/env.sh").read_text()
    uri = re.search(r"MLFLOW_TRACKING_URI=(\S+)", env).group(1)
    assert (ssh_head.home / ".wsss/mlflow/mlflow.db").is_file()  # the head's store
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get(ROLE) == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == 2
    for child in children:
        assert "method.params.steps" in child.data.params
        assert 0.0 <= child.data.metrics["pseudo_miou"] <= 1.0
    assert "trials.csv" in {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    # Tune kept the sweep in the storage the node environment named.
    assert any((cluster.parent / "tune-storage" / EXPERIMENT).iterdir())
