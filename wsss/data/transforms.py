"""Joint image/mask transforms built on torchvision.transforms.v2.

Each transform takes and returns ``(image, mask)`` with ``tv_tensors.Image`` uint8 [3, H, W] in
and float [3, h, w] (normalised) out; masks are ``tv_tensors.Mask`` and only follow the geometry.

Training crops follow DeepLab's recipe (Chen et al., 2017, sec. 4.1) as irn and mmsegmentation
use it for classifiers and segmenters alike: rescale the whole image by a random factor around
the resolution the network works at (``image_scale`` x a factor drawn from ``scale_range``),
then take a random ``crop_size`` crop, padding smaller images (mean colour; mask 255 = ignore).
Maps and predictions are then computed on the whole image at ``image_scale``, so objects have the
size they had in training.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from wsss.config import DataConfig
from wsss.data.palette import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MEAN_COLOUR = tuple(round(255 * m) for m in IMAGENET_MEAN)  # uint8 padding of training crops


class RandomRescale(v2.Transform):
    """Resize image and mask together by one factor drawn uniformly from ``[low, high]`` of
    their own size (bilinear with antialias for images, nearest for masks; at least 1 px a
    side). The factor comes from torch's generator, as torchvision's random transforms draw
    theirs, so ``torch.manual_seed`` makes a training run's augmentation repeat."""

    def __init__(self, low: float, high: float) -> None:
        super().__init__()
        if not 0 < low <= high:
            raise ValueError(f"RandomRescale needs 0 < low <= high, got ({low}, {high})")
        self.low, self.high = low, high

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        factor = float(torch.empty(()).uniform_(self.low, self.high))
        return {"size": [max(1, round(height * factor)), max(1, round(width * factor))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return TF.resize(inpt, params["size"], antialias=True)


def _to_float() -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def scale_crop_flip(crop_size: int, image_scale: float,
                    scale_range: Sequence[float]) -> list[v2.Transform]:
    """The geometric training augmentation on uint8 (image, mask): random rescale by
    ``image_scale`` x U(``scale_range``), random ``crop_size`` crop (padded: mean colour, mask
    255), horizontal flip."""
    low, high = scale_range
    return [RandomRescale(image_scale * low, image_scale * high),
            v2.RandomCrop(crop_size, pad_if_needed=True,
                          fill={tv_tensors.Image: MEAN_COLOUR, tv_tensors.Mask: IGNORE_INDEX,
                                "others": 0}),
            v2.RandomHorizontalFlip()]


def train_transform(crop_size: int, image_scale: float = 1.0,
                    scale_range: Sequence[float] = DataConfig.scale_range) -> v2.Compose:
    """Classifier training: :func:`scale_crop_flip`, colour jitter, normalise."""
    return v2.Compose([*scale_crop_flip(crop_size, image_scale, scale_range),
                       v2.ColorJitter(0.3, 0.3, 0.3), *_to_float()])


def eval_transform(size: int | None = None) -> v2.Compose:
    """Optional square resize to ``size`` (for batching validation), then normalise."""
    ops: list[v2.Transform] = [v2.Resize((size, size), antialias=True)] if size else []
    return v2.Compose([*ops, *_to_float()])


def resize_by(images: torch.Tensor, scale: float) -> torch.Tensor:
    """Images [B, C, H, W] resized (bilinear) by ``scale`` to [B, C, round(sH), round(sW)]
    (at least 1 px a side); the same tensor when ``scale`` is 1."""
    if scale == 1.0:
        return images
    height, width = images.shape[-2:]
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    return torch.nn.functional.interpolate(images, size=size, mode="bilinear",
                                           align_corners=False)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 images [B, 3, H, W] -> normalised float on the same device."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std
