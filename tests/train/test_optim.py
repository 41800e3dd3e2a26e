"""Optimiser, schedules and parameter groups (``wsss.train.optim``): each schedule has its
published shape, heads learn at ``head_lr_mult`` times the backbone's rate, and a run resumed from
a checkpoint continues exactly where the uninterrupted run would be."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from wsss.config import ConfigError, ExperimentConfig, SegmenterConfig, TrainConfig, load_config
from wsss.methods import get_method
from wsss.models.segmenter import Segmenter, build_segmenter
from wsss.train.checkpoint import read_state, write_state
from wsss.train.optim import (ONECYCLE_WARMUP_FRACTION, WARMUP_START_FACTOR,
                              optimizer_and_schedule, parameter_groups)

STEPS = 5  # batches per epoch


def _classifier(name: str = "cam", **params) -> torch.nn.Module:
    torch.manual_seed(0)
    return get_method(name)(3, params).build_model(ExperimentConfig().model)


def _tiny() -> Segmenter:
    """A segmenter small enough to train in milliseconds: a conv trunk and a 1x1 conv head."""
    torch.manual_seed(0)
    trunk = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8),
                                torch.nn.ReLU())
    return Segmenter(trunk, torch.nn.Conv2d(8, 3, 1), num_classes=3)


def _recipe(**fields) -> TrainConfig:
    return dataclasses.replace(TrainConfig(), **{"epochs": 4, "lr": 0.1, **fields})


def _lrs(recipe: TrainConfig, model: torch.nn.Module | None = None) -> list[list[float]]:
    """Each batch's learning rate per parameter group over the whole run."""
    optimizer, scheduler = optimizer_and_schedule(model or _tiny(), recipe, STEPS)
    seen = []
    for _ in range(recipe.epochs * STEPS):
        seen.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return seen


def test_groups_put_backbone_and_heads_apart_and_leave_frozen_parameters_out():
    model = _classifier()
    groups = {g["name"]: g for g in parameter_groups(model, head_lr_mult=10)}
    assert {id(p) for p in groups["backbone"]["params"]} == {
        id(p) for p in model.backbone.parameters()}
    assert {id(p) for p in groups["head"]["params"]} == {id(p) for p in model.head.parameters()}
    assert (groups["backbone"]["lr_mult"], groups["head"]["lr_mult"]) == (1.0, 10.0)

    segmenter = build_segmenter("deeplabv3_resnet18", 4)
    groups = {g["name"]: g for g in parameter_groups(segmenter, head_lr_mult=10)}
    assert {id(p) for p in groups["backbone"]["params"]} == {
        id(p) for p in segmenter.trunk.parameters()}
    assert {id(p) for p in groups["head"]["params"]} == {
        id(p) for p in segmenter.head.parameters()}

    method = get_method("adversarial_erasing")(3, {"steps": 2})
    erasing = method.build_model(ExperimentConfig().model)
    method.prepare_round(erasing, 1)  # round 0 is frozen while round 1 trains
    grouped = {id(p) for g in parameter_groups(erasing, 10) for p in g["params"]}
    assert grouped == {id(p) for p in erasing.parameters() if p.requires_grad}
    assert grouped and not grouped & {id(p) for p in erasing.rounds[0].parameters()}


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_heads_learn_at_head_lr_mult_times_the_backbone_rate(optimizer):
    for lrs in _lrs(_recipe(optimizer=optimizer, head_lr_mult=10.0, warmup_epochs=1)):
        backbone, head = lrs
        assert head == pytest.approx(10 * backbone, rel=1e-9)


def test_cosine_and_poly_decay_after_a_linear_warm_up():
    total, warm = 4 * STEPS, STEPS
    for schedule, decay in [("cosine", lambda t: 0.5 * (1 + math.cos(math.pi * t))),
                            ("poly", lambda t: (1 - t) ** 0.9)]:
        lrs = [g[0] for g in _lrs(_recipe(schedule=schedule, warmup_epochs=1))]
        assert lrs[0] == pytest.approx(0.1 * WARMUP_START_FACTOR)
        rise = [0.1 * (WARMUP_START_FACTOR + (1 - WARMUP_START_FACTOR) * i / warm)
                for i in range(warm)]
        assert lrs[:warm] == pytest.approx(rise)
        assert lrs[warm:] == pytest.approx([0.1 * decay(i / (total - warm))
                                            for i in range(total - warm)])
        no_warm_up = [g[0] for g in _lrs(_recipe(schedule=schedule))]
        assert no_warm_up == pytest.approx([0.1 * decay(i / total) for i in range(total)])


