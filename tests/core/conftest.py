"""What the map tests share: an untrained CAM classifier with varied maps, and a batch."""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from torch import nn

from wsss.models import CamClassifier, build_backbone

NUM_CLASSES = 5


def _random_classifier(seed: int = 0) -> CamClassifier:
    """An untrained ResNet-18 CAM classifier of ``NUM_CLASSES`` classes whose random batch-norm
    statistics give varied, non-trivial maps; in eval mode."""
    torch.manual_seed(seed)
    model = CamClassifier(build_backbone("resnet18"), NUM_CLASSES)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
                module.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=generator))
    return model.eval()


@pytest.fixture(scope="session")
def random_classifier() -> Callable[[int], CamClassifier]:
    """``random_classifier(seed)``: a new untrained classifier (see ``_random_classifier``)."""
    return _random_classifier


@pytest.fixture(scope="module")
def model() -> CamClassifier:
    return _random_classifier()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """[3, 3, 64, 96] standard-normal images."""
    return torch.randn(3, 3, 64, 96, generator=torch.Generator().manual_seed(0))
