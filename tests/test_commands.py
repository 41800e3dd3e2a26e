"""Printed commands run as printed: pasted into a fresh shell whose PATH does not hold the
environment's bin/ (no .venv activated)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from wsss.commands import command_line
from wsss.tune.report import next_steps
from wsss.tune.view import runs_view

ROOT = Path(__file__).resolve().parents[1]


def _fresh_shell_env() -> dict[str, str]:
    """The environment of a new terminal: PATH without the running environment's bin/."""
    bin_dir = str(Path(sys.executable).parent)
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != bin_dir]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PATH")}
    return {**env, "PATH": os.pathsep.join(path or ["/usr/bin", "/bin"]),
            "PYTHONPATH": str(ROOT)}  # this checkout, whichever environment installed wsss


def test_a_command_names_the_environments_script_and_quotes_what_needs_it(tmp_path,
                                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = command_line("wsss", "cam", "--out", "my cams", "--data", "a'b")
    argv = shlex.split(line)
    assert argv[1:] == ["cam", "--out", "my cams", "--data", "a'b"]
    assert Path(argv[0]).is_absolute() or argv[0].startswith(".")
    assert Path(argv[0]).name in ("wsss", Path(sys.executable).name)


@pytest.mark.slow
def test_the_sweeps_printed_cam_command_runs_pasted_into_a_fresh_shell(
        synth_root, untrained_checkpoint, tmp_path):
    data = tmp_path / "my data"  # a path that needs quoting
    data.symlink_to(synth_root, target_is_directory=True)
    lines = next_steps(str(untrained_checkpoint), str(data), "sweep-x").splitlines()
    cam = next(line.strip() for line in lines if " cam " in line)
    env = _fresh_shell_env()
    done = subprocess.run(cam + f" --tracking-uri sqlite:///{tmp_path / 'mlflow.db'}",
                          shell=True, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "maps: " in done.stdout
    assert len(list((tmp_path / "runs/sweep-x/cams").glob("*.npz"))) == len(
        (synth_root / "ImageSets/Segmentation/train.txt").read_text().split())


def test_the_printed_mlflow_command_runs_in_a_fresh_shell(tmp_path):
    ui = runs_view(f"sqlite:///{tmp_path / 'mlflow.db'}", "1").splitlines()[0].strip()
    assert " ui --backend-store-uri " in ui
    executable = ui.split(" ui ")[0]
    done = subprocess.run(f"{executable} --version", shell=True, env=_fresh_shell_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "version" in done.stdout.lower(), done.stderr[-2000:]
