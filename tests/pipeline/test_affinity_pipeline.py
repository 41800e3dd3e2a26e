"""The random walk as a pipeline step: `wsss train-affinity` trains a network from seeds of saved
maps; `wsss refine --affinity` (local loop) and the Ray Data stream of `wsss pseudo-label` give
the same masks, and the walk changes them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsss.cli import main as wsss
from wsss.config import CamConfig, ExperimentConfig, RefineConfig, TrackingConfig
from wsss.data.palette import IGNORE_INDEX
from wsss.data.reader import DatasetReader
from wsss.models.affinity import build_affinity_net
from wsss.pipeline.executors import RayDataExecutor, WorkerPlan
from wsss.pipeline.maps import run_cams
from wsss.pipeline.masks import run_refine
from wsss.pipeline.report import StageReport, collect
from wsss.pipeline.steps import Job, Step, make_masks, map_steps, write_outputs
from wsss.storage import Location
from wsss.train.affinity import load_affinity, save_affinity
from wsss.train.checkpoint import CheckpointError, load_checkpoint_state, open_checkpoint

CAM = CamConfig(batch_size=4)


@pytest.fixture(scope="module")
def affinity_checkpoint(tmp_path_factory) -> Path:
    """A seeded, untrained affinity network checkpoint (radius 3)."""
    torch.manual_seed(0)
    cfg = ExperimentConfig()
    cfg = dataclasses.replace(cfg, affinity=dataclasses.replace(cfg.affinity, radius=3))
    path = tmp_path_factory.mktemp("affinity") / "model.pt"
    save_affinity(path, model=build_affinity_net("resnet18"), cfg=cfg, backbone="resnet18",
                  has_background=True, history=[{"epoch": 1, "loss": 1.0}])
    return path


@pytest.fixture(scope="module")
def saved_maps(tmp_path_factory, synth_root, untrained_checkpoint) -> Path:
    base = tmp_path_factory.mktemp("maps")
    run_cams(untrained_checkpoint, synth_root, "train", base / "cams", CAM,
             TrackingConfig(uri=f"sqlite:///{base / 'mlflow.db'}"), "cpu")
    return base / "cams"


def _masks(folder: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))
            if p.stem != "samples"}


def test_a_boundary_network_comes_back_as_one(tmp_path):
    torch.manual_seed(0)
    cfg = ExperimentConfig()
    cfg = dataclasses.replace(cfg, affinity=dataclasses.replace(cfg.affinity, head="boundary"))
    net = build_affinity_net("resnet18", head="boundary").eval()
    save_affinity(tmp_path / "model.pt", model=net, cfg=cfg, backbone="resnet18",
                  has_background=False, history=[{"epoch": 1, "loss": 1.0}])
    model, state = load_affinity(tmp_path / "model.pt")
    images = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        boundary = model(images)
        assert torch.equal(boundary, net(images))
    assert model.head == state["head"] == "boundary" and boundary.shape == (1, 1, 5, 7)
    assert ((boundary > 0) & (boundary < 1)).all()


def test_checkpoint_round_trip_and_refusal(affinity_checkpoint, untrained_checkpoint):
    model, state = load_affinity(affinity_checkpoint)
    assert state["radius"] == 3 and not model.training
    with pytest.raises(CheckpointError, match="not a wsss affinity network checkpoint"):
        load_affinity(untrained_checkpoint)


@pytest.mark.slow
def test_refine_with_the_walk_equals_the_ray_data_stream(ray_session, synth_root, saved_maps,
                                                         untrained_checkpoint,
                                                         affinity_checkpoint, tmp_path):
    """`wsss refine --affinity` (local, saved maps) and decode -> maps + walk -> masks on Ray
    Data (`wsss pseudo-label`) write identical masks; without the walk the masks differ. The
    network is read by URI: fsspec's memory:// in this process, file:// in the Ray actors."""
    import json

    import fsspec

    tracking = TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    walk = RefineConfig(crf=False, affinity=affinity_checkpoint.as_uri(), rw_beta=4.0,
                        rw_iterations=8)
    in_memory = f"memory:///walk-test/{tmp_path.name}/model.pt"
    fsspec.filesystem("memory").pipe(in_memory[len("memory://"):],
                                     affinity_checkpoint.read_bytes())
    run_refine(saved_maps, synth_root, "train", tmp_path / "local",
               dataclasses.replace(walk, affinity=in_memory), tracking)
    job_keys = json.loads((tmp_path / "local/manifest.json").read_text())["job"]
    assert job_keys["refine.affinity"] == open_checkpoint(affinity_checkpoint, "affinity").sha256
    run_refine(saved_maps, synth_root, "train", tmp_path / "plain",
               dataclasses.replace(walk, affinity=None), tracking)

    reader = DatasetReader.open(synth_root)
    state = load_checkpoint_state(untrained_checkpoint)
    job = Job(reader, state["method"], dict(state["method_params"]), CAM, walk,
              out=Location.parse(tmp_path / "stream"), evaluate=True)
    steps = [*map_steps(job, state, untrained_checkpoint), Step(make_masks, {"job": job}),
             Step(write_outputs, {"job": job})]
    report = StageReport()
    collect(RayDataExecutor(4, WorkerPlan(1, 1.0, 0.0, 1)).run(reader.index("train"), steps),
            report)
    ids = reader.split_ids("train")
    assert report.failed == [] and report.done == len(ids)
    local, stream, plain = (_masks(tmp_path / name) for name in ("local", "stream", "plain"))
    assert sorted(local) == sorted(stream) == sorted(ids)
    for sample_id in ids:
        assert np.array_equal(local[sample_id], stream[sample_id]), sample_id
    changed = sum(not np.array_equal(local[i], plain[i]) for i in ids)
    assert changed > 0  # the walk ran


