"""Optimiser, learning-rate schedule and parameter groups of a training run.

One recipe for the classifier (``train.*``) and the segmenter (``segmenter.*``), with the
field's standard choices:

- ``optimizer``: ``sgd`` (momentum 0.9, Nesterov; DeepLab, irn) or ``adamw`` (Loshchilov &
  Hutter, ICLR 2019; torch's ``AdamW`` with its default betas).
- ``schedule``: ``cosine`` (SGDR without restarts, Loshchilov & Hutter, ICLR 2017), ``poly``
  (``(1 - t / T) ** 0.9``, DeepLab, Chen et al. TPAMI 2018, sec. 4.1) or ``onecycle`` (Smith &
  Topin 2019; torch's ``OneCycleLR``: rise from ``lr / 25`` to ``lr``, then cosine down to
  ``lr / 25e4``, momentum cycled inversely). Every schedule is stepped once per batch, so it
  has the same shape whatever the epoch count.
- ``warmup_epochs``: a linear warm-up from ``lr * 1e-3`` over that many epochs (fractions
  allowed) before ``cosine`` or ``poly`` decay; for ``onecycle`` the length of its rising phase
  (``None``: 0 for ``cosine`` / ``poly``, 30 % of the run for ``onecycle``, torch's default).
- ``head_lr_mult``: the parameters outside the backbone (the class heads a method adds, the
  segmenter's DeepLab head) learn at ``lr * head_lr_mult`` (irn and SEAM use 10 with an ImageNet
  backbone).

A checkpoint keeps the optimiser's per-parameter state (momentum buffers, Adam moments) and
the epochs done; a resumed run rebuilds the schedule from its config and moves it to where the
run stopped (:func:`optimizer_and_schedule`), so a run resumed with more epochs follows the
longer schedule instead of the one it started with.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Protocol

import torch
from torch import nn
from torch.optim import lr_scheduler

from wsss.models.backbones import Backbone
from wsss.models.segmenter import Segmenter

WARMUP_START_FACTOR = 1e-3  # the warm-up's first learning rate, as a fraction of lr
POLY_POWER = 0.9
ONECYCLE_WARMUP_FRACTION = 0.3  # torch's OneCycleLR default pct_start


class Recipe(Protocol):
    """The config fields a recipe reads (``TrainConfig`` and ``SegmenterConfig`` have them)."""

    epochs: int
    lr: float
    weight_decay: float
    optimizer: str
    schedule: str
    warmup_epochs: float | None
    head_lr_mult: float


def parameter_groups(model: nn.Module, head_lr_mult: float) -> list[dict[str, Any]]:
    """The trainable parameters of ``model`` in two optimiser groups.

    ``backbone``: the parameters of every :class:`~wsss.models.backbones.Backbone` inside
    ``model`` and of a :class:`~wsss.models.segmenter.Segmenter`'s trunk; ``head``: all others.
    Each group carries ``lr_mult`` (1 and ``head_lr_mult``); empty groups and frozen parameters
    (``requires_grad=False``, e.g. the finished rounds of adversarial erasing) are left out.
    """
    trunks = [m for m in model.modules() if isinstance(m, Backbone)]
    trunks += [m.trunk for m in model.modules() if isinstance(m, Segmenter)]
    in_trunk = {id(p) for trunk in trunks for p in trunk.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"name": "backbone", "lr_mult": 1.0,
               "params": [p for p in trainable if id(p) in in_trunk]},
              {"name": "head", "lr_mult": float(head_lr_mult),
               "params": [p for p in trainable if id(p) not in in_trunk]}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """``recipe.optimizer`` over :func:`parameter_groups` (group ``i`` at ``lr * lr_mult``).

    Raises:
        ValueError: an unknown optimiser name (the config refuses it first) or no trainable
            parameter.
    """
    groups = [{**g, "lr": recipe.lr * g["lr_mult"]} for g in parameter_groups(
        model, recipe.head_lr_mult)]
    if not groups:
        raise ValueError("the model has no trainable parameter")
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=0.9, nesterov=True,
                               weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr, weight_decay=recipe.weight_decay)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}; choose one of: sgd, adamw")


def warmup_steps(recipe: Recipe, steps_per_epoch: int) -> int:
    """Iterations of warm-up (or of one-cycle's rising phase) for ``steps_per_epoch`` batches."""
    epochs = recipe.warmup_epochs
    if epochs is None:
        epochs = ONECYCLE_WARMUP_FRACTION * recipe.epochs if recipe.schedule == "onecycle" else 0.0
    return int(round(epochs * steps_per_epoch))


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate schedule of ``recipe`` over ``recipe.epochs * steps_per_epoch``
    iterations; call ``step()`` after every optimiser step.

    ``onecycle`` over fewer than 3 iterations (a smoke run: no room for a rise and a fall)
    keeps ``lr`` constant.

    Raises:
        ValueError: ``steps_per_epoch`` < 1 or an unknown schedule name.
    """
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    total = recipe.epochs * steps_per_epoch
    warmup = min(warmup_steps(recipe, steps_per_epoch), total - 1)
    if recipe.schedule == "onecycle":
        if total < 3:  # a rise needs >= 2 iterations and a fall >= 1
            return lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        rise = max(warmup, 2)
        return lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
                                       total_steps=total, pct_start=rise / total)
    decay_steps = total - warmup
    if recipe.schedule == "cosine":
        decay = lr_scheduler.CosineAnnealingLR(optimizer, T_max=decay_steps)
    elif recipe.schedule == "poly":
        decay = lr_scheduler.PolynomialLR(optimizer, total_iters=decay_steps, power=POLY_POWER)
    else:
        raise ValueError(f"unknown schedule {recipe.schedule!r}; choose one of: cosine, poly, "
                         f"onecycle")
    if warmup == 0:
        return decay
    rise = lr_scheduler.LinearLR(optimizer, start_factor=WARMUP_START_FACTOR, total_iters=warmup)
    return lr_scheduler.SequentialLR(optimizer, [rise, decay], milestones=[warmup])


def optimizer_and_schedule(model: nn.Module, recipe: Recipe, steps_per_epoch: int,
                           saved_optimizer: Mapping[str, Any] | None = None, epochs_done: int = 0,
                           ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The optimiser and schedule of a run, fresh or resumed after ``epochs_done`` epochs.

    A resumed run takes its per-parameter state from ``saved_optimizer`` (the optimiser's
    ``state_dict()`` in a checkpoint) and every hyper-parameter (learning rates, momentum, weight
    decay) from ``recipe``; the schedule is stepped ``epochs_done * steps_per_epoch`` times, so
    the next batch gets the learning rate the uninterrupted run would give it.

    Raises:
        ValueError: see :func:`build_optimizer` and :func:`build_scheduler`; also when
            ``saved_optimizer`` holds other parameter groups than ``model`` has.
    """
    optimizer = build_optimizer(model, recipe)
    if saved_optimizer:
        recipe_groups = [{k: v for k, v in g.items() if k != "params"}
                         for g in optimizer.param_groups]
        optimizer.load_state_dict(saved_optimizer)
        for group, hyper in zip(optimizer.param_groups, recipe_groups):
            for key in [k for k in group if k != "params" and k not in hyper]:
                del group[key]  # e.g. the old schedule's initial_lr
            group.update(hyper)
    scheduler = build_scheduler(optimizer, recipe, steps_per_epoch)
    done = min(epochs_done, recipe.epochs) * steps_per_epoch
    with warnings.catch_warnings():  # no optimiser step yet in this process: torch warns
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        for _ in range(done):
            scheduler.step()
    return optimizer, scheduler
