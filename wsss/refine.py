"""Pseudo-masks from class activation maps.

``masks_from_maps`` turns the normalised maps of the classes present in an image into a label
mask. Further refinement steps (e.g. dense CRF) belong in this module and take and return the
same uint8 [H, W] masks.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from wsss.data.voc import IGNORE_INDEX

BACKGROUND = 0


def masks_from_maps(maps: np.ndarray | torch.Tensor, class_ids: Sequence[int],
                    has_background: bool, bg_threshold: float = 0.25) -> np.ndarray:
    """Label mask uint8 [H, W] from maps float [K, H, W] in [0, 1] of the K present classes.

    ``class_ids[k]`` is the dataset class index of ``maps[k]``.

    * With a background class (index 0): a pixel is background where ``max_k maps[k]`` is
      strictly below ``bg_threshold``, else ``class_ids`` of the arg-max.
    * Without one: every pixel gets ``class_ids`` of the arg-max over the present classes;
      ``bg_threshold`` is unused.

    Ties go to the earlier entry of ``class_ids``. With K == 0 the mask is all background, or
    all ``IGNORE_INDEX`` when the dataset has no background class.
    """
    arr = maps.detach().cpu().numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps)
    ids = np.asarray(class_ids, dtype=np.int64).reshape(-1)
    _check_inputs(arr, ids, has_background)
    height, width = arr.shape[1:]
    if ids.size == 0:
        fill = BACKGROUND if has_background else IGNORE_INDEX
        return np.full((height, width), fill, dtype=np.uint8)
    mask = ids[arr.argmax(axis=0)].astype(np.uint8)
    if has_background:
        mask[arr.max(axis=0) < bg_threshold] = BACKGROUND
    return mask


def _check_inputs(maps: np.ndarray, ids: np.ndarray, has_background: bool) -> None:
    """Validate maps [K, H, W] against class ids [K]; raises ValueError."""
    if maps.ndim != 3:
        raise ValueError(f"maps must be [K, H, W], got shape {maps.shape}")
    if len(ids) != maps.shape[0]:
        raise ValueError(f"got {len(ids)} class ids for {maps.shape[0]} maps")
    if len(np.unique(ids)) != len(ids):
        raise ValueError(f"duplicate class ids {ids.tolist()}")
    low = 1 if has_background else 0
    bad = (ids < low) | (ids >= IGNORE_INDEX)
    if bad.any():
        kind = "foreground class" if has_background else "class"
        raise ValueError(f"class ids {ids[bad].tolist()} are not valid {kind} indices "
                         f"({low}..{IGNORE_INDEX - 1})")
