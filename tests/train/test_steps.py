"""The per-step functions, without Ray: bf16 training learns the synthetic set on CPU, and the
Ray Train loops' epochs are exactly these steps."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from wsss.config import load_config
from wsss.core.classification import mean_average_precision
from wsss.core.precision import grad_scaler
from wsss.data.dataset import VOCDataset
from wsss.data.transforms import eval_transform, train_transform
from wsss.methods import get_method
from wsss.train import classifier as ray_classifier
from wsss.train import segmenter as ray_segmenter
from wsss.train import steps
from wsss.train.optim import optimizer_and_schedule


def _loader(root, transform, shuffle: bool, generator=None) -> DataLoader:
    dataset = VOCDataset(root, "train", transform=transform)
    return DataLoader(dataset, batch_size=8, shuffle=shuffle, collate_fn=ray_classifier.collate,
                      generator=generator)


def _train_map(model, root) -> tuple[float, float]:
    """mAP on the training split and the mean mAP of random scores on the same labels."""
    model.eval()
    scores, targets = [], []
    with torch.no_grad():
        for batch in _loader(root, eval_transform(), shuffle=False):
            scores.append(torch.sigmoid(model(batch["image"])))
            targets.append(batch["labels"])
    scores, targets = torch.cat(scores).numpy(), torch.cat(targets).numpy()
    rng = np.random.default_rng(0)
    chance = np.mean([mean_average_precision(rng.random(targets.shape), targets)
                      for _ in range(50)])
    return mean_average_precision(scores, targets), chance


def test_bf16_training_on_cpu_learns_the_synthetic_set(train_set):
    torch.manual_seed(0)
    method = get_method("cam")(5)
    # the recipe of the Ray Train test (tests/train/test_classifier.py)
    cfg = load_config(None, ["train.precision=bf16", "train.epochs=6", "train.lr=0.05",
                             "train.optimizer=sgd", "train.schedule=cosine",
                             "train.weight_decay=1e-4"])
    model = method.build_model(cfg.model)
    scaler = grad_scaler("cpu", cfg.train.precision)
    loader = _loader(train_set, train_transform(64), shuffle=True,
                     generator=torch.Generator().manual_seed(0))
    optimizer, scheduler = optimizer_and_schedule(model, cfg.train, len(loader))
    epoch_losses = []
    for epoch in range(cfg.train.epochs):
        model.train()
        losses = []
        for batch in loader:
            losses.append(steps.classifier_step(method, model, batch, optimizer, scaler, "cpu",
                                                cfg.train.precision, epoch=epoch)[0])
            scheduler.step()
        epoch_losses.append(float(np.mean(losses)))
    assert all(np.isfinite(epoch_losses)) and epoch_losses[-1] < 0.8 * epoch_losses[0], epoch_losses
    learned, chance = _train_map(model, train_set)
    assert learned > chance + 0.15, (learned, chance)


def _spy(monkeypatch, module, name):
    """Record every call of ``module.name`` (and its result) while still calling it."""
    calls = []
    original = getattr(module, name)

    def spy(*args, **kwargs):
        result = original(*args, **kwargs)
        calls.append(result)
        return result

    monkeypatch.setattr(module, name, spy)
    return calls


def test_classifier_epoch_of_the_ray_loop_is_the_plain_step(train_set, monkeypatch):
    """The Ray worker's epoch (``_train_one_epoch``, no process group here) runs
    ``classifier_step`` per batch and reports their mean loss; a plain loop of the step from
    the same weights and batches gives the same losses."""
    method = get_method("cam")(5)
    cfg = load_config(None, ["train.precision=bf16", "train.channels_last=true"])
    batches = list(_loader(train_set, eval_transform(), shuffle=False))[:3]

    def fresh():
        torch.manual_seed(1)
        model = method.build_model(cfg.model)
        return model, torch.optim.SGD(model.parameters(), lr=0.05)

    model, optimizer = fresh()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    calls = _spy(monkeypatch, ray_classifier, "classifier_step")
    loss, _, count = ray_classifier._train_one_epoch(
        method, model, batches, optimizer, scheduler, grad_scaler("cpu", "bf16"), cfg, "cpu", 0)
    assert count == len(batches) == len(calls)
    assert loss == pytest.approx(np.mean([c[0] for c in calls]))

    model, optimizer = fresh()
    model.train()
    plain = [steps.classifier_step(method, model, b, optimizer, grad_scaler("cpu", "bf16"),
                                   "cpu", "bf16", channels_last=True)[0] for b in batches]
    assert plain == pytest.approx([c[0] for c in calls], rel=1e-6)


def test_segmenter_epoch_of_the_ray_loop_is_the_plain_step(train_set, monkeypatch):
    from wsss.models.segmenter import build_segmenter

    cfg = load_config(None, ["segmenter.precision=bf16"])
    dataset = VOCDataset(train_set, "train", transform=train_transform(64))
    loader = DataLoader(dataset, batch_size=4, collate_fn=functools.partial(
        ray_segmenter.collate, num_classes=6, has_background=True))
    batches = [next(iter(loader))] * 2

    def fresh():
        torch.manual_seed(2)
        model = build_segmenter("deeplabv3_resnet18", 6)
        return model, torch.optim.SGD(model.parameters(), lr=0.01)

    model, optimizer = fresh()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    calls = _spy(monkeypatch, ray_segmenter, "segmenter_step")
    losses = ray_segmenter._train_one_epoch(model, batches, optimizer, scheduler, cfg, True)
    assert len(calls) == 2 and losses["optimizer_steps"] == 2
    assert losses["loss"] == pytest.approx(np.mean([c["loss"] for c in calls]))
    assert calls[1]["loss"] < calls[0]["loss"]  # the same batch again, after one step

    model, optimizer = fresh()
    model.train()
    plain = [steps.segmenter_step(model, b, optimizer, grad_scaler("cpu", "bf16"), cfg, True,
                                  "cpu")["loss"] for b in batches]
    assert plain == pytest.approx([c["loss"] for c in calls], rel=1e-6)


def test_prediction_is_float32_under_bf16_and_agrees_with_fp32():
    from wsss.models.segmenter import build_segmenter

    torch.manual_seed(3)
    model = build_segmenter("deeplabv3_resnet18", 6).eval()
    images = torch.randint(0, 256, (2, 3, 48, 64), dtype=torch.uint8)
    reference = steps.predict_probs(model, images)
    low = steps.predict_probs(model, images, precision="bf16", channels_last=True)
    assert low.dtype == torch.float32 and low.shape == (2, 6, 48, 64)
    assert torch.allclose(low.sum(dim=1), torch.ones(2, 48, 64), atol=1e-5)
    assert (low - reference).abs().max() < 5e-2
