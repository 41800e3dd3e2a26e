"""CAM and Grad-CAM behaviour: CAM is the head applied to the features; Grad-CAM's layer."""

from __future__ import annotations

import pytest
import torch

from wsss.core.maps import gradcam_maps
from wsss.config import ConfigError, ModelConfig
from wsss.methods import get_method


def _model(name: str, params: dict | None = None):
    torch.manual_seed(0)
    method = get_method(name)(3, params)
    return method, method.build_model(ModelConfig()).eval()


def test_cam_maps_are_head_weights_applied_to_features() -> None:
    method, model = _model("cam")
    images = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        features = model.backbone(images)
        maps = method.class_maps(model, images)
    weights = model.head.weight[:, :, 0, 0]  # [C, F]
    expected = torch.einsum("cf,bfhw->bchw", weights, features)
    assert maps.shape == (2, 3, 3, 4)
    torch.testing.assert_close(maps, expected, rtol=1e-4, atol=1e-5)


def test_gradcam_map_layer_follows_params() -> None:
    default, _ = _model("gradcam")
    method, model = _model("gradcam", {"layer": "layer1"})
    assert default.map_layer == "layer4" and method.map_layer == "layer1"
    assert method.default_map_kind == "gradcam"
    images, labels = torch.randn(1, 3, 64, 64), torch.tensor([[1.0, 0.0, 1.0]])
    assert gradcam_maps(model, images, labels, method.map_layer).shape == (1, 3, 16, 16)
    assert gradcam_maps(model, images, labels, default.map_layer).shape == (1, 3, 4, 4)
    with pytest.raises(ConfigError, match="gradcam layer 'fc'"):
        get_method("gradcam").parse_params({"layer": "fc"})
