"""The map and mask steps give the same masks and scores on both executors as `wsss cam`
followed by `wsss refine` (two steps with map files between them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.config import CamConfig, RefineConfig, TrackingConfig
from wsss.core.scoring import Scorer
from wsss.data.reader import DatasetReader
from wsss.pipeline.executors import LocalExecutor, RayDataExecutor, WorkerPlan
from wsss.pipeline.maps import run_cams
from wsss.pipeline.masks import run_refine, score_masks
from wsss.pipeline.report import StageReport, collect
from wsss.pipeline.steps import Job, Step, make_masks, map_steps, write_outputs
from wsss.storage import Location
from wsss.train.checkpoint import load_checkpoint_state

CAM = CamConfig(kind="gradcam", scales=(1.0, 0.5), flip=True, batch_size=4)
EXECUTORS = {"local": LocalExecutor(CAM.batch_size),
             "ray-data": RayDataExecutor(CAM.batch_size, WorkerPlan(1, 1.0, 0.0, 1))}


@pytest.fixture(scope="module")
def two_commands(tmp_path_factory, synth_root, untrained_checkpoint) -> tuple[Path, Scorer]:
    """`wsss cam` then `wsss refine` (CRF on): their masks and the masks' score counts."""
    base = tmp_path_factory.mktemp("two_commands")
    tracking = TrackingConfig(uri=f"sqlite:///{base / 'mlflow.db'}")
    run_cams(untrained_checkpoint, synth_root, "train", base / "cams", CAM, tracking, "cpu")
    run_refine(base / "cams", synth_root, "train", base / "masks", RefineConfig(), tracking)
    reader = DatasetReader.open(synth_root)
    scorer, _ = score_masks(reader, reader.index("train"), Location.parse(base / "masks"))
    return base / "masks", scorer


def _masks(folder: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))
            if p.stem != "samples"}


@pytest.mark.slow
@pytest.mark.parametrize("executor", sorted(EXECUTORS))
def test_one_stream_of_steps_equals_the_two_commands(executor, ray_session, synth_root,
                                                     untrained_checkpoint, two_commands,
                                                     tmp_path):
    """decode -> maps -> masks -> write + score as one stream (what `wsss pseudo-label`
    runs) on each executor: the same masks as the two commands, and the same score counts."""
    ref_masks, ref_scorer = two_commands
    reader = DatasetReader.open(synth_root)
    state = load_checkpoint_state(untrained_checkpoint)
    job = Job(reader, state["method"], dict(state["method_params"]), CAM, RefineConfig(),
              out=Location.parse(tmp_path), maps=Location.parse(tmp_path / "maps"),
              evaluate=True)
    steps = [*map_steps(job, state, untrained_checkpoint), Step(make_masks, {"job": job}),
             Step(write_outputs, {"job": job})]
    report, scorer = StageReport(), Scorer(reader.info)
    collect(EXECUTORS[executor].run(reader.index("train"), steps), report, scorer)
    ids = reader.split_ids("train")
    assert report.failed == [] and report.done == len(ids)
    expected, got = _masks(ref_masks), _masks(tmp_path)
    assert sorted(got) == sorted(expected) == sorted(ids)
    for sample_id in ids:
        assert np.array_equal(got[sample_id], expected[sample_id]), sample_id
    assert np.array_equal(scorer.counts(), ref_scorer.counts())
    assert scorer.images == len(ids) and 0 < scorer.scores().miou <= 1
    assert sorted(p.stem for p in (tmp_path / "maps").glob("*.npz")) == sorted(ids)
