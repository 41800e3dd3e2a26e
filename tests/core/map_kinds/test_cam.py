"""CAM: the method's own class maps, so a method that changes them changes its CAM maps."""

from __future__ import annotations

import pytest
import torch

from wsss.core.map_kinds import MAP_KINDS
from wsss.methods import get_method


def test_cam_maps_are_the_methods_class_maps(model, images, labels):
    method = get_method("cam")(labels.shape[1])
    maps = MAP_KINDS["cam"]().raw_maps(model, images, labels, "layer4", source=method)
    with torch.no_grad():
        expected = model.head(model.backbone(images))
    torch.testing.assert_close(maps, expected)
    assert not maps.requires_grad


def test_cam_asks_the_method_for_its_maps(model, images, labels):
    """A method that makes its maps another way (several backbones, erased regions...) gets its
    own maps from the CAM kind."""
    class Doubled:
        def class_maps(self, model, images, labels=None):
            return 2 * model.class_maps(images)

    maps = MAP_KINDS["cam"]().raw_maps(model, images, labels, "layer4", source=Doubled())
    with torch.no_grad():
        torch.testing.assert_close(maps, 2 * model.class_maps(images))
    with pytest.raises(ValueError, match="pass the method"):
        MAP_KINDS["cam"]().raw_maps(model, images, labels, "layer4")
