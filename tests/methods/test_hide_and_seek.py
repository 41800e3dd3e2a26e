"""Hide-and-Seek: patch hiding statistics, fill values, fresh draws, nothing hidden at eval."""

from __future__ import annotations

import pytest
import torch

import wsss.methods.hide_and_seek as hs
from wsss.config import ConfigError, ModelConfig
from wsss.methods import get_method


def test_hidden_fraction_is_about_hide_prob() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(25, 3, 8, 8)
    _, keep = hs.hide_patches(images, 0.3, 4, generator=generator)
    patches = keep[:, 0, ::2, ::2]  # one pixel per 2x2 patch: 25 * 16 = 400 patches
    assert patches.numel() == 400
    assert abs(1.0 - patches.float().mean().item() - 0.3) < 0.05


def test_hidden_patches_are_filled_and_kept_ones_untouched() -> None:
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(6, 3, 10, 10)
    hidden, keep = hs.hide_patches(images, 0.5, 3, generator=generator, fill=0.25)
    assert keep.shape == (6, 1, 10, 10) and keep.dtype == torch.bool
    bounds = [(0, 4), (4, 7), (7, 10)]  # 3 patches over 10 pixels
    for top, bottom in bounds:
        for left, right in bounds:
            patch = keep[:, :, top:bottom, left:right]
            assert (patch == patch[:, :, :1, :1]).all()  # a patch is hidden or kept as a whole
    keep3 = keep.expand_as(images)
    assert (hidden[~keep3] == 0.25).all()
    assert torch.equal(hidden[keep3], images[keep3])
    assert 0 < (~keep).sum() < keep.numel()


def test_default_fill_is_per_channel_batch_mean() -> None:
    images = torch.randn(4, 3, 8, 8) + torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1, 1)
    hidden, keep = hs.hide_patches(images, 0.9, 2, generator=torch.Generator().manual_seed(1))
    mean = images.mean(dim=(0, 2, 3))
    b, _, y, x = (~keep).nonzero()[0].tolist()
    torch.testing.assert_close(hidden[b, :, y, x], mean)


def test_draws_differ_between_calls_and_zero_prob_hides_nothing() -> None:
    images = torch.randn(8, 3, 16, 16)
    _, first = hs.hide_patches(images, 0.5, 4)
    _, second = hs.hide_patches(images, 0.5, 4)
    assert not torch.equal(first, second)
    hidden, keep = hs.hide_patches(images, 0.0, 4)
    assert keep.all() and torch.equal(hidden, images)


def test_training_hides_but_maps_and_logits_do_not(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = hs.hide_patches

    def counting_hide(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(hs, "hide_patches", counting_hide)
    torch.manual_seed(0)
    method = get_method("hide_and_seek")(3, {"hide_prob": 0.5, "grid_size": 2})
    model = method.build_model(ModelConfig()).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        maps = method.class_maps(model, images)
        model(images)
        torch.testing.assert_close(maps, model.head(model.backbone(images)))
    assert calls == []
    method.training_loss(model, images, torch.tensor([[1.0, 0, 0], [0, 1, 1]]), epoch=0)
    assert calls == [1]


@pytest.mark.parametrize("params, key", [
    ({"hide_prob": -0.1}, "hide_prob"),
    ({"hide_prob": 1.0}, "hide_prob"),
    ({"hide_prob": 1.5}, "hide_prob"),
    ({"grid_size": 0}, "grid_size"),
    ({"grid_size": 2.5}, "grid_size"),
])
def test_invalid_params_name_the_key(params: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"method.params.{key}"):
        get_method("hide_and_seek").parse_params(params)
