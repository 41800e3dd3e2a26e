"""Safe defaults: checkpoints load with weights_only, split ids cannot leave the dataset folder,
the MLflow server listens on 127.0.0.1 unless told otherwise, and no credential is kept in the
repository. docs/reliability.md tabulates them."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import torch

from wsss.cli import main
from wsss.data.synthetic import generate_dataset
from wsss.data.errors import DatasetError
from wsss.data.dataset import VOCDataset
from wsss.pipeline.pseudo_label import run_pseudo_label
from wsss.train.checkpoint import CheckpointError

REPO = Path(__file__).resolve().parents[1]

# Key-like strings: cloud keys, private key blocks, tokens, and secrets written out in files.
SECRET_PATTERNS = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret key": re.compile(r"aws_secret_access_key\s*[:=]\s*\S{20,}", re.IGNORECASE),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "GitHub token": re.compile(r"\b(gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{40,})\b"),
    "Slack token": re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),
    "Hugging Face token": re.compile(r"\bhf_[A-Za-z0-9]{34,}\b"),
    "Google API key": re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"),
    "password in a URL": re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:[^/\s@'\"]+@"),
    "secret assigned in a file": re.compile(
        r"\b(api[_-]?key|secret[_-]?key|access[_-]?token|auth[_-]?token|password)"
        r"\s*[:=]\s*['\"][^'\"\s]{12,}['\"]", re.IGNORECASE),
}


def _secrets_in(text: str) -> list[str]:
    return [what for what, pattern in SECRET_PATTERNS.items() if pattern.search(text)]


# -- credentials ------------------------------------------------------------------------------
def test_the_credential_patterns_find_planted_keys():
    # built from pieces so that this file itself holds no key-like string
    planted = {
        "AWS access key id": "AKIA" + "IOSFODNN7EXAMPLE",
        "AWS secret key": "aws_secret_access_key = " + "wJalrXUtnFEMI/K7MDENG/bPxRfiCY",
        "private key": "-----BEGIN " + "OPENSSH PRIVATE KEY-----",
        "GitHub token": "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8",
        "Slack token": "xoxb-" + "123456789012-abcdefghij",
        "Hugging Face token": "hf_" + "aBcDeFgHiJkLmNoPqRsTuVwXyZaBcDeFgH",
        "Google API key": "AIza" + "SyA1234567890abcdefghijklmnopqrstuv",
        "password in a URL": "https://" + "alice:s3cret@mlflow.example.com",
        "secret assigned in a file": "api_key = " + '"0123456789abcdef"',
    }
    for what, text in planted.items():
        assert what in _secrets_in(f"x\n{text}\ny"), what
    assert _secrets_in("tracking_uri = 'http://10.0.0.1:5000'\npassword = getenv('P')") == []


def test_no_credentials_in_the_repository():
    """Every file git tracks (or would: untracked, not ignored), the cluster files included."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    assert "cluster/cluster.yaml" in files and "wsss/cli.py" in files
    found = []
    for rel in files:
        path = REPO / rel
        if path.is_file() and path.stat().st_size < 5_000_000:
            text = path.read_bytes().decode("utf-8", errors="ignore")
            found += [f"{rel}: {what}" for what in _secrets_in(text)]
    assert not found, f"credentials in the repository: {found}"


