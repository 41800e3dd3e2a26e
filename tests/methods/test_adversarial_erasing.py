"""Adversarial erasing: round k+1 never sees mined pixels, per-class early stop, union of maps.

Rounds here are tiny transparent classifiers (class c's map = mean intensity of channel c over
16x16 cells) so that what each round mines is known in advance: a bright and a dim blob of
class 0; round 1 mines the bright blob, round 2 (on the erased image) the dim one.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsss.config import ConfigError, ModelConfig
from wsss.methods import get_method
from wsss.methods.adversarial_erasing import ERASE_FILL, ErasingClassifier


class CellClassifier(nn.Module):
    """class_maps(x) [B, 3, H/16, W/16] = identity 1x1 conv of 16x16 mean-pooled channels."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, 3, 1)
        nn.init.eye_(self.head.weight.data.view(3, 3))
        nn.init.zeros_(self.head.bias)

    def class_maps(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(F.avg_pool2d(images, 16))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.class_maps(images).mean(dim=(2, 3))


def _setup(steps=2, active=1):
    method = get_method("adversarial_erasing")(3, {"steps": steps, "threshold": 0.5})
    model = ErasingClassifier([CellClassifier() for _ in range(steps)]).eval()
    method.prepare_round(model, active)
    images = torch.full((1, 3, 64, 64), 0.05)
    images[0, 0, :16, :16] = 4.0     # bright part of class 0
    images[0, 0, 32:48, 32:48] = 2.0  # dim body of class 0
    labels = torch.tensor([[1.0, 0.0, 0.0]])
    return method, model, images, labels


def _round_input(method, model, images, labels, active):
    seen = {}
    model.rounds[active].register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    method.training_loss(model, images, labels, epoch=0)
    return seen["x"]


def test_round_two_never_sees_the_pixels_round_one_mined():
    method, model, images, labels = _setup(steps=2, active=1)
    seen = _round_input(method, model, images, labels, active=1)
    assert (seen[0, :, 2:11, 2:11] == ERASE_FILL).all()      # bright blob erased (its core:
    # bilinear upsampling of the 4x4 map softens the block's corners below the threshold)
    assert torch.equal(seen[0, :, 32:48, 32:48], images[0, :, 32:48, 32:48])  # dim one kept


def test_round_three_never_sees_what_rounds_one_and_two_mined():
    method, model, images, labels = _setup(steps=3, active=2)
    seen = _round_input(method, model, images, labels, active=2)
    assert (seen[0, :, 2:11, 2:11] == ERASE_FILL).all()
    assert (seen[0, :, 36:44, 36:44] == ERASE_FILL).all()
    erased = seen == ERASE_FILL
    assert torch.equal(seen[~erased], images[~erased])       # nothing else touched


def test_first_round_trains_on_untouched_images():
    method, model, images, labels = _setup(steps=2, active=0)
    assert torch.equal(_round_input(method, model, images, labels, active=0), images)


def test_only_the_active_round_trains():
    method, model, _, _ = _setup(steps=3, active=1)
    trainable = [[p.requires_grad for p in r.parameters()] for r in model.rounds]
    assert trainable == [[False, False], [True, True], [False, False]]


def test_map_is_the_union_of_the_rounds_maps():
    method, model, images, labels = _setup(steps=2, active=1)
    with torch.no_grad():
        union = method.class_maps(model, images, labels)
        method.prepare_round(model, 0)  # only round 1 trained: its map alone
        first = method.class_maps(model, images, labels)
    assert first[0, 0, 0, 0] == pytest.approx(1.0, abs=1e-3)
    assert first[0, 0, 2, 2] == pytest.approx(0.5, abs=1e-2)   # dim body half-lit by round 1
    assert union[0, 0, 2, 2] == pytest.approx(1.0, abs=1e-3)   # ... fully lit after erasing
    assert torch.all(union >= first - 1e-6)
    assert torch.all(union[:, 1:] == 0)                         # absent classes stay empty


def test_round_that_no_longer_recognises_a_class_stops_mining_it():
    method, model, images, labels = _setup(steps=3, active=2)
    model.rounds[1].head.bias.data[0] = -10.0  # round 2 no longer recognises class 0
    seen = _round_input(method, model, images, labels, active=2)
    assert torch.equal(seen[0, :, 32:48, 32:48], images[0, :, 32:48, 32:48])  # not mined
    with torch.no_grad():
        union = method.class_maps(model, images, labels)
    assert union[0, 0, 2, 2] < 0.6  # round 2's map of the dim body was not added


def test_real_model_builds_one_classifier_per_step():
    method = get_method("adversarial_erasing")(4, {"steps": 3})
    model = method.build_model(ModelConfig(backbone="resnet18"))
    assert len(model.rounds) == 3 and method.num_rounds == 3
    assert "gradcam" not in method.supported_map_kinds


@pytest.mark.parametrize("params, key", [({"steps": 0}, "steps"), ({"threshold": 1.0}, "threshold")])
def test_invalid_params(params, key):
    with pytest.raises(ConfigError, match=key):
        get_method("adversarial_erasing").parse_params(params)
