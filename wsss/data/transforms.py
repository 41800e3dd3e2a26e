"""Joint image/mask transforms built on torchvision.transforms.v2.

Each transform takes and returns ``(image, mask)`` with ``tv_tensors.Image`` uint8 [3, H, W] in
and float [3, h, w] (normalised) out; masks are ``tv_tensors.Mask`` and only follow the geometry.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _to_float() -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def train_transform(crop_size: int) -> v2.Compose:
    """Random resized crop to ``crop_size``, horizontal flip, colour jitter, normalise."""
    return v2.Compose([
        v2.RandomResizedCrop(crop_size, scale=(0.5, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ColorJitter(0.3, 0.3, 0.3),
        *_to_float(),
    ])


def eval_transform(size: int | None = None) -> v2.Compose:
    """Optional square resize to ``size`` (for batching validation), then normalise."""
    ops: list[v2.Transform] = [v2.Resize((size, size), antialias=True)] if size else []
    return v2.Compose([*ops, *_to_float()])


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 images [B, 3, H, W] -> normalised float on the same device."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std
