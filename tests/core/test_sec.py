"""SEC losses: GWRP limits, seeding on seeds only, expansion, constrain to the CRF."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsss.config import RefineConfig, SegmenterConfig
from wsss.core.sec import (constrain_loss, crf_targets, expansion_loss, gwrp, sec_losses,
                      seeding_loss)


def _probs(batch: int = 2, classes: int = 4, size: int = 6, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(batch, classes, size, size, generator=gen) * 2, dim=1)


def test_gwrp_is_max_at_decay_0_and_mean_at_decay_1() -> None:
    scores = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(gwrp(scores, 0.0), scores.amax(dim=(2, 3)))
    assert torch.allclose(gwrp(scores, 1.0), scores.mean(dim=(2, 3)))
    middle = gwrp(scores, 0.9)
    assert (middle <= scores.amax(dim=(2, 3)) + 1e-6).all()
    assert (middle >= scores.mean(dim=(2, 3)) - 1e-6).all()


def test_gwrp_per_class_decays() -> None:
    scores = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    decay = torch.tensor([[0.0, 1.0, 0.5], [1.0, 0.0, 0.5]])
    pooled = gwrp(scores, decay)
    assert torch.isclose(pooled[0, 0], scores[0, 0].max())
    assert torch.isclose(pooled[0, 1], scores[0, 1].mean())
    assert torch.isclose(pooled[1, 1], scores[1, 1].max())
    assert torch.isclose(pooled[1, 2], gwrp(scores[1:, 2:], 0.5)[0, 0])


def test_seeding_loss_uses_seed_pixels_only() -> None:
    probs = _probs().requires_grad_(True)
    seeds = torch.full((2, 6, 6), 255, dtype=torch.long)
    seeds[0, 1, 2], seeds[0, 3, 3], seeds[1, 0, 0] = 2, 0, 1
    loss = seeding_loss(probs, seeds)
    expected = 0.5 * (-(probs[0, 2, 1, 2].log() + probs[0, 0, 3, 3].log()) / 2
                      - probs[1, 1, 0, 0].log())
    assert torch.isclose(loss, expected)
    (grad,) = torch.autograd.grad(loss, probs)
    seeded = (seeds != 255)[:, None].expand_as(grad)
    assert (grad[~seeded] == 0).all() and (grad[seeded].abs().sum() > 0)
    assert seeding_loss(probs, torch.full_like(seeds, 255)).item() == 0.0


def test_expansion_loss_lower_when_present_classes_score_high() -> None:
    present = torch.tensor([[True, False, True, False]])  # background + class 2
    logits = torch.zeros(1, 4, 6, 6)
    good, bad = logits.clone(), logits.clone()
    good[:, 2, :3] = 4.0  # class 2 covers the top half, background the rest
    good[:, 0, 3:] = 4.0
    bad[:, 1] = 4.0  # an absent class everywhere
    loss_good = expansion_loss(torch.softmax(good, 1), present, True)
    loss_bad = expansion_loss(torch.softmax(bad, 1), present, True)
    assert loss_good < loss_bad
    no_bg = expansion_loss(torch.softmax(good, 1), present, False)
    assert torch.isfinite(no_bg)


def test_constrain_loss_zero_when_the_crf_changes_nothing() -> None:
    probs = _probs()
    assert constrain_loss(probs, probs).abs().item() < 1e-6
    assert constrain_loss(probs, _probs(seed=5)).item() > 0.0
    # with one present class the CRF has nothing to change: Q is that class everywhere
    images = torch.randint(0, 255, (2, 3, 24, 24), dtype=torch.uint8)
    one_hot = torch.zeros(2, 4, 6, 6)
    one_hot[:, 3] = 1.0
    present = torch.zeros(2, 4, dtype=torch.bool)
    present[:, 3] = True
    crf = crf_targets(images, one_hot, present, RefineConfig(), downscale=4.0)
    assert torch.equal(crf, one_hot)
    assert constrain_loss(one_hot, crf).abs().item() < 1e-6


def test_crf_targets_cover_present_classes_only() -> None:
    probs = _probs(size=8)
    images = torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8)
    present = torch.tensor([[True, False, True, True], [True, True, False, False]])
    crf = crf_targets(images, probs, present, RefineConfig(), downscale=4.0)
    assert crf.shape == probs.shape
    assert (crf[~present] == 0).all()
    assert torch.allclose(crf.sum(dim=1), torch.ones(2, 8, 8), atol=1e-4)


@pytest.mark.parametrize("has_background", [True, False])
def test_sec_losses_backpropagate(has_background: bool) -> None:
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 32, 32, generator=gen, requires_grad=True)
    images = torch.randint(0, 255, (2, 3, 32, 32), generator=gen, dtype=torch.uint8)
    seeds = torch.from_numpy(np.where(np.arange(32)[None, :, None] < 8, 2, 255)
                             .repeat(2, 0).repeat(32, 2)).long()
    present = torch.tensor([[True, False, True, False], [True, True, True, False]])
    terms = sec_losses(logits, images, seeds, present, has_background,
                       SegmenterConfig(mode="sec", sec_downscale=4), RefineConfig())
    assert set(terms) == {"seed", "expand", "constrain"}
    sum(terms.values()).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
