"""Mixup-CAM: exact mixing of images and labels; the spatial-entropy term's sign and loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wsss.config import ConfigError, ModelConfig
from wsss.methods import get_method
from wsss.methods.mixup_cam import mix_batch, spatial_concentration


def test_mix_batch_mixes_images_and_labels_with_the_same_lambda() -> None:
    images = torch.randn(4, 3, 5, 5)
    labels = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]])
    perm, lam = torch.tensor([2, 0, 3, 1]), 0.3
    mixed_images, mixed_labels = mix_batch(images, labels, lam, perm)
    assert torch.equal(mixed_labels, lam * labels + (1 - lam) * labels[perm])
    assert torch.equal(mixed_images, lam * images + (1 - lam) * images[perm])
    torch.testing.assert_close(mixed_labels[0], torch.tensor([0.3, 0.0, 0.7]))


def test_entropy_term_penalises_peaked_maps_and_its_gradient_spreads_them() -> None:
    weights = torch.ones(1, 1)
    uniform = torch.zeros(1, 1, 4, 4)
    peaked = torch.zeros(1, 1, 4, 4)
    peaked[0, 0, 1, 2] = 8.0
    assert spatial_concentration(uniform, weights).abs() < 1e-6
    assert spatial_concentration(peaked, weights) > 0.5
    maps = peaked.clone().requires_grad_(True)
    spatial_concentration(maps, weights).backward()
    stepped = maps.detach() - 10.0 * maps.grad
    assert spatial_concentration(stepped, weights) < spatial_concentration(peaked, weights)
    assert stepped[0, 0, 1, 2] < 8.0 and (stepped[0, 0, 0, 0] > 0)


def test_entropy_term_ignores_absent_classes() -> None:
    maps = torch.zeros(1, 2, 3, 3)
    maps[0, 1, 0, 0] = 10.0  # peaked, but weight 0
    assert spatial_concentration(maps, torch.tensor([[1.0, 0.0]])).abs() < 1e-6


def test_training_loss_is_soft_bce_on_mixed_batch_plus_weighted_entropy() -> None:
    torch.manual_seed(0)
    method = get_method("mixup_cam")(3, {"alpha": 0.4, "entropy_weight": 0.5})
    model = method.build_model(ModelConfig()).eval()
    images, labels = torch.randn(3, 3, 32, 32), torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1]])
    torch.manual_seed(7)
    loss, logs = method.training_loss(model, images, labels, epoch=0)
    torch.manual_seed(7)
    alpha = torch.tensor(0.4)
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    mixed_images, mixed_labels = mix_batch(images, labels, lam, torch.randperm(3))
    with torch.no_grad():
        maps = model.class_maps(mixed_images)
    expected = (F.multilabel_soft_margin_loss(maps.mean(dim=(2, 3)), mixed_labels)
                + 0.5 * spatial_concentration(maps, mixed_labels))
    assert logs["mixup_lam"] == lam
    torch.testing.assert_close(loss.detach(), expected)


@pytest.mark.parametrize("params, key", [
    ({"alpha": 0.0}, "alpha"),
    ({"alpha": -1.0}, "alpha"),
    ({"entropy_weight": -0.1}, "entropy_weight"),
])
def test_invalid_params_name_the_key(params: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"method.params.{key}"):
        get_method("mixup_cam").parse_params(params)
