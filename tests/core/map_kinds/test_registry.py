"""The contract every registered map kind keeps, and a guard that each also has its own tests.

Parametrized over ``wsss.core.map_kinds.MAP_KINDS``: a kind is tested here the moment it is
registered."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from wsss.core.map_kinds import MAP_KINDS, map_kind_for
from wsss.errors import ConfigError
from wsss.methods import get_method

KINDS = MAP_KINDS.names()
LAYER_KINDS = [name for name in KINDS if MAP_KINDS[name].layers]


@pytest.mark.parametrize("name", KINDS)
def test_every_map_kind_has_behaviour_tests(name):
    path = Path(__file__).parent / f"test_{name}.py"
    assert path.is_file(), f"map kind '{name}' has no behaviour tests ({path.name} missing)"
    assert "def test_" in path.read_text(), f"{path.name} defines no test"


@pytest.mark.parametrize("name", KINDS)
def test_raw_maps_have_one_map_per_class_at_the_layers_resolution(model, images, labels, name):
    method = get_method("cam")(labels.shape[1])
    kind, layer = map_kind_for(method, name, "layer3" if MAP_KINDS[name].layers else None)
    maps = kind.raw_maps(model, images, labels, layer, source=method)
    # 64 x 96 images: layer3 and the last features (dilated layer4) are at stride 16
    assert maps.shape == (3, labels.shape[1], 4, 6) and torch.isfinite(maps).all()


@pytest.mark.parametrize("name", LAYER_KINDS)
def test_layer_kinds_give_non_negative_maps_of_present_classes_only(model, images, labels, name):
    maps = MAP_KINDS[name]().raw_maps(model, images, labels, "layer3")
    assert (maps >= 0).all() and torch.all(maps[labels == 0] == 0)
    assert maps.amax(dim=(2, 3))[labels > 0].min() > 0
    empty = MAP_KINDS[name]().raw_maps(model, images, torch.zeros_like(labels), "layer3")
    assert torch.all(empty == 0)


@pytest.mark.parametrize("name", LAYER_KINDS)
def test_layer_kinds_need_autograd(model, images, labels, name):
    with torch.inference_mode(), pytest.raises(RuntimeError, match="need autograd"):
        MAP_KINDS[name]().raw_maps(model, images, labels, "layer4")


def test_unknown_kind_lists_the_registered_ones():
    with pytest.raises(ConfigError, match="unknown map kind 'heatmap'; choose one of: "
                                          + ", ".join(KINDS)):
        map_kind_for(get_method("cam")(3), "heatmap")


@pytest.mark.parametrize("name", LAYER_KINDS)
def test_a_layer_the_kind_cannot_weight_is_refused(name):
    with pytest.raises(ConfigError, match=f"map kind '{name}' cannot weight layer 'fc'"):
        map_kind_for(get_method("cam")(3), name, "fc")


def test_each_method_gets_its_default_kind_and_layer_and_every_kind_it_supports():
    gradcam = get_method("gradcam")(3, {"layer": "layer3"})
    kind, layer = map_kind_for(gradcam)
    assert kind.name == "gradcam" and layer == "layer3"
    assert get_method("cam")(3).supported_map_kinds == KINDS
    erasing = get_method("adversarial_erasing")(3)  # one backbone per round: no layer to weight
    assert erasing.supported_map_kinds == tuple(n for n in KINDS if n not in LAYER_KINDS)
    for name in LAYER_KINDS:
        with pytest.raises(ConfigError, match="gives cam maps only, not " + name):
            map_kind_for(erasing, name)
