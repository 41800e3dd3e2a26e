"""MDC: dilated branches have different receptive fields; map(d=1) + mean(others) fusion."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wsss.config import ConfigError, ModelConfig, load_config
from wsss.methods import get_method
from wsss.methods.mdc import combine_branch_maps


def _model(dilations: tuple[int, ...]):
    torch.manual_seed(0)
    method = get_method("mdc")(3, {"dilations": dilations})
    return method, method.build_model(ModelConfig()).eval()


def _changed_offsets(branch: torch.nn.Module, centre: int) -> set[tuple[int, int]]:
    """Offsets (dy, dx) from ``centre`` where the branch output moves when one input moves."""
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(1, 512, 2 * centre + 1, 2 * centre + 1, generator=generator)
    bumped = features.clone()
    bumped[0, :, centre, centre] += 5.0
    with torch.no_grad():
        diff = (branch(bumped) - branch(features)).abs().amax(dim=1)[0]
    return {(y - centre, x - centre) for y, x in (diff > 1e-6).nonzero().tolist()}


def test_branches_have_dilation_sized_receptive_fields() -> None:
    _, model = _model((1, 3))
    near = _changed_offsets(model.branches[0], centre=5)
    far = _changed_offsets(model.branches[1], centre=5)
    assert near <= {(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
    assert (1, 0) in near and (-1, -1) in near
    assert far <= {(dy, dx) for dy in (-3, 0, 3) for dx in (-3, 0, 3)}
    assert (3, 0) in far and (-3, 3) in far


@pytest.mark.parametrize("dilations, base", [((1, 3, 6, 9), 0), ((3, 1, 6), 1), ((1,), 0)])
def test_fused_map_is_base_plus_mean_of_others(dilations: tuple[int, ...], base: int) -> None:
    _, model = _model(dilations)
    features = torch.randn(2, 512, 5, 5)
    with torch.no_grad():
        maps = model.branch_maps(features)
        fused = model.maps_from_features(features)
    others = [maps[i] for i in range(len(dilations)) if i != base]
    expected = maps[base] + (sum(others) / len(others) if others else 0.0)
    assert maps.shape == (len(dilations), 2, 3, 5, 5)
    torch.testing.assert_close(fused, expected)
    torch.testing.assert_close(combine_branch_maps(maps, base), expected)


def test_loss_is_sum_of_branch_losses() -> None:
    method, model = _model((1, 3, 6))
    images, labels = torch.randn(2, 3, 64, 64), torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    loss, logs = method.training_loss(model, images, labels, epoch=0)
    with torch.no_grad():
        per_branch = model(images, per_branch=True)
    expected = sum(F.multilabel_soft_margin_loss(logits, labels) for logits in per_branch)
    assert per_branch.shape == (3, 2, 3)
    torch.testing.assert_close(loss.detach(), expected)
    assert set(logs) == {"cls_loss", "cls_loss_d1", "cls_loss_d3", "cls_loss_d6"}


def test_dilations_from_yaml_lists_become_tuples() -> None:
    cfg = load_config(None, ["method.name=mdc", "method.params.dilations=[1, 2]"])
    assert get_method("mdc").parse_params(cfg.method.params).dilations == (1, 2)


@pytest.mark.parametrize("dilations", [(), [], (0, 1), (3, 6), (1, 1), (1, -2), "1,3", 3])
def test_invalid_dilations_are_refused(dilations: object) -> None:
    with pytest.raises(ConfigError, match="method.params.dilations"):
        get_method("mdc").parse_params({"dilations": dilations})