# -- checkpoints: torch.load(weights_only=True) only -------------------------------------------
class _RunsCodeWhenUnpickled:
    """Unpickling this creates ``marker``: proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_checkpoint_with_pickled_objects_is_refused(tmp_path, capsys):
    data = tmp_path / "data"
    generate_dataset(data, n=4, seed=0, image_size=32)
    marker, evil = tmp_path / "code_ran", tmp_path / "evil.pt"
    torch.save({"format": "wsss.classifier/1", "payload": _RunsCodeWhenUnpickled(marker)}, evil)
    code = main(["cam", "--checkpoint", str(evil), "--data", str(data), "--out",
                 str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and f"wsss cam: error: refusing checkpoint {evil}" in err
    assert "torch.load(weights_only=True)" in err and "Unsupported global" in err
    assert not marker.exists() and not (tmp_path / "out").exists()
    with pytest.raises(CheckpointError, match="refusing checkpoint"):
        run_pseudo_label(evil, data, "train", tmp_path / "out")
    assert not marker.exists()


def test_checkpoint_loading_uses_weights_only_everywhere():
    """Every torch.load in the package passes weights_only=True."""
    calls = []
    for path in (REPO / "wsss").rglob("*.py"):
        calls += [(path.name, m.group(0)) for m in
                  re.finditer(r"torch\.load\([^)]*\)", path.read_text())]
    assert calls and all("weights_only=True" in call for _, call in calls), calls


# -- split ids stay inside the dataset folder --------------------------------------------------
@pytest.mark.parametrize("bad_id", ["../../etc/passwd", "/etc/passwd", "..", ".", "a/../../b",
                                    "..\\..\\windows", "x\x00y"])
def test_split_ids_cannot_escape_the_dataset_folder(bad_id, tmp_path, capsys):
    data = tmp_path / "data"
    generate_dataset(data, n=4, seed=0, image_size=32)
    split = data / "ImageSets/Segmentation/evil.txt"
    split.write_text(f"synth_00000\n{bad_id}\n")
    message = f"{split}: id {bad_id!r} is not a plain file name"
    with pytest.raises(DatasetError, match=re.escape(message)):
        VOCDataset(data, "evil")
    with pytest.raises(DatasetError, match=re.escape(message)):  # the pipeline's index
        _pipeline_rows(data, "evil")
    code = main(["eval", "--masks", str(tmp_path), "--data", str(data), "--split", "evil"])
    assert code == 2 and message in capsys.readouterr().err


def _pipeline_rows(data: Path, split: str):
    """The pipeline's dataset index (what run_pseudo_label reads before any work)."""
    from wsss.data.reader import DatasetReader

    return DatasetReader.open(data).index(split)


# -- the MLflow server ------------------------------------------------------------------------
def _start_server(home: Path, env_file: str | None) -> list[str]:
    """Run ``cluster/mlflow_server.sh start`` with a stand-in ``mlflow`` that records its
    arguments; returns them (then stops it)."""
    bin_dir = home / "bin"
    bin_dir.mkdir(parents=True)
    fake = bin_dir / "mlflow"
    fake.write_text('#!/bin/sh\necho "$@" > "$HOME/mlflow_args"\nexec sleep 60\n')
    fake.chmod(0o755)
    if env_file is not None:
        (home / ".wsss").mkdir()
        (home / ".wsss/env.sh").write_text(env_file)
    env = {"HOME": str(home), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    script = str(REPO / "cluster/mlflow_server.sh")
    subprocess.run(["bash", script, "start"], env=env, check=True, capture_output=True)
    try:
        args_file = home / "mlflow_args"
        deadline = time.monotonic() + 300  # a hang guard, generous for a loaded machine
        while not args_file.is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        return args_file.read_text().split()
    finally:
        subprocess.run(["bash", script, "stop"], env=env, check=True, capture_output=True)


def _option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_mlflow_server_listens_on_localhost_unless_told_otherwise(tmp_path):
    args = _start_server(tmp_path / "plain", None)
    assert args[0] == "server" and _option(args, "--host") == "127.0.0.1"
    assert _option(args, "--port") == "5000"
    # on a cluster node_env.sh names the head's private address: that is "told otherwise"
    args = _start_server(tmp_path / "head", "export WSSS_HEAD_IP=10.0.0.7\n"
                                            "export MLFLOW_TRACKING_URI=http://10.0.0.7:5123\n")
    assert _option(args, "--host") == "10.0.0.7" and _option(args, "--port") == "5123"


def test_nothing_else_starts_a_server_on_every_interface():
    """The package, sweeps and cluster files never bind 0.0.0.0 or start `mlflow server`
    themselves (they only print `mlflow ui`, which binds 127.0.0.1 by default)."""
    found = []
    for folder in ("wsss", "sweeps", "benchmarks", "cluster"):
        for path in (REPO / folder).rglob("*"):
            if path.suffix in (".py", ".sh", ".yaml"):
                text = path.read_text()
                if "0.0.0.0" in text or ("mlflow server" in text and path.name !=
                                         "mlflow_server.sh"):
                    found.append(str(path.relative_to(REPO)))
    assert not found, found
