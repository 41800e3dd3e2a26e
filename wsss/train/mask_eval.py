"""Pseudo-mask mIoU of a classifier during training (the sweeps' per-epoch objective).

A fixed subset of training images is mapped (CAM or Grad-CAM, the method's choice, one scale),
turned into pseudo-masks by the method (``cfg.refine`` without the CRF) and scored against the
ground truth, which is used for scoring only. ``wsss eval`` does the same from map files.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from wsss.config import RefineConfig
from wsss.data.transforms import normalize
from wsss.data.voc import DatasetError, VOCDataset
from wsss.metrics import ConfusionMatrix


def select_eval_ids(ids: Sequence[str], count: int, seed: int = 0) -> list[str]:
    """A seeded, sorted subset of ``count`` ids (all of them when ``count`` >= len(ids))."""
    ids = sorted(ids)
    if count >= len(ids):
        return ids
    order = np.random.default_rng(seed).permutation(len(ids))[:count]
    return sorted(ids[i] for i in order)


def present_maps(method: Any, model: nn.Module, dataset: VOCDataset, sample_id: str,
                 image_scale: float = 1.0) -> tuple[np.ndarray, list[int], np.ndarray | None]:
    """Maps float [K, H, W] of the K classes present in ``sample_id`` (computed at
    ``image_scale``, the model's training resolution, no flip; the method's map kind), their
    dataset class ids, and the ground-truth mask uint8 [H, W] (None if absent).
    """
    from wsss.cams import localization_maps
    from wsss.methods.base import _unwrap

    model = _unwrap(model)
    image = dataset.load_image(sample_id)
    gt = dataset.load_mask(sample_id, image.shape[:2])
    labels = dataset.info.multi_hot(dataset.class_ids(sample_id, gt))[None]
    device = next(model.parameters()).device
    pixels = normalize(torch.from_numpy(image).permute(2, 0, 1)[None].to(device))
    maps = localization_maps(method, model, pixels, labels.to(device),
                             image_scale=image_scale)[0].cpu()
    present = labels[0] > 0
    class_ids = torch.tensor(dataset.info.fg_classes)[present].tolist()
    return maps[present].numpy(), class_ids, gt


def pseudo_mask_scores(method: Any, model: nn.Module, dataset: VOCDataset, ids: Sequence[str],
                       refine: RefineConfig, image_scale: float = 1.0) -> Any:
    """Score the pseudo-masks of ``ids`` (``wsss.metrics.Scores``; ``.miou`` is the objective).

    Args:
        method: the model's :class:`~wsss.methods.base.Method`.
        model: the classifier (DDP-wrapped or not); used in eval mode, mode restored after.
        dataset: the training dataset (images, masks and image-level labels).
        ids: the ids to score; ids without a ground-truth mask raise ``DatasetError``.
        refine: background score settings; the CRF is switched off.
        image_scale: the model's training resolution (``data.image_scale``).
    """
    from wsss.stages import make_pseudo_mask

    refine = dataclasses.replace(refine, crf=False)
    info = dataset.info
    confusion = ConfusionMatrix(info.num_classes)
    for sample_id in ids:
        maps, class_ids, gt = present_maps(method, model, dataset, sample_id, image_scale)
        if gt is None:
            raise DatasetError(f"no ground-truth mask for id '{sample_id}' to score")
        confusion.update(make_pseudo_mask(method, dataset, sample_id, maps, class_ids, refine), gt)
    return confusion.compute(list(info.class_names),
                             background=0 if info.has_background else None)
