"""A native crash of the dense CRF (pydensecrf) fails one image, not the stage: the CRF runs
in a warm child process (wsss.core.native_crf); a batch stage lists the image with the reason and
writes every other mask once. Crashes are real (a NaN width segfaults pydensecrf) or injected
in the child (``CRASH_ENV``: os.abort() on one image)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from wsss.core.maps import load_maps
from wsss.cli import main
from wsss.config import CamConfig, ExperimentConfig, RefineConfig, TrackingConfig
from wsss.data.synthetic import generate_dataset
from wsss.data.dataset import VOCDataset
from wsss.methods import get_method
from wsss.core.native_crf import CRASH_ENV, CRF_WORKER, MeanFieldJob, NativeCrash, mean_field
from wsss.pipeline.maps import run_cams
from wsss.train.checkpoint import save_checkpoint

SIDE = 48  # data.max_image_side of every run here
SMALL = ["--set", f"data.max_image_side={SIDE}", "--set", "data.crop_size=32"]
CRASHED = "dense CRF crashed (SIGABRT)"


def _job(height: int = 60, width: int = 80, bilateral_sxy: float = 80.0) -> MeanFieldJob:
    rng = np.random.default_rng(0)
    probs = rng.random((3, height * width), dtype=np.float32) + 0.05
    return MeanFieldJob(rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
                        np.ascontiguousarray(-np.log(probs / probs.sum(axis=0))),
                        (3.0, 3.0), (bilateral_sxy, 13.0, 10.0), 5)


def test_a_native_crash_fails_the_call_and_the_next_call_gets_a_new_worker():
    good = _job()
    assert np.array_equal(CRF_WORKER.call(mean_field, good), mean_field(good))
    first = CRF_WORKER.pid
    with pytest.raises(NativeCrash, match=r"^dense CRF crashed \(SIGSEGV\)$"):
        CRF_WORKER.call(mean_field, _job(bilateral_sxy=float("nan")))  # segfaults pydensecrf
    assert CRF_WORKER.pid is None
    assert np.array_equal(CRF_WORKER.call(mean_field, good), mean_field(good))
    assert CRF_WORKER.pid not in (None, first)


def test_an_exception_in_the_worker_is_raised_in_the_caller():
    job = _job()
    wrong = MeanFieldJob(job.image, job.unary[:, :-1].copy(), job.gaussian, job.bilateral, 5)
    CRF_WORKER.call(mean_field, job)
    worker = CRF_WORKER.pid
    with pytest.raises(ValueError, match="Bad shape for unary energy"):
        CRF_WORKER.call(mean_field, wrong)
    assert CRF_WORKER.call(mean_field, job).shape == (3, 60 * 80)
    assert CRF_WORKER.pid == worker  # an exception is not a crash: the same child goes on


# -- batch stages: one image's CRF aborts -----------------------------------------------------
@pytest.fixture(scope="module")
def maps(tmp_path_factory) -> dict:
    """A 10-image synthetic set, a seeded untrained classifier and its maps (`wsss cam`)."""
    base = tmp_path_factory.mktemp("contained")
    root = base / "data"
    generate_dataset(root, n=10, seed=3, image_size=SIDE)
    torch.manual_seed(0)
    method = get_method("cam")(5)
    checkpoint = base / "model.pt"
    save_checkpoint(checkpoint, model=method.build_model(ExperimentConfig().model),
                    method=method, cfg=ExperimentConfig(),
                    class_names=["background", "a", "b", "c", "d", "e"], has_background=True,
                    epoch=1)
    tracking = TrackingConfig(uri=f"sqlite:///{base / 'mlflow.db'}")
    run_cams(checkpoint, root, "train", base / "cams", CamConfig(), tracking, device="cpu",
             max_image_side=SIDE)
    dataset = VOCDataset(root, "train", max_image_side=SIDE)
    crash_id = next(i for i in dataset.ids if len(load_maps(base / f"cams/{i}.npz")[1]) > 0)
    image = np.ascontiguousarray(dataset.sample(crash_id).image, dtype=np.uint8)
    return {"root": root, "cams": base / "cams", "checkpoint": checkpoint, "ids": dataset.ids,
            "crash_id": crash_id, "sha1": hashlib.sha1(image.tobytes()).hexdigest()}


@pytest.fixture
def crash_one_image(maps):
    """The CRF worker aborts on the image ``maps["crash_id"]`` (a new worker reads the env)."""
    CRF_WORKER.close()
    os.environ[CRASH_ENV] = maps["sha1"]
    yield maps["crash_id"]
    del os.environ[CRASH_ENV]
    CRF_WORKER.close()


def test_refine_lists_the_image_whose_crf_crashed_and_writes_every_other_once(
        maps, crash_one_image, tmp_path, capsys, monkeypatch):
    from wsss.storage import Location

    writes: list[str] = []
    write = Location.write_bytes
    monkeypatch.setattr(Location, "write_bytes", lambda self, data, *parts: writes.append(
        parts[-1][:-4]) or write(self, data, *parts) if parts[-1].endswith(".png") else
        write(self, data, *parts))
    out = tmp_path / "masks"
    code = main(["refine", "--cams", str(maps["cams"]), "--data", str(maps["root"]), "--out",
                 str(out), *SMALL, "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    report = json.loads((out / "report.json").read_text())
    others = sorted(set(maps["ids"]) - {crash_one_image})
    assert code == 0
    assert report["failed"] == [{"id": crash_one_image, "reason": CRASHED}]
    assert sorted(writes) == others and report["done"] == len(others)
    assert sorted(p.stem for p in out.glob("*.png") if p.stem != "samples") == others
    assert f"skipped {crash_one_image}: {CRASHED}" in capsys.readouterr().out


def test_ray_data_refine_task_lists_the_crashed_image_and_writes_the_rest(
        maps, crash_one_image, tmp_path):
    """The steps Ray Data runs for `wsss pseudo-label` and the CRF sweep's rescoring
    (decode, read saved maps, masks, write), called here without Ray."""
    from wsss.data.reader import DatasetReader
    from wsss.pipeline.steps import (Job, decode, load_saved_maps, make_masks, ref_columns,
                                     write_outputs)
    from wsss.storage import Location

    reader = DatasetReader.open(str(maps["root"]), SIDE)
    job = Job(reader, refine=RefineConfig(), out=Location.parse(str(tmp_path / "out")),
              maps=Location.parse(str(maps["cams"])))
    batch = ref_columns(reader.index("train"))
    for step in (decode, load_saved_maps, make_masks, write_outputs):
        batch = step(batch, job)
    result = batch
    statuses = dict(zip(result["id"], zip(result["status"], result["reason"])))
    others = sorted(set(maps["ids"]) - {crash_one_image})
    assert statuses.pop(crash_one_image) == ("failed", CRASHED)
    assert sorted(statuses) == others and {s for s, _ in statuses.values()} == {"done"}
    assert sorted(p.stem for p in (tmp_path / "out").glob("*.png")) == others


@pytest.mark.slow
def test_pseudo_label_pipeline_lists_the_crashed_image_and_writes_the_rest(maps, tmp_path):
    """`wsss pseudo-label` end to end in its own process (its own local Ray, whose workers get
    the crash variable): one image's CRF aborts in a Ray worker's CRF process."""
    out = tmp_path / "out"
    env = {**os.environ, CRASH_ENV: maps["sha1"],
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env.pop("RAY_ADDRESS", None)  # a Ray of its own, never the session's
    done = subprocess.run(
        [sys.executable, "-m", "wsss.cli", "pseudo-label", "--checkpoint",
         str(maps["checkpoint"]), "--data", str(maps["root"]), "--out", str(out),
         "--cam-workers", "1", *SMALL, "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
        env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    others = sorted(set(maps["ids"]) - {maps["crash_id"]})
    assert report["failed"] == [{"id": maps["crash_id"], "reason": CRASHED}]
    assert report["done"] == len(others)
    assert sorted(p.stem for p in out.glob("*.png")) == others
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
