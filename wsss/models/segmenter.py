"""DeepLabV3 segmenters: torchvision's ResNet-50 model and a light ResNet-18 variant.

Both are wrapped in :class:`Segmenter`, whose forward maps images [B, 3, H, W] to logits
[B, K, H, W] at the input size, so training and inference code serve either.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import ResNet50_Weights
from torchvision.models.segmentation import deeplabv3_resnet50
from torchvision.models.segmentation.deeplabv3 import DeepLabHead

from wsss.config import SEGMENTER_ARCHS as ARCHS
from wsss.models.backbones import build_backbone, load_local_weights

# DeepLabV3's ASPP rates for output stride 16 (the ResNet-18 trunk); torchvision's ResNet-50
# model runs at output stride 8 with its own rates (12, 24, 36).
OS16_RATES = (6, 12, 18)
# The classifier backbone (``model.backbone``) whose weights each segmenter's trunk can take.
TRUNK_BACKBONES = {"deeplabv3_resnet18": "resnet18", "deeplabv3_resnet50": "resnet50"}


class Segmenter(nn.Module):
    """Trunk -> DeepLab head -> bilinear upsampling.

    ``trunk`` maps images [B, 3, H, W] to features [B, F, h, w] (or a dict with ``"out"``, as
    torchvision's backbones return); ``head`` maps them to logits [B, K, h, w].
    """

    def __init__(self, trunk: nn.Module, head: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = head
        self.num_classes = num_classes

    def low_res_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits [B, K, h, w] at the head's resolution (h = H / output stride)."""
        features = self.trunk(images)
        if isinstance(features, dict):
            features = features["out"]
        return self.head(features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits [B, K, H, W] for images [B, 3, H, W]."""
        logits = self.low_res_logits(images)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear",
                             align_corners=False)


def build_segmenter(arch: str, num_classes: int,
                    pretrained_backbone: str | None = None) -> Segmenter:
    """Build a DeepLabV3 segmenter for ``num_classes`` dataset classes.

    Args:
        arch: ``deeplabv3_resnet50`` (torchvision's model, output stride 8) or
            ``deeplabv3_resnet18`` (the project's ResNet-18 trunk at output stride 16 with
            torchvision's ``DeepLabHead`` on its 512 channels).
        num_classes: output channels K (all dataset classes, background included).
        pretrained_backbone: None (random init), ``"imagenet"`` (torchvision weights; must be
            cached or reachable) or a path to a local torchvision ResNet state dict.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if arch == "deeplabv3_resnet18":
        trunk = build_backbone("resnet18", pretrained_backbone)
        head = DeepLabHead(trunk.out_channels, num_classes, atrous_rates=OS16_RATES)
        return Segmenter(trunk, head, num_classes)
    if arch == "deeplabv3_resnet50":
        weights = ResNet50_Weights.IMAGENET1K_V1 if pretrained_backbone == "imagenet" else None
        model = deeplabv3_resnet50(weights=None, weights_backbone=weights,
                                   num_classes=num_classes, aux_loss=False)
        if pretrained_backbone not in (None, "imagenet"):
            load_local_weights(model.backbone, Path(pretrained_backbone))
        return Segmenter(model.backbone, model.classifier, num_classes)
    raise ValueError(f"unknown segmenter '{arch}'; choose one of: {', '.join(ARCHS)}")


@contextlib.contextmanager
def single_value_batch_norm_in_eval(model: nn.Module) -> Iterator[None]:
    """Inside the block, a training-mode batch norm layer whose input holds a single value per
    channel (B x H x W == 1, e.g. ASPP's image pooling on a one-image batch) normalises with
    its running statistics, as in eval mode, instead of failing.

    PyTorch's ``BatchNorm`` raises "Expected more than 1 value per channel when training" for
    such inputs: batch statistics of one value are undefined. Other layers keep training
    statistics. The hooks are removed when the block ends.
    """
    def before(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0]
        if module.training and x.numel() // max(x.shape[1], 1) == 1:
            module.training = False
            module._wsss_single_value = True  # restored by after()

    def after(module: nn.Module, *_: Any) -> None:
        if getattr(module, "_wsss_single_value", False):
            module.training = True
            del module._wsss_single_value

    handles = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            handles += [module.register_forward_pre_hook(before),
                        module.register_forward_hook(after)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for module in model.modules():  # a forward that raised left its layer in eval mode
            after(module)


def trunk_state(backbone_state: dict[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """A :class:`~wsss.models.backbones.Backbone`'s state dict under the names of ``arch``'s
    trunk: the same for ``deeplabv3_resnet18`` (its trunk is such a backbone); for
    ``deeplabv3_resnet50`` torchvision's ``conv1`` / ``bn1`` instead of ``stem.0`` / ``stem.1``.
    """
    if arch == "deeplabv3_resnet18":
        return dict(backbone_state)
    renamed = {"stem.0.": "conv1.", "stem.1.": "bn1."}
    out = {}
    for key, value in backbone_state.items():
        prefix = next((p for p in renamed if key.startswith(p)), None)
        out[renamed[prefix] + key[len(prefix):] if prefix else key] = value
    return out
