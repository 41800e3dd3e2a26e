"""What the map-kind tests share besides ``tests/core/conftest.py``'s classifier and batch: the
labels and the comparison with pytorch-grad-cam's implementation of the same kind."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsss.core.map_kinds import MAP_KINDS

LABELS = torch.tensor([[1, 0, 1, 0, 0],
                       [0, 1, 0, 0, 1],
                       [1, 1, 1, 0, 0]], dtype=torch.float32)


@pytest.fixture(scope="module")
def labels() -> torch.Tensor:
    return LABELS


def _minmax(maps: np.ndarray) -> np.ndarray:
    """Min-max normalise each map of [N, H, W] (as pytorch-grad-cam scales its maps)."""
    low = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - low
    return (maps - low) / np.maximum(span, 1e-12)


@pytest.fixture(scope="module")
def compare_with_pytorch_grad_cam(model, images) -> Callable[[str, type, str], int]:
    """``compare(kind, reference_class, layer)``: our raw maps of registered ``kind`` at backbone
    stage ``layer`` against pytorch-grad-cam's ``reference_class`` on the same model, one
    present class per image at a time; asserts they agree (relative error < 1e-4 after both
    are resized and min-max normalised, and on which maps are empty) and returns how many
    non-empty maps were compared."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    def compare(kind: str, reference_class: type, layer: str) -> int:
        ours = MAP_KINDS[kind]().raw_maps(model, images, LABELS, layer)
        ours = F.interpolate(ours, size=images.shape[-2:], mode="bilinear", align_corners=False)
        present = [LABELS[b].nonzero().flatten().tolist() for b in range(len(LABELS))]
        compared = 0
        with reference_class(model=model,
                             target_layers=[getattr(model.backbone, layer)]) as reference:
            for slot in range(max(len(p) for p in present)):
                classes = [p[min(slot, len(p) - 1)] for p in present]
                ref = reference(input_tensor=images,
                                targets=[ClassifierOutputTarget(c) for c in classes])
                mine = np.stack([ours[b, c].numpy() for b, c in enumerate(classes)])
                live = mine.max(axis=(1, 2)) > 0
                assert np.all(ref[~live] == 0)  # both agree a map is empty
                mine, ref = _minmax(mine[live]), ref[live]
                assert np.abs(mine - ref).max() / np.abs(ref).max() < 1e-4
                compared += int(live.sum())
        return compared

    return compare
