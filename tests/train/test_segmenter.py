"""Segmenter on Ray Train: a 2-worker DeepLabV3 (ResNet-18) run learns from pseudo-masks,
its checkpoint loads safely, MLflow holds per-epoch val mIoU, and predict writes every mask."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch

from wsss.config import load_config
from wsss.data.synthetic import generate_dataset
from wsss.data.palette import IGNORE_INDEX
from wsss.data.voc import MASK_DIR
from wsss.data.dataset import VOCDataset
from wsss.core.scoring import ConfusionMatrix
from wsss.models.segmenter import build_segmenter
from wsss.pipeline.masks import run_eval_masks
from wsss.pipeline.predict import run_predict
from wsss.pipeline.train_seg import run_train_segmenter
from wsss.train.segmenter import load_segmenter

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def seg_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg") / "synth"
    generate_dataset(root, n=16, seed=3, image_size=64, val_fraction=0.25)
    return root


def _cfg(root, uri, **extra):
    overrides = [f"data.root={root}", "segmenter.epochs=4", "segmenter.batch_size=3",
                 "segmenter.crop_size=64", "segmenter.lr=0.02", "segmenter.optimizer=sgd",
                 "segmenter.schedule=poly", "segmenter.weight_decay=1e-4",
                 "segmenter.num_workers=2",
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
    losses = [h["loss"] for h in result.history]  # 4 val images: the mIoU alone is noisy
    assert (losses[-1] < losses[0] or max(history[1:]) > history[0]
            or history[-1] > _all_background_miou(seg_set)), (losses, history)
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
    # the val mIoU reported while training is the saved model's (every worker validated with
    # rank 0's BatchNorm statistics, the ones the checkpoint holds)
    assert report.extra["miou"] == pytest.approx(history[-1], abs=1e-9)
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

    from wsss.train.optim import optimizer_and_schedule
    from wsss.train.segmenter import (PseudoMaskDataset, _train_one_epoch, collate,
                                      joint_train_transform)
    from wsss.data.palette import save_mask_png

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
    optimizer, scheduler = optimizer_and_schedule(model, cfg.segmenter, len(loader))
    losses = _train_one_epoch(model, loader, optimizer, scheduler, cfg, has_background=True)
    assert {"loss", "loss_seed", "loss_expand", "loss_constrain", "optimizer_steps"} == set(losses)
    assert losses["optimizer_steps"] == 3  # 11 images in batches of 4
    assert all(np.isfinite(v) and v >= 0 for v in losses.values()), losses
    assert any(not torch.equal(a, b) for a, b in zip(before, model.head.parameters()))


def test_single_image_batches_use_running_stats_where_batch_norm_sees_one_value():
    """ASPP's image-pooling branch reduces a one-image batch to one value per channel, where
    batch norm cannot train; inside the block that layer uses its running statistics and every
    other layer still trains on batch statistics."""
    from wsss.models.segmenter import single_value_batch_norm_in_eval

    torch.manual_seed(0)
    model = build_segmenter("deeplabv3_resnet18", 6).train()
    image = torch.randn(1, 3, 64, 64)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        model(image)
    pooling_bn = model.head[0].convs[-1][2]  # ASPP: [..., ASPPPooling(pool, conv, bn, relu)]
    trunk_bn = next(m for m in model.trunk.modules() if isinstance(m, torch.nn.BatchNorm2d))
    pooled, trunk = pooling_bn.running_mean.clone(), trunk_bn.running_mean.clone()
    with single_value_batch_norm_in_eval(model):
        logits = model(image)
    assert logits.shape == (1, 6, 64, 64) and torch.isfinite(logits).all()
    assert torch.equal(pooling_bn.running_mean, pooled)  # eval mode: statistics untouched
    assert not torch.equal(trunk_bn.running_mean, trunk)  # trained on the batch
    assert all(m.training for m in model.modules())
    with single_value_batch_norm_in_eval(model):  # two images: every layer trains as usual
        model(torch.randn(2, 3, 64, 64))
    assert not torch.equal(pooling_bn.running_mean, pooled)


def test_batch_size_one_trains(ray_session, seg_set, tmp_path):
    """``train-seg --batch-size 1`` used to skip every batch and exit 0 with loss 0.0."""
    from wsss.cli import main
    from wsss.train.checkpoint import read_state

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(["train-seg", "--pseudo-masks", str(seg_set / MASK_DIR), "--data", str(seg_set),
                 "--batch-size", "1", "--epochs", "1", "--crop-size", "64", "--workers", "2",
                 "--out", str(tmp_path / "runs"), "--run-name", "one", "--tracking-uri", uri])
    assert code == 0
    state = read_state(tmp_path / "runs" / "one" / "model.pt", "wsss.segmenter/1", "segmenter")
    (epoch,) = state["history"]
    assert epoch["optimizer_steps"] == 12  # 12 training images, one step each
    assert epoch["loss"] > 0.0
    init = build_segmenter("deeplabv3_resnet18", 6).state_dict()
    assert not torch.equal(state["state_dict"]["head.4.weight"], init["head.4.weight"])


def test_a_run_without_an_optimizer_step_is_an_error(ray_session, seg_set, tmp_path, capsys):
    """Pseudo-masks with no labelled pixel (all 255) give nothing to learn: the command fails,
    writes no model and closes its MLflow run as FAILED, after one epoch."""
    from wsss.cli import main
    from wsss.data.palette import save_mask_png

    ignored = tmp_path / "ignored"
    for sample_id in VOCDataset(seg_set, "train").ids:
        save_mask_png(ignored / f"{sample_id}.png", np.full((64, 64), IGNORE_INDEX, np.uint8))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(["train-seg", "--pseudo-masks", str(ignored), "--data", str(seg_set),
                 "--epochs", "3", "--crop-size", "64", "--workers", "1",
                 "--out", str(tmp_path / "runs"), "--run-name", "nothing", "--tracking-uri", uri])
    assert code == 2
    assert "segmenter run 'nothing' took no optimizer step in epoch 1" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "nothing" / "model.pt").exists()
    (run,) = mlflow.MlflowClient(uri).search_runs(
        [mlflow.get_experiment_by_name("wsss").experiment_id])
    assert run.info.status == "FAILED"


class _BlurryBoundary(torch.nn.Module):
    """A stand-in segmenter: two classes whose logits cross at column ``boundary`` of the
    input, whatever the image (a prediction too smooth to find the edge itself)."""

    def __init__(self, boundary: int, softness: float = 6.0) -> None:
        super().__init__()
        self.boundary, self.softness = boundary, softness

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        columns = torch.arange(x.shape[-1], dtype=x.dtype) + 0.5
        ramp = ((columns - self.boundary) / self.softness).expand(x.shape[0], x.shape[-2], -1)
        return torch.stack([-ramp, ramp], dim=1)


@pytest.mark.parametrize("unary", ["scores", "labels"])
def test_predict_crf_moves_the_boundary_to_the_image_edge(unary):
    """``predict --crf``: the arg-max splits the image where the segmenter's scores cross
    (column 20); the dense CRF moves the split to the colour edge of the image (column 28)."""
    from wsss.config import RefineConfig
    from wsss.train.segmenter import predict_mask

    image = np.zeros((32, 48, 3), dtype=np.uint8)
    image[:, 28:] = 230
    model = _BlurryBoundary(boundary=20).eval()
    with torch.no_grad():
        plain = predict_mask(model, image)
        crf = RefineConfig(crf_unary=unary, crf_bilateral_compat=10.0, crf_iterations=10)
        refined = predict_mask(model, image, crf=crf)
    assert (plain[:, :20] == 0).all() and (plain[:, 20:] == 1).all()
    assert (refined[:, :28] == 0).all() and (refined[:, 28:] == 1).all(), refined[0]
    with torch.no_grad():  # the trained scale: same split at half resolution, upsampled
        half = predict_mask(_BlurryBoundary(boundary=10).eval(), image, image_scale=0.5)
    assert (half[:, :20] == 0).all() and (half[:, 20:] == 1).all()
