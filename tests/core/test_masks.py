"""Pseudo-masks from class maps: background threshold and class-id mapping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsss.data.palette import IGNORE_INDEX
from wsss.core.masks import masks_from_maps


def test_background_threshold_just_below_and_above() -> None:
    maps = np.array([[[0.249, 0.251, 0.25]],
                     [[0.100, 0.000, 0.10]]], dtype=np.float32)  # [K=2, H=1, W=3]
    mask = masks_from_maps(maps, [3, 7], has_background=True, bg_threshold=0.25)
    assert mask.dtype == np.uint8 and mask.shape == (1, 3)
    assert mask.tolist() == [[0, 3, 3]]  # threshold itself counts as foreground


def test_argmax_maps_to_dataset_class_ids() -> None:
    maps = np.zeros((3, 2, 2), dtype=np.float32)
    maps[0] = [[0.9, 0.1], [0.3, 0.0]]
    maps[1] = [[0.2, 0.8], [0.4, 0.1]]
    maps[2] = [[0.1, 0.1], [0.5, 0.2]]
    mask = masks_from_maps(maps, [15, 4, 9], has_background=True, bg_threshold=0.25)
    assert mask.tolist() == [[15, 4], [9, 0]]


def test_ties_go_to_first_class() -> None:
    maps = np.full((2, 1, 1), 0.6)
    assert masks_from_maps(maps, [5, 2], has_background=True)[0, 0] == 5


def test_no_background_never_outputs_zero_unless_class_zero_present() -> None:
    rng = np.random.default_rng(0)
    maps = rng.random((2, 8, 8)) * 0.1  # all far below any threshold
    mask = masks_from_maps(maps, [2, 5], has_background=False, bg_threshold=0.25)
    assert set(np.unique(mask)) <= {2, 5}
    assert (mask == np.where(maps[0] >= maps[1], 2, 5)).all()
    with_zero = masks_from_maps(maps, [0, 5], has_background=False)
    assert (with_zero == np.where(maps[0] >= maps[1], 0, 5)).all()


def test_no_present_classes() -> None:
    empty = np.zeros((0, 3, 4), dtype=np.float32)
    bg = masks_from_maps(empty, [], has_background=True)
    assert bg.shape == (3, 4) and bg.dtype == np.uint8 and (bg == 0).all()
    no_bg = masks_from_maps(empty, [], has_background=False)
    assert (no_bg == IGNORE_INDEX).all()


def test_torch_maps_accepted() -> None:
    maps = torch.tensor([[[0.1, 0.7]], [[0.3, 0.2]]])
    assert masks_from_maps(maps, [1, 2], has_background=True).tolist() == [[2, 1]]


def test_input_errors() -> None:
    maps = np.zeros((2, 2, 2))
    with pytest.raises(ValueError, match="class ids"):
        masks_from_maps(maps, [1], has_background=True)
    with pytest.raises(ValueError, match=r"\[0\]"):
        masks_from_maps(maps, [0, 1], has_background=True)
    with pytest.raises(ValueError, match="duplicate"):
        masks_from_maps(maps, [1, 1], has_background=False)
    with pytest.raises(ValueError, match=r"\[K, H, W\]"):
        masks_from_maps(np.zeros((2, 2)), [1, 2], has_background=True)
