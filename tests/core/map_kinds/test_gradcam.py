"""Grad-CAM: the same maps as pytorch-grad-cam's ``GradCAM``, and relu(CAM) at the last layer."""

from __future__ import annotations

import pytest
import torch

from wsss.core.map_kinds import MAP_KINDS
from wsss.methods import get_method


@pytest.mark.parametrize("layer", ["layer4", "layer3"])
def test_gradcam_matches_pytorch_grad_cam(compare_with_pytorch_grad_cam, layer):
    from pytorch_grad_cam import GradCAM

    assert compare_with_pytorch_grad_cam("gradcam", GradCAM, layer) >= 5  # not vacuous


def test_gradcam_at_last_layer_of_cam_classifier_is_relu_cam(model, images, labels):
    """With a linear 1x1 head, alpha^c = w_c / (h w), so Grad-CAM(layer4) = relu(CAM) / (h w)."""
    grad = MAP_KINDS["gradcam"]().raw_maps(model, images, labels, "layer4")
    cam = MAP_KINDS["cam"]().raw_maps(model, images, labels, "layer4",
                                      source=get_method("cam")(labels.shape[1]))
    expected = torch.relu(cam) / (cam.shape[-2] * cam.shape[-1]) * labels[:, :, None, None]
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6)
