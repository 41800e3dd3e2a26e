"""Output manifests: a folder holds the outputs of one job. The same job re-run resumes (also
after a kill); another checkpoint or other settings stop before any work with exit 2, naming the
folder and what differs; --overwrite recomputes. Checkpoints given as file:// and memory:// URIs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import fsspec
import pytest
import torch

from wsss.cli import main
from wsss.config import ExperimentConfig
from wsss.pipeline.manifest import MANIFEST_FILE, JobConflict, Manifest, claim
from wsss.storage import Location
from wsss.train.checkpoint import open_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _ids(root: Path, split: str) -> list[str]:
    return (root / f"ImageSets/Segmentation/{split}.txt").read_text().split()


def _stamps(folder: Path, suffix: str) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob(f"*{suffix}")}


def _memory_uri(path: Path, name: str) -> str:
    fsspec.filesystem("memory").pipe(f"/manifest-test/{name}", path.read_bytes())
    return f"memory:///manifest-test/{name}"


def test_claim_resumes_the_same_job_and_refuses_another(tmp_path):
    out = Location.parse(tmp_path / "out")
    job = Manifest.of("maps", {"checkpoint": "a" * 64, "cams": {"scales": (1.0,)}})
    claim(out, job, ".npz")
    (tmp_path / "out/x.npz").write_bytes(b"maps")
    claim(out, Manifest.of("maps", {"checkpoint": "a" * 64, "cams": {"scales": [1.0]}}), ".npz")
    other = Manifest.of("maps", {"checkpoint": "b" * 64, "cams": {"scales": (0.5, 1.0)}})
    with pytest.raises(JobConflict) as err:
        claim(out, other, ".npz")
    assert str(tmp_path / "out") in str(err.value)
    assert "checkpoint: aaaaaaaaaaaa -> bbbbbbbbbbbb" in str(err.value)
    assert "cams.scales: [1.0] -> [0.5, 1.0]" in str(err.value)
    assert (tmp_path / "out/x.npz").exists()
    claim(out, other, ".npz", overwrite=True)
    assert not (tmp_path / "out/x.npz").exists()
    assert json.loads((tmp_path / "out" / MANIFEST_FILE).read_text())["job"]["checkpoint"] == "b" * 64
    # outputs of an unknown job (no manifest) are not taken for this one
    (tmp_path / "old").mkdir()
    (tmp_path / "old/y.npz").write_bytes(b"maps")
    with pytest.raises(JobConflict, match="no manifest.json"):
        claim(Location.parse(tmp_path / "old"), job, ".npz")


def test_cam_into_a_folder_of_another_checkpoint(synth_root, untrained_checkpoint,
                                                 other_checkpoint, tmp_path, capsys):
    out, ids = tmp_path / "cams", _ids(synth_root, "val")
    common = ["--data", str(synth_root), "--split", "val", "--out", str(out), "--batch-size",
              "4", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    first = untrained_checkpoint.as_uri()  # file:// URI
    code, stdout, _ = _run(capsys, "cam", "--checkpoint", first, *common)
    assert code == 0 and f"maps: {len(ids)} done" in stdout
    written = _stamps(out, ".npz")
    second = _memory_uri(other_checkpoint, "other.pt")  # an fsspec URI
    code, _, err = _run(capsys, "cam", "--checkpoint", second, *common)
    assert code == 2 and str(out) in err and "checkpoint: " in err and "--overwrite" in err
    assert _stamps(out, ".npz") == written  # nothing recomputed, nothing mixed
    code, stdout, _ = _run(capsys, "cam", "--checkpoint", second, *common, "--scales", "1",
                           "0.5")
    assert code == 2  # other settings too: still refused
    code, stdout, _ = _run(capsys, "cam", "--checkpoint", second, "--overwrite", *common)
    assert code == 0 and f"maps: {len(ids)} done" in stdout and "already present" not in stdout
    report = json.loads((out / "report.json").read_text())
    sha = open_checkpoint(other_checkpoint, "classifier").sha256
    assert report["job"]["job"]["checkpoint"] == sha and report["reused"] == 0
    code, stdout, _ = _run(capsys, "cam", "--checkpoint", str(other_checkpoint), *common)
    assert code == 0 and f"0 done (0.0/s), {len(ids)} already present" in stdout


@pytest.mark.slow
def test_cam_killed_mid_run_resumes_the_same_job_only(synth_root, untrained_checkpoint,
                                                      other_checkpoint, tmp_path):
    out, ids = tmp_path / "cams", _ids(synth_root, "train")
    argv = [sys.executable, "-m", "wsss.cli", "cam", "--data", str(synth_root), "--out",
            str(out), "--batch-size", "4", "--tracking-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}", "--checkpoint"]
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "WSSS_FAULT": f"map_batch:3:{tmp_path / 'killed'}"}
    killed = subprocess.run(argv + [str(untrained_checkpoint)], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    kept = sorted(out.glob("*.npz"))
    assert len(kept) == 8  # two batches of 4 written before the third was killed
    env.pop("WSSS_FAULT")
    other = subprocess.run(argv + [str(other_checkpoint)], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=600)
    assert other.returncode == 2 and str(out) in other.stderr
    assert sorted(out.glob("*.npz")) == kept
    resumed = subprocess.run(argv + [untrained_checkpoint.as_uri()], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{len(ids) - 8} done" in resumed.stdout and "8 already present" in resumed.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["done"] + report["reused"] == len(ids) == len(list(out.glob("*.npz")))


def test_refine_with_other_settings_or_maps(synth_root, untrained_checkpoint,
                                             other_checkpoint, tmp_path, capsys):
    tracking = ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    for name, ckpt in (("cams", untrained_checkpoint), ("cams2", other_checkpoint)):
        assert main(["cam", "--checkpoint", str(ckpt), "--data", str(synth_root), "--split",
                     "val", "--out", str(tmp_path / name), *tracking]) == 0
    out = tmp_path / "masks"
    refine = ["refine", "--data", str(synth_root), "--split", "val", "--out", str(out),
              "--no-crf", *tracking]
    assert _run(capsys, *refine, "--cams", str(tmp_path / "cams"))[0] == 0
    code, _, err = _run(capsys, *refine, "--cams", str(tmp_path / "cams"), "--bg-threshold",
                        "0.5")
    assert code == 2 and str(out) in err and "refine.bg_threshold: 0.25 -> 0.5" in err
    code, _, err = _run(capsys, *refine, "--cams", str(tmp_path / "cams2"))
    assert code == 2 and "maps.checkpoint" in err  # the maps of another classifier
    code, stdout, _ = _run(capsys, *refine, "--cams", str(tmp_path / "cams"), "--bg-threshold",
                           "0.5", "--overwrite")
    assert code == 0 and "already present" not in stdout
    job = json.loads((out / "report.json").read_text())["job"]["job"]
    assert job["refine.bg_threshold"] == 0.5
    assert job["maps.checkpoint"] == open_checkpoint(untrained_checkpoint, "classifier").sha256


def _segmenter(path: Path, seed: int) -> Path:
    from wsss.models.segmenter import build_segmenter
    from wsss.train.segmenter import save_segmenter

    torch.manual_seed(seed)
    return save_segmenter(path, model=build_segmenter("deeplabv3_resnet18", 6),
                          cfg=ExperimentConfig(), class_names=[f"c{i}" for i in range(6)],
                          has_background=True, history=[])


def test_predict_into_a_folder_of_another_segmenter(synth_root, tmp_path, capsys):
    first, second = _segmenter(tmp_path / "a.pt", 0), _segmenter(tmp_path / "b.pt", 1)
    out, ids = tmp_path / "pred", _ids(synth_root, "val")
    common = ["--data", str(synth_root), "--out", str(out), "--tracking-uri",
              f"sqlite:///{tmp_path / 'mlflow.db'}"]
    code, stdout, _ = _run(capsys, "predict", "--checkpoint", _memory_uri(first, "seg.pt"),
                           *common)
    assert code == 0 and f"predicted: {len(ids)} done" in stdout
    code, _, err = _run(capsys, "predict", "--checkpoint", second.as_uri(), *common)
    assert code == 2 and str(out) in err and "checkpoint: " in err
    code, _, err = _run(capsys, "predict", "--checkpoint", str(first), "--crf", *common)
    assert code == 2 and "crf: " in err  # the CRF changes every mask
    code, stdout, _ = _run(capsys, "predict", "--checkpoint", str(first), *common)
    assert code == 0 and f"{len(ids)} already present" in stdout
