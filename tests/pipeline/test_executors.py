"""The map and mask steps give the same masks and scores on both executors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsss.config import CamConfig, ExperimentConfig, RefineConfig
from wsss.core.scoring import Scorer
from wsss.data.reader import DatasetReader
from wsss.methods import get_method
from wsss.pipeline.executors import LocalExecutor, RayDataExecutor, Step, WorkerPlan
from wsss.pipeline.maps import map_steps
from wsss.pipeline.report import StageReport, collect
from wsss.pipeline.steps import Job, make_masks, write_outputs
from wsss.storage import Location
from wsss.train.checkpoint import load_checkpoint_state, save_checkpoint

CAM = CamConfig(kind="gradcam", scales=(1.0, 0.5), flip=True, batch_size=4)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A seeded, untrained ResNet-18 CAM classifier for the synthetic classes."""
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    torch.manual_seed(0)
    method = get_method("cam")(5)
    save_checkpoint(path, model=method.build_model(ExperimentConfig().model), method=method,
                    cfg=ExperimentConfig(), class_names=["background", "a", "b", "c", "d", "e"],
                    has_background=True, epoch=1)
    return path


def _run(executor_name: str, root: Path, checkpoint: Path, out: Path) -> tuple[StageReport,
                                                                                Scorer]:
    """The pseudo-labelling steps (decode, maps, masks with the CRF, write and score) of
    every training image on one executor."""
    reader = DatasetReader.open(root)
    state = load_checkpoint_state(checkpoint)
    job = Job(reader, state["method"], dict(state["method_params"]), CAM, RefineConfig(),
              out=Location.parse(out), maps=Location.parse(out / "maps"), evaluate=True)
    steps = [*map_steps(job, state, checkpoint), Step(make_masks, {"job": job}),
             Step(write_outputs, {"job": job})]
    executor = {"local": LocalExecutor(CAM.batch_size),
                "ray-data": RayDataExecutor(CAM.batch_size, WorkerPlan(1, 1.0, 0.0, 1))}
    report, scorer = StageReport(), Scorer(reader.info)
    collect(executor[executor_name].run(reader.index("train"), steps), report, scorer)
    return report, scorer


@pytest.fixture(scope="module")
def reference(tmp_path_factory, synth_root, checkpoint):
    """The local executor's masks, maps and score counts."""
    out = tmp_path_factory.mktemp("local")
    report, scorer = _run("local", synth_root, checkpoint, out)
    return out, report, scorer


def _masks(folder: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


@pytest.mark.slow
def test_both_executors_write_the_same_masks_and_scores(ray_session, synth_root, checkpoint,
                                                        reference, tmp_path):
    ref_out, ref_report, ref_scorer = reference
    report, scorer = _run("ray-data", synth_root, checkpoint, tmp_path)
    ids = DatasetReader.open(synth_root).split_ids("train")
    assert report.failed == ref_report.failed == [] and report.done == ref_report.done == len(ids)
    expected, got = _masks(ref_out), _masks(tmp_path)
    assert sorted(got) == sorted(expected) == sorted(ids)
    for sample_id in ids:
        assert np.array_equal(got[sample_id], expected[sample_id]), sample_id
    assert np.array_equal(scorer.counts(), ref_scorer.counts())
    assert scorer.images == len(ids) and 0 < scorer.scores().miou <= 1
    assert sorted(p.stem for p in (tmp_path / "maps").glob("*.npz")) == sorted(ids)