def test_onecycle_rises_to_lr_then_anneals_far_below_it():
    lrs = [g[0] for g in _lrs(_recipe(schedule="onecycle", optimizer="adamw"))]
    peak = round(ONECYCLE_WARMUP_FRACTION * 4 * STEPS) - 1  # torch: the rise ends one step early
    assert lrs[0] == pytest.approx(0.1 / 25)
    assert max(lrs) == pytest.approx(0.1) and lrs.index(max(lrs)) == peak
    assert all(a < b for a, b in zip(lrs[:peak], lrs[1:peak + 1]))
    assert all(a > b for a, b in zip(lrs[peak:], lrs[peak + 1:]))
    assert lrs[-1] < 0.1 / 1000
    short = [g[0] for g in _lrs(_recipe(schedule="onecycle", warmup_epochs=0.5))]
    assert short.index(max(short)) == round(0.5 * STEPS) - 1


def _run(recipe, epochs, saved=None, done=0):
    """Train a tiny segmenter on fixed random batches for ``epochs`` epochs after ``done``;
    returns the model, the optimizer and each batch's learning rates."""
    model = _tiny()
    if saved is not None:
        model.load_state_dict(saved["state_dict"])
    optimizer, scheduler = optimizer_and_schedule(model, recipe, STEPS,
                                                  saved and saved["optimizer"], done)
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(STEPS, 2, 3, 16, 16, generator=generator)
    masks = torch.randint(0, 3, (STEPS, 2, 16, 16), generator=generator)
    lrs = []
    for _ in range(epochs):
        for x, y in zip(images, masks):
            lrs.append([g["lr"] for g in optimizer.param_groups])
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    return model, optimizer, lrs


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("schedule", ["cosine", "poly", "onecycle"])
def test_resumed_run_continues_where_the_uninterrupted_run_would_be(optimizer, schedule,
                                                                    tmp_path):
    recipe = _recipe(optimizer=optimizer, schedule=schedule, epochs=3, head_lr_mult=10.0,
                     warmup_epochs=1)
    torch.manual_seed(0)
    whole, _, whole_lrs = _run(recipe, 3)
    torch.manual_seed(0)
    first, first_optimizer, first_lrs = _run(recipe, 1)
    path = write_state(tmp_path / "model.pt", {"format": "test", "state_dict": first.state_dict(),
                                               "optimizer": first_optimizer.state_dict()})
    saved = read_state(path, "test", "test")  # as a checkpoint is read: weights_only=True
    resumed, _, rest_lrs = _run(recipe, 2, saved, done=1)
    flat = [lr for lrs in first_lrs + rest_lrs for lr in lrs]
    assert flat == pytest.approx([lr for lrs in whole_lrs for lr in lrs], rel=1e-12)
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_resumed_with_more_epochs_follows_the_longer_schedule():
    """The config, not the checkpoint, sets the schedule: 2 epochs done of a 2-epoch cosine
    run (learning rate near 0), resumed as a 4-epoch run, continue at the 4-epoch run's rate."""
    short = _recipe(epochs=2, optimizer="sgd", schedule="cosine")
    model = _tiny()
    optimizer, _ = optimizer_and_schedule(model, short, STEPS)
    longer = dataclasses.replace(short, epochs=4)
    resumed, scheduler = optimizer_and_schedule(model, longer, STEPS, optimizer.state_dict(), 2)
    assert resumed.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5)  # cosine at half way
    assert scheduler.last_epoch == 2 * STEPS


def test_onecycle_over_fewer_than_three_iterations_keeps_the_learning_rate():
    """A smoke run (2 iterations) cannot rise and fall: it trains at ``lr``, not an error."""
    recipe = _recipe(schedule="onecycle", epochs=2)
    optimizer, scheduler = optimizer_and_schedule(_tiny(), recipe, 1)
    seen = []
    for _ in range(2):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == [recipe.lr, recipe.lr]


@pytest.mark.parametrize("section", ["train", "segmenter"])
@pytest.mark.parametrize("override, message", [pytest.param(o, m, id=o) for o, m in [
    ("optimizer=adam", "optimizer='adam' is not valid; choose one of: sgd, adamw"),
    ("schedule=step", "schedule='step' is not valid; choose one of: cosine, poly, onecycle"),
    ("head_lr_mult=0", "head_lr_mult=0 is out of range: expected > 0"),
    ("warmup_epochs=-1", "warmup_epochs=-1 is out of range: expected > 0 and < "),
    ("warmup_epochs=99", "warmup_epochs=99 is out of range"),
]])
def test_bad_recipe_values_are_refused_naming_the_key(section, override, message):
    with pytest.raises(ConfigError, match=f"{section}.{message}".replace("(", r"\(")
                       .replace(")", r"\)")):
        load_config(None, [f"{section}.{override}"])


def test_onecycle_refuses_a_zero_rising_phase_and_defaults_to_torchs():
    with pytest.raises(ConfigError, match=r"train.warmup_epochs=0 is out of range: expected > 0"):
        load_config(None, ["train.schedule=onecycle", "train.warmup_epochs=0"])
    cfg = load_config(None, ["segmenter.schedule=onecycle", "segmenter.optimizer=adamw"])
    assert isinstance(cfg.segmenter, SegmenterConfig) and cfg.segmenter.warmup_epochs is None
