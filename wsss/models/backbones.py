"""torchvision ResNet backbones with output stride 16 (dilated last stage)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision import models

_FEATURE_DIMS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}
STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")


class Backbone(nn.Module):
    """ResNet trunk without pooling/fc, output stride 16.

    ``forward(x)`` maps images [B, 3, H, W] to features [B, F, ceil(H/16), ceil(W/16)].
    ``forward_from(stage, x)`` runs the stages after ``stage`` (used by Grad-CAM to backpropagate
    only from the logits to the target layer).
    """

    def __init__(self, resnet: nn.Module, out_channels: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.layer1, self.layer2 = resnet.layer1, resnet.layer2
        self.layer3, self.layer4 = resnet.layer3, resnet.layer4
        self.out_channels = out_channels

    def forward_until(self, stage: str, x: torch.Tensor) -> torch.Tensor:
        """Run the stages up to and including ``stage``."""
        for name in STAGES[: _stage_index(stage) + 1]:
            x = getattr(self, name)(x)
        return x

    def forward_from(self, stage: str, x: torch.Tensor) -> torch.Tensor:
        """Run the stages strictly after ``stage``."""
        for name in STAGES[_stage_index(stage) + 1:]:
            x = getattr(self, name)(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_until("layer4", x)


def build_backbone(name: str = "resnet18", pretrained: str | None = None) -> Backbone:
    """Build a torchvision ResNet-18/34/50 trunk with output stride 16.

    Args:
        name: ``resnet18``, ``resnet34`` or ``resnet50``.
        pretrained: None (random init), ``"imagenet"`` (torchvision weights; needs them cached or
            reachable) or a path to a local state dict saved from a torchvision ResNet.
    """
    if name not in _FEATURE_DIMS:
        raise ValueError(f"unknown backbone '{name}'; choose one of: {', '.join(_FEATURE_DIMS)}")
    builder = getattr(models, name)
    weights = "DEFAULT" if pretrained == "imagenet" else None
    if name == "resnet50":
        resnet = builder(weights=weights, replace_stride_with_dilation=[False, False, True])
    else:
        resnet = builder(weights=weights)
        _dilate_basic_last_stage(resnet)
    if pretrained not in (None, "imagenet"):
        load_local_weights(resnet, Path(pretrained))
    return Backbone(resnet, _FEATURE_DIMS[name])


def _dilate_basic_last_stage(resnet: nn.Module) -> None:
    """BasicBlock ResNets refuse ``replace_stride_with_dilation``: set stride 1 on layer4's first
    block (conv1 and the downsample) and dilate the later blocks' 3x3 convs by 2, as torchvision
    does for Bottleneck ResNets."""
    block0 = resnet.layer4[0]
    block0.conv1.stride = (1, 1)
    block0.downsample[0].stride = (1, 1)
    for block in list(resnet.layer4)[1:]:
        for conv in (block.conv1, block.conv2):
            conv.dilation, conv.padding = (2, 2), (2, 2)


def load_local_weights(resnet: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    missing, unexpected = resnet.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing:
        raise ValueError(f"{path}: not a torchvision ResNet state dict (missing {missing[:3]}...)")


def _stage_index(stage: str) -> int:
    if stage not in STAGES:
        raise ValueError(f"unknown layer '{stage}'; choose one of: {', '.join(STAGES)}")
    return STAGES.index(stage)
