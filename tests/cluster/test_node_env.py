"""The node environment the launcher files set up, and how the sweeps read it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_node_env(home: Path, **env: str) -> str:
    """Run ``cluster/node_env.sh`` with ``home`` as ``~``; returns the env file it wrote."""
    subprocess.run(["bash", str(REPO / "cluster/node_env.sh"), sys.prefix], check=True,
                   capture_output=True, env={"PATH": os.environ["PATH"], "HOME": str(home), **env})
    return (home / ".wsss/env.sh").read_text()


def test_worker_env_points_at_the_head_and_is_sourced_once(tmp_path):
    (tmp_path / ".bashrc").write_text("# a user's bashrc\n")
    env = {"RAY_HEAD_IP": "10.1.2.3", "WSSS_MLFLOW_PORT": "5123",
           "WSSS_TUNE_STORAGE": "s3://bucket/ray"}
    run_node_env(tmp_path, **env)
    text = run_node_env(tmp_path, **env)  # setup commands run again on every `ray up`
    assert "export MLFLOW_TRACKING_URI=http://10.1.2.3:5123" in text
    assert "export RAY_ADDRESS=auto" in text
    assert "export RAY_worker_niceness=0" in text  # Ray's workers at normal priority
    assert "export WSSS_STORAGE_PATH=s3://bucket/ray" in text
    assert f'export PATH="{Path(sys.prefix).resolve()}/bin:$PATH"' in text
    bashrc = (tmp_path / ".bashrc").read_text()
    assert bashrc.startswith("# a user's bashrc") and bashrc.count(".wsss/env.sh") == 2  # one line

    sourced = subprocess.run(["bash", "-c", "source ~/.bashrc; echo $MLFLOW_TRACKING_URI"],
                             env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
                             capture_output=True, text=True, check=True).stdout.strip()
    assert sourced == "http://10.1.2.3:5123"


def test_sweeps_default_to_the_node_storage_and_ray_address(monkeypatch):
    from wsss.tune.runner import Sweep, build_parser

    monkeypatch.setenv("WSSS_STORAGE_PATH", "s3://bucket/ray")
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    args = build_parser(Sweep("x"), None).parse_args([])
    assert (args.storage_path, args.address) == ("s3://bucket/ray", "auto")
    monkeypatch.setenv("WSSS_STORAGE_PATH", "")
    monkeypatch.delenv("RAY_ADDRESS")
    args = build_parser(Sweep("x"), None).parse_args([])
    assert (args.storage_path, args.address) == (None, None)
