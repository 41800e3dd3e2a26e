"""SEAM: equivariance loss, PCM affinity/refinement, background channel, loss composition."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wsss.config import ConfigError, ModelConfig
from wsss.methods import get_method
from wsss.methods.seam import (equivariance_loss, pcm_affinity, pcm_refine, rescale,
                               with_background)


def test_equivariance_loss_is_zero_for_equivariant_maps_only() -> None:
    torch.manual_seed(0)
    images, size = torch.randn(2, 3, 8, 8), (4, 4)
    pointwise = nn.Conv2d(3, 4, kernel_size=1)
    spatial = nn.Conv2d(3, 4, kernel_size=3, padding=1)
    with torch.no_grad():
        assert equivariance_loss(pointwise(rescale(images, size)),
                                 rescale(pointwise(images), size)) < 1e-6
        assert equivariance_loss(spatial(rescale(images, size)),
                                 rescale(spatial(images), size)) > 1e-3
    maps = torch.rand(1, 2, 4, 4)
    assert equivariance_loss(maps, maps.clone()) == 0


def test_pcm_rows_are_convex_weights() -> None:
    generator = torch.Generator().manual_seed(0)
    embedding = torch.randn(2, 6, 5, 5, generator=generator)
    affinity = pcm_affinity(embedding)
    assert affinity.shape == (2, 25, 25) and (affinity >= 0).all()
    torch.testing.assert_close(affinity.sum(dim=2), torch.ones(2, 25), atol=1e-4, rtol=0)
    maps = torch.randn(2, 4, 5, 5, generator=generator)
    refined = pcm_refine(maps, affinity)
    low = maps.flatten(2).amin(dim=2)[:, :, None, None]
    high = maps.flatten(2).amax(dim=2)[:, :, None, None]
    assert ((refined >= low - 1e-5) & (refined <= high + 1e-5)).all()
    constant = torch.full((2, 4, 5, 5), 0.7)
    torch.testing.assert_close(pcm_refine(constant, affinity), constant, atol=1e-4, rtol=0)


def test_background_channel_is_one_minus_max_foreground() -> None:
    fg = torch.rand(2, 3, 4, 4)
    maps = with_background(fg)
    assert maps.shape == (2, 4, 4, 4)
    torch.testing.assert_close(maps[:, 0], 1.0 - fg.amax(dim=1))
    assert torch.equal(maps[:, 1:], fg)


def test_class_maps_are_refined_foreground_and_loss_is_weighted_sum() -> None:
    torch.manual_seed(0)
    method = get_method("seam")(3, {"scale": 0.5, "er_weight": 2.0, "ecr_weight": 3.0})
    model = method.build_model(ModelConfig()).eval()
    images, labels = torch.randn(2, 3, 64, 64), torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    with torch.no_grad():
        raw, refined = model.branch(images)
        maps = method.class_maps(model, images)
        raw1, _, raw2, refined2 = model(images, scale=0.5)
    assert refined.shape == (2, 4, 4, 4) and raw2.shape == (2, 3, 2, 2)
    assert refined2.shape == (2, 4, 2, 2)
    assert torch.equal(maps, refined[:, 1:]) and torch.equal(raw1, raw)
    loss, logs = method.training_loss(model, images, labels, epoch=0)
    expected = logs["cls_loss"] + 2.0 * logs["er_loss"] + 3.0 * logs["ecr_loss"]
    assert abs(float(loss.detach()) - expected) < 1e-4
    assert logs["er_loss"] > 0 and logs["ecr_loss"] > 0


@pytest.mark.parametrize("params, key", [
    ({"scale": 0.0}, "scale"),
    ({"scale": 1.0}, "scale"),
    ({"er_weight": -1.0}, "er_weight"),
    ({"ecr_weight": -0.5}, "ecr_weight"),
])
def test_invalid_params_name_the_key(params: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"method.params.{key}"):
        get_method("seam").parse_params(params)
