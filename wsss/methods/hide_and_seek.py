"""Hide-and-Seek (Singh & Lee, ICCV 2017): hide random image patches during training.

Each training image is cut into a ``grid_size x grid_size`` grid and every patch is hidden
independently with probability ``hide_prob``, with a fresh draw at every call (so every epoch sees
a different hiding). Hidden pixels take the dataset mean so that, in expectation, a filter sees
the same input statistics at train and test time. Images here are already normalised, so the
dataset mean is estimated by the per-channel mean of the current (un-hidden) batch; with ImageNet
statistics this is close to 0, but it also follows datasets whose mean differs from ImageNet's.
Nothing is hidden at evaluation: maps and logits come from the plain CAM classifier.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from wsss.config import check_value
from wsss.knobs import Knob
from wsss.methods.base import Method, register_method


@dataclass(frozen=True)
class HideAndSeekParams:
    """``hide_prob`` in [0, 1); ``grid_size`` >= 1 patches per side (need not divide H or W)."""

    hide_prob: float = 0.5
    grid_size: int = 4

    def validate(self) -> None:
        check_value(isinstance(self.hide_prob, (int, float)) and 0.0 <= self.hide_prob < 1.0,
                    "method.params.hide_prob", self.hide_prob, "in [0, 1)")
        check_value(isinstance(self.grid_size, int) and self.grid_size >= 1,
                    "method.params.grid_size", self.grid_size, "an integer >= 1")


def hide_patches(images: torch.Tensor, hide_prob: float, grid_size: int,
                 generator: torch.Generator | None = None,
                 fill: torch.Tensor | float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Hide each grid patch of each image independently with probability ``hide_prob``.

    Pixel row ``i`` belongs to patch row ``floor(i * grid_size / H)`` (columns likewise), so the
    grid covers the image exactly even when ``grid_size`` does not divide H or W.

    Args:
        images: [B, 3, H, W].
        hide_prob: probability of hiding a patch, in [0, 1).
        grid_size: patches per side.
        generator: optional RNG on ``images.device`` (default: the global one).
        fill: value of hidden pixels, a scalar or per-channel [1, 3, 1, 1]; None (default) uses
            the per-channel mean of ``images``.

    Returns:
        hidden images [B, 3, H, W] and the keep mask, bool [B, 1, H, W] (False = hidden).
    """
    batch, _, height, width = images.shape
    draws = torch.rand((batch, 1, grid_size, grid_size), generator=generator,
                       device=images.device)
    keep_grid = draws >= hide_prob
    rows = torch.arange(height, device=images.device) * grid_size // height
    cols = torch.arange(width, device=images.device) * grid_size // width
    keep = keep_grid[:, :, rows][:, :, :, cols]
    if fill is None:
        fill = images.detach().mean(dim=(0, 2, 3), keepdim=True)
    fill = torch.as_tensor(fill, dtype=images.dtype, device=images.device)
    return torch.where(keep, images, fill), keep


@register_method("hide_and_seek")
class HideAndSeekMethod(Method):
    """CAM classifier trained on images with randomly hidden patches."""

    Params = HideAndSeekParams
    knobs = (Knob("method.params.hide_prob", 0.0, 0.9),
             Knob("method.params.grid_size", choices=(2, 4, 8, 16)))

    def training_loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Plain CAM loss on a freshly hidden copy of images [B, 3, H, W], labels [B, C]."""
        hidden, _ = hide_patches(images, self.params.hide_prob, self.params.grid_size)
        return super().training_loss(model, hidden, labels, epoch)