def test_refine_rejects_a_bad_walk_setting(synth_root, saved_maps, affinity_checkpoint,
                                           tmp_path, capsys):
    code = wsss(["refine", "--cams", str(saved_maps), "--data", str(synth_root), "--out",
                 str(tmp_path / "m"), "--affinity", str(affinity_checkpoint), "--set",
                 "refine.rw_beta=0", "--tracking-uri", f"sqlite:///{tmp_path / 'x.db'}"])
    assert code == 2
    assert "refine.rw_beta=0" in capsys.readouterr().err


@pytest.mark.slow
def test_train_affinity_command(ray_session, synth_root, saved_maps, untrained_checkpoint,
                                tmp_path, capsys):
    """Seeds written from the maps (labelled where the maps are confident, 255 elsewhere),
    one Ray Train epoch of IRNet's boundary head, a checkpoint that the refine step then uses
    (the feature head trains in the sweeps' tests)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = wsss(["train-affinity", "--cams", str(saved_maps), "--checkpoint",
                 str(untrained_checkpoint), "--data", str(synth_root), "--out",
                 str(tmp_path / "aff"), "--run-name", "aff", "--epochs", "1", "--workers", "1",
                 "--crop-size", "48", "--batch-size", "4", "--tracking-uri", uri,
                 "--set", "affinity.head=boundary"])
    assert code == 0, capsys.readouterr().err
    checkpoint = tmp_path / "aff" / "aff" / "model.pt"
    model, state = load_affinity(checkpoint)
    assert state["epoch"] == 1 and np.isfinite(state["history"][-1]["loss"])
    assert model.head == "boundary"
    seeds = _masks(tmp_path / "aff" / "aff" / "seeds")
    assert sorted(seeds) == DatasetReader.open(synth_root).split_ids("train")
    values = np.unique(np.concatenate([s.ravel() for s in seeds.values()]))
    assert IGNORE_INDEX in values and len(values) > 2  # seeds and ignored pixels
    out = capsys.readouterr().out
    assert "(boundary head)" in out
    assert f"--data {synth_root} --affinity {checkpoint}" in out  # the next command, whole
    code = wsss(["refine", "--cams", str(saved_maps), "--data", str(synth_root), "--out",
                 str(tmp_path / "masks"), "--affinity", str(checkpoint), "--no-crf",
                 "--tracking-uri", uri])
    assert code == 0 and len(_masks(tmp_path / "masks")) == len(seeds)


def test_the_walk_objective_during_training_equals_refine_with_the_walk(
        synth_root, saved_maps, affinity_checkpoint, tmp_path):
    """What an affinity sweep trial reports after each epoch (``walk_mask_scores`` on the
    network in training) is the mIoU `wsss refine --affinity` gives the same maps."""
    from wsss.data.dataset import VOCDataset
    from wsss.train.mask_eval import walk_mask_scores

    walk = RefineConfig(crf=False, affinity=str(affinity_checkpoint), rw_beta=4.0,
                        rw_iterations=8, bg_threshold=0.3)
    ids = sorted(p.stem for p in saved_maps.glob("*.npz"))
    report = run_refine(saved_maps, synth_root, "train", tmp_path / "walked", walk,
                        TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}"))
    model, state = load_affinity(affinity_checkpoint)
    model.train()  # as in training: scoring switches to eval mode and back
    scorer = walk_mask_scores(model, VOCDataset(synth_root, ids=ids), saved_maps, ids, walk,
                              int(state["radius"]))
    assert model.training
    assert scorer.images == len(ids) == report.done
    assert scorer.scores().miou == pytest.approx(report.extra["miou"], abs=1e-9)
    plain = walk_mask_scores(model, VOCDataset(synth_root, ids=ids), saved_maps, ids,
                             dataclasses.replace(walk, rw_iterations=1, rw_beta=1.0), 3)
    assert plain.scores().miou != pytest.approx(scorer.scores().miou)  # the walk matters
