"""Segmenter on Ray Train: a 2-worker DeepLabV3 (ResNet-18) run learns from pseudo-masks,
its checkpoint loads safely, MLflow holds per-epoch val mIoU, and predict writes every mask."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch

from wsss.config import load_config
from wsss.data.synthetic import generate_dataset
from wsss.data.voc import IGNORE_INDEX, MASK_DIR, VOCDataset
from wsss.metrics import ConfusionMatrix
from wsss.models.segmenter import build_segmenter
from wsss.stages_segmentation import run_eval_masks, run_predict, run_train_segmenter
from wsss.train.segmenter import load_segmenter

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def seg_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg") / "synth"
    generate_dataset(root, n=16, seed=3, image_size=64, val_fraction=0.25)
    return root


def _cfg(root, uri, **extra):
    overrides = [f"data.root={root}", "segmenter.epochs=4", "segmenter.batch_size=3",
                 "segmenter.crop_size=64", "segmenter.lr=0.02", "segmenter.num_workers=2",
                 f"tracking.uri={uri}", "tracking.experiment=test-seg"]
    return load_config(None, overrides + [f"{k}={v}" for k, v in extra.items()])


def _all_background_miou(root) -> float:
    confusion = ConfusionMatrix(6)
    for sample in VOCDataset(root, "val"):
        confusion.update(np.zeros(sample["mask"].shape, dtype=np.int64), sample["mask"].numpy())
    return confusion.compute().miou


def test_models_give_logits_at_input_size() -> None:
    for arch in ("deeplabv3_resnet18", "deeplabv3_resnet50"):
        model = build_segmenter(arch, 5).eval()
        with torch.no_grad():
            assert model(torch.zeros(1, 3, 45, 61)).shape == (1, 5, 45, 61)
    with pytest.raises(ValueError, match="unknown segmenter"):
        build_segmenter("unet", 5)


def test_two_workers_learn_from_pseudo_masks(ray_session, seg_set, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_train_segmenter(_cfg(seg_set, uri), seg_set / MASK_DIR, tmp_path / "runs",
                                 run_name="seg")
    history = [h["val_miou"] for h in result.history]
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert max(history[1:]) > history[0] or history[-1] > _all_background_miou(seg_set), history
    model, state = load_segmenter(result.checkpoint)
    assert state["epoch"] == 4 and state["arch"] == "deeplabv3_resnet18" and not model.training
    run = mlflow.MlflowClient(uri).search_runs(
        [mlflow.get_experiment_by_name("test-seg").experiment_id])[0]
    steps = mlflow.MlflowClient(uri).get_metric_history(run.info.run_id, "val_miou")
    assert [m.step for m in steps] == [1, 2, 3, 4]

    out = tmp_path / "pred"
    report = run_predict(result.checkpoint, seg_set, "val", out,
                         load_config(None, [f"tracking.uri={uri}"]).tracking)
    ids = VOCDataset(seg_set, "val").ids
    assert report.done == len(ids) and not report.failed
    assert sorted(p.stem for p in out.glob("*.png") if p.stem != "samples") == sorted(ids)
    scores, scored = run_eval_masks(out, seg_set, "val",
                                    load_config(None, [f"tracking.uri={uri}"]).tracking)
    assert scored.done == len(ids) and abs(scores.miou - report.extra["miou"]) < 1e-9
    again = run_predict(result.checkpoint, seg_set, "val", out,
                        load_config(None, [f"tracking.uri={uri}"]).tracking)
    assert again.done == 0 and again.reused == len(ids)


def test_sec_epoch_trains_on_seeds_and_missing_masks_are_listed(seg_set, tmp_path):
    """One SEC epoch in-process (the Ray plumbing is the CE run's): finite losses, moved weights."""
    import functools

    from torch.utils.data import DataLoader

    from wsss.train.segmenter import (PseudoMaskDataset, _train_one_epoch, collate,
                                      joint_train_transform)
    from wsss.viz import save_mask_png

    seeds = tmp_path / "seeds"
    dataset = VOCDataset(seg_set, "train")
    for index, sample_id in enumerate(dataset.ids[1:], start=1):  # the first id has no seeds
        mask = dataset[index]["mask"].numpy().astype(np.uint8)
        mask[::2] = IGNORE_INDEX  # unseeded rows
        save_mask_png(seeds / f"{sample_id}.png", mask)
    scan = PseudoMaskDataset(seg_set, "train", pseudo_dir=seeds).scan()
    good, bad = scan.ids, scan.skipped
    assert good == dataset.ids[1:] and [i for i, _ in bad] == dataset.ids[:1]
    assert "no pseudo-mask" in bad[0][1]

    torch.manual_seed(0)
    cfg = _cfg(seg_set, "sqlite://", **{"segmenter.mode": "sec", "segmenter.sec_downscale": 8})
    train = PseudoMaskDataset(seg_set, ids=good, pseudo_dir=seeds,
                              transform=joint_train_transform(64))
    loader = DataLoader(train, batch_size=4, shuffle=True,
                        collate_fn=functools.partial(collate, num_classes=6, has_background=True))
    model = build_segmenter("deeplabv3_resnet18", 6)
    before = [p.detach().clone() for p in model.head.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = _train_one_epoch(model, loader, optimizer, cfg, has_background=True)
    assert {"loss", "loss_seed", "loss_expand", "loss_constrain"} == set(losses)
    assert all(np.isfinite(v) and v >= 0 for v in losses.values()), losses
    assert any(not torch.equal(a, b) for a, b in zip(before, model.head.parameters()))
