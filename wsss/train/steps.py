"""One training step of the classifier and of the segmenter, and the segmenter's prediction, on
any torch device and without Ray.

The Ray Train loops (``wsss.train.classifier``, ``wsss.train.segmenter``) call these for every
batch; a plain loop, a test or ``benchmarks/gpu_check.py`` calls the same code. Precision and
memory format follow ``wsss.core.precision`` (``torch.autocast``; a ``torch.amp.GradScaler``
that is a pass-through unless the precision is fp16).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wsss.config import ExperimentConfig
from wsss.core.precision import autocast, to_memory_format
from wsss.core.sec import sec_losses
from wsss.data.palette import IGNORE_INDEX
from wsss.data.transforms import normalize, resize_by
from wsss.methods.base import Method
from wsss.models.segmenter import single_value_batch_norm_in_eval


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler) -> None:
    """Back-propagate ``loss`` and step ``optimizer`` through ``scaler`` (loss scaling for
    fp16, a pass-through otherwise; ``wsss.core.precision.grad_scaler``). The gradients stay
    in the parameters' ``.grad`` (unscaled for fp16 only when the step was not skipped)."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def classifier_step(method: Method, model: nn.Module, batch: dict[str, Any],
                    optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                    device: str | torch.device, precision: str = "fp32",
                    channels_last: bool = False, epoch: int = 0) -> tuple[float, dict[str, float]]:
    """One optimisation step of ``method``'s classifier on one batch.

    The method's loss (``Method.training_loss``) is computed under the autocast of
    ``precision`` on the images in the channels-last format when ``channels_last`` (the model
    is expected in that format already: ``wsss.core.precision.to_memory_format``).

    Args:
        method / model: the method and its model (possibly DDP-wrapped), in training mode.
        batch: ``image`` normalised float [B, 3, H, W] and ``labels`` multi-hot float [B, C]
            (``wsss.train.classifier.collate``), on any device: moved to ``device``.
        optimizer / scaler: the optimiser and ``wsss.core.precision.grad_scaler``'s scaler.
        device: the device of ``model``.
        precision: ``fp32`` | ``bf16`` | ``fp16`` (``train.precision``), already checked
            (``wsss.core.precision.check_precision``).
        epoch: passed to the method (some schedule their loss by epoch).

    Returns:
        The batch's loss (a float) and the method's logged terms.
    """
    images = to_memory_format(batch["image"].to(device, non_blocking=True), channels_last)
    labels = batch["labels"].to(device, non_blocking=True)
    with autocast(device, precision):
        loss, logs = method.training_loss(model, images, labels, epoch)
    optimizer_step(loss, optimizer, scaler)
    return float(loss.detach()), logs


def segmenter_losses(model: nn.Module, batch: dict[str, Any], cfg: ExperimentConfig,
                     has_background: bool,
                     device: str | torch.device) -> dict[str, torch.Tensor]:
    """The loss terms of one segmenter batch (their sum is optimised), as float32 scalars.

    The forward pass runs under the autocast of ``cfg.segmenter.precision``, channels-last
    when ``cfg.segmenter.channels_last``; the losses are computed from the float32 logits.
    ``cfg.segmenter.mode="ce"``: pixel-wise cross-entropy over the labelled pixels (255
    ignored); ``"sec"``: SEC's seed / expand / constrain terms (``wsss.core.sec.sec_losses``).

    Args:
        batch: ``image`` uint8 [B, 3, H, W], ``mask`` long [B, H, W], ``present`` bool [B, K]
            (``wsss.train.segmenter.collate``), on any device: moved to ``device``.
    """
    seg = cfg.segmenter
    images = batch["image"].to(device, non_blocking=True)
    masks = batch["mask"].to(device, non_blocking=True)
    with autocast(device, seg.precision):
        logits = model(to_memory_format(normalize(images), seg.channels_last))
    logits = logits.float()
    if seg.mode == "sec":
        return sec_losses(logits, images, masks, batch["present"].to(device), has_background,
                          seg, cfg.refine)
    labelled = (masks != IGNORE_INDEX).sum().clamp_min(1)
    ce = F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX, reduction="sum") / labelled
    return {"ce": ce}


def segmenter_step(model: nn.Module, batch: dict[str, Any], optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler, cfg: ExperimentConfig, has_background: bool,
                   device: str | torch.device) -> dict[str, float]:
    """One optimisation step of the segmenter on one batch (:func:`segmenter_losses`).

    A one-image batch trains the batch norm layers that would see a single value per channel
    (ASPP's image pooling) in eval mode
    (``wsss.models.segmenter.single_value_batch_norm_in_eval``).

    Returns:
        ``loss`` (the sum) and each term under its own name, as floats.
    """
    with single_value_batch_norm_in_eval(model):
        terms = segmenter_losses(model, batch, cfg, has_background, device)
    loss = sum(terms.values())
    optimizer_step(loss, optimizer, scaler)
    return {key: float(value.detach()) for key, value in {"loss": loss, **terms}.items()}


@torch.no_grad()
def predict_probs(model: nn.Module, images: torch.Tensor, image_scale: float = 1.0,
                  precision: str = "fp32", channels_last: bool = False) -> torch.Tensor:
    """Class probabilities float32 [B, C, H, W] (softmax) for RGB uint8 images [B, 3, H, W]
    (model in eval mode), on the images' device.

    The images are resized (bilinear) by ``image_scale``, the resolution the model was trained
    at (``data.image_scale``), the network runs under the autocast of ``precision``
    (channels-last when ``channels_last``), and the probabilities (softmax of the float32
    logits) are upsampled back to [H, W].
    """
    height, width = images.shape[-2:]
    inputs = to_memory_format(resize_by(normalize(images), image_scale), channels_last)
    with autocast(images.device, precision):
        logits = model(inputs)
    probs = logits.float().softmax(dim=1)
    if probs.shape[-2:] != (height, width):
        probs = F.interpolate(probs, size=(height, width), mode="bilinear", align_corners=False)
    return probs


def predict_labels(model: nn.Module, images: torch.Tensor, image_scale: float = 1.0,
                   precision: str = "fp32", channels_last: bool = False) -> torch.Tensor:
    """Class indices long [B, H, W]: the arg-max of :func:`predict_probs`."""
    return predict_probs(model, images, image_scale, precision, channels_last).argmax(dim=1)
