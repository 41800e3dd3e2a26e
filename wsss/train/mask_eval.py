"""Pseudo-mask mIoU of a classifier during training (the sweeps' per-epoch objective).

A fixed subset of training images is mapped (CAM or Grad-CAM, the method's choice, one scale),
turned into pseudo-masks by the method (``cfg.refine`` without the CRF) and scored against the
ground truth, which is used for scoring only. ``wsss eval`` does the same from map files.
``walk_mask_scores`` does it for an affinity network: saved maps, walked on its affinities.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from wsss.config import RefineConfig
from wsss.core.affinity import pair_offsets, walk_maps
from wsss.core.maps import load_maps, localization_maps
from wsss.core.masks import make_pseudo_mask, pseudo_mask
from wsss.core.scoring import Scorer
from wsss.data.dataset import VOCDataset
from wsss.data.errors import DatasetError
from wsss.data.reader import Sample
from wsss.data.transforms import normalize
from wsss.data.voc import DatasetInfo
from wsss.methods.base import Method
from wsss.models.classifier import unwrap


def select_eval_ids(ids: Sequence[str], count: int, seed: int = 0) -> list[str]:
    """A seeded, sorted subset of ``count`` ids (all of them when ``count`` >= len(ids))."""
    ids = sorted(ids)
    if count >= len(ids):
        return ids
    order = np.random.default_rng(seed).permutation(len(ids))[:count]
    return sorted(ids[i] for i in order)


def present_maps(method: Method, model: nn.Module, sample: Sample, info: DatasetInfo,
                 image_scale: float = 1.0) -> tuple[np.ndarray, list[int]]:
    """Maps float [K, H, W] of the K classes present in ``sample`` (computed at
    ``image_scale``, the model's training resolution, one scale, no flip; the method's map
    kind) and their dataset class ids."""
    model = unwrap(model)
    labels = info.multi_hot(sample.class_ids)[None]
    device = next(model.parameters()).device
    pixels = normalize(torch.from_numpy(sample.image).permute(2, 0, 1)[None].to(device))
    maps = localization_maps(method, model, pixels, labels.to(device),
                             image_scale=image_scale)[0].cpu()
    present = labels[0] > 0
    class_ids = torch.tensor(info.fg_classes)[present].tolist()
    return maps[present].numpy(), class_ids


def pseudo_mask_scores(method: Method, model: nn.Module, dataset: VOCDataset,
                       ids: Sequence[str], refine: RefineConfig,
                       image_scale: float = 1.0) -> Scorer:
    """Score the pseudo-masks of ``ids``: ``.scores().miou`` is the sweeps' objective,
    ``.degenerate_share`` the share of flooded masks (``wsss.core.scoring.is_degenerate``).

    Args:
        method: the model's :class:`~wsss.methods.base.Method`.
        model: the classifier (DDP-wrapped or not); used in eval mode, mode restored after.
        dataset: the training dataset (images, masks and image-level labels).
        ids: the ids to score; ids without a ground-truth mask raise ``DatasetError``.
        refine: background score settings; the CRF is switched off.
        image_scale: the model's training resolution (``data.image_scale``).
    """
    refine = dataclasses.replace(refine, crf=False)
    info = dataset.info
    scorer = Scorer(info)
    for sample_id in ids:
        sample = dataset.sample(sample_id)
        if sample.gt is None:
            raise DatasetError(f"no ground-truth mask for id '{sample_id}' to score")
        maps, class_ids = present_maps(method, model, sample, info, image_scale)
        scorer.update(make_pseudo_mask(method, sample, maps, class_ids, info.has_background,
                                       refine, dataset.reader.root), sample.gt)
    return scorer


def walk_mask_scores(model: nn.Module, dataset: VOCDataset, maps_dir: str | Path,
                     ids: Sequence[str], refine: RefineConfig, radius: int,
                     image_scale: float = 1.0) -> Scorer:
    """Score the pseudo-masks of ``ids`` made from their saved maps walked on ``model``'s
    affinities: the affinity sweep's objective while the network trains.

    Args:
        model: the affinity network (DDP-wrapped or not); used in eval mode, mode restored.
        dataset: the training dataset (images and ground truth, used for scoring only).
        maps_dir: folder of the ids' ``<id>.npz`` maps (``wsss cam``), at the images' size.
        ids: the ids to score.
        refine: the walk (``rw_beta``, ``rw_iterations``) and background settings; the CRF
            is switched off.
        radius: the network's pair radius (``affinity.radius``), in feature-map cells.
        image_scale: the network's training resolution (``data.image_scale``).

    Raises:
        DatasetError: an id without a ground-truth mask; FileNotFoundError: a missing maps
        file; ValueError: maps of another size than the image.
    """
    refine = dataclasses.replace(refine, crf=False)
    net = unwrap(model)
    device = next(net.parameters()).device
    offsets = pair_offsets(radius).to(device)
    scorer = Scorer(dataset.info)
    was_training = net.training
    net.eval()
    try:
        for sample_id in ids:
            sample = dataset.sample(sample_id)
            if sample.gt is None:
                raise DatasetError(f"no ground-truth mask for id '{sample_id}' to score")
            maps, class_ids = load_maps(Path(maps_dir) / f"{sample_id}.npz")
            image = normalize(torch.from_numpy(sample.image).permute(2, 0, 1)[None].to(device))
            walked = walk_maps(net, image, [torch.from_numpy(maps)], offsets, refine.rw_beta,
                               refine.rw_iterations, image_scale)[0]
            scorer.update(pseudo_mask(sample.image, walked.cpu().numpy(), class_ids,
                                      dataset.info.has_background, refine), sample.gt)
    finally:
        net.train(was_training)
    return scorer
