"""ACoL: feature erasing driven by branch A's maps of the true classes; max fusion at test."""

from __future__ import annotations

import pytest
import torch

from wsss.config import ConfigError, ModelConfig
from wsss.methods import get_method
from wsss.methods.acol import erase_features
from wsss.models.heads import max_normalise


def test_erasing_hits_exactly_the_salient_regions_of_true_classes() -> None:
    features = torch.randn(1, 5, 6, 6) + 3.0  # no exact zeros before erasing
    maps_a = torch.zeros(1, 3, 6, 6)
    maps_a[0, 0, 1, 1], maps_a[0, 0, 1, 2] = 1.0, 0.5  # true class: 1.0 > delta, 0.5 below
    maps_a[0, 1, 4, 4] = 5.0  # absent class: never erases
    maps_a[0, 2, 3, 3], maps_a[0, 2, 0, 5] = 2.0, 1.3  # true class: 1.0 and 0.65 normalised
    labels = torch.tensor([[1.0, 0.0, 1.0]])
    erased = erase_features(features, maps_a, labels, delta=0.6)
    expected = torch.zeros(6, 6, dtype=torch.bool)
    expected[1, 1] = expected[3, 3] = expected[0, 5] = True
    assert (erased[0, :, expected] == 0).all()
    assert torch.equal(erased[0, :, ~expected], features[0, :, ~expected])


def test_erase_mask_matches_normalised_threshold_on_random_maps() -> None:
    generator = torch.Generator().manual_seed(0)
    features = torch.rand(2, 4, 7, 7, generator=generator) + 0.1
    maps_a = torch.randn(2, 3, 7, 7, generator=generator)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    erased = erase_features(features, maps_a, labels, delta=0.4)
    salient = ((max_normalise(maps_a) > 0.4) & (labels[:, :, None, None] > 0.5)).any(dim=1)
    assert salient.any() and (~salient).any()
    assert torch.equal(erased == 0, salient.unsqueeze(1).expand_as(erased))


def test_branch_b_sees_erased_features_and_fused_map_is_the_max() -> None:
    torch.manual_seed(0)
    method = get_method("acol")(3, {"delta": 0.5})
    model = method.build_model(ModelConfig()).eval()
    images, labels = torch.randn(2, 3, 64, 64), torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    seen = []
    model.head_b.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    with torch.no_grad():
        features = model.backbone(images)
        model(images, labels=labels)
        expected = erase_features(features, model.head_a(features), labels, 0.5)
        torch.testing.assert_close(seen[0], expected)
        maps_a, maps_b = model.branch_maps(features)
        fused = model.maps_from_features(features)
        logits = model(images)
        gt_a, gt_b = model.branch_maps(features, labels)
        gt_fused = method.class_maps(model, images, labels)
    torch.testing.assert_close(fused, torch.maximum(maps_a.relu(), maps_b.relu()))
    torch.testing.assert_close(logits, fused.mean(dim=(2, 3)))
    torch.testing.assert_close(gt_fused, torch.maximum(gt_a.relu(), gt_b.relu()))


@pytest.mark.parametrize("delta", [0.0, 1.0, -0.2, 1.5])
def test_delta_outside_open_unit_interval_is_refused(delta: float) -> None:
    with pytest.raises(ConfigError, match="method.params.delta"):
        get_method("acol").parse_params({"delta": delta})
