"""LayerCAM: the same maps as pytorch-grad-cam's ``LayerCAM``, and what sets it apart from
Grad-CAM (each activation weighted by its own positive gradient)."""

from __future__ import annotations

import pytest
import torch

from wsss.core.map_kinds import MAP_KINDS


@pytest.mark.parametrize("layer", ["layer4", "layer3", "layer2"])
def test_layercam_matches_pytorch_grad_cam(compare_with_pytorch_grad_cam, layer):
    from pytorch_grad_cam import LayerCAM

    assert compare_with_pytorch_grad_cam("layercam", LayerCAM, layer) >= 5  # not vacuous


def test_layercam_at_the_last_layer_keeps_the_positive_head_weights(model, images, labels):
    """With a linear 1x1 head, d logit_c / d A_k = w_ck / (h w) everywhere, so LayerCAM(layer4)
    = relu(sum_k relu(w_ck) A_k) / (h w): only the channels that vote for the class count
    (Grad-CAM keeps the negative ones too)."""
    maps = MAP_KINDS["layercam"]().raw_maps(model, images, labels, "layer4")
    with torch.no_grad():
        features = model.backbone(images)
    weights = model.head.weight[:, :, 0, 0].clamp(min=0)  # [C, K]
    size = features.shape[-2] * features.shape[-1]
    expected = torch.relu(torch.einsum("ck,bkhw->bchw", weights, features)) / size
    torch.testing.assert_close(maps, expected * labels[:, :, None, None], rtol=1e-4, atol=1e-7)
    gradcam = MAP_KINDS["gradcam"]().raw_maps(model, images, labels, "layer4")
    assert (maps - gradcam).abs().max() > 1e-3 * gradcam.abs().max()  # another map


def test_layercam_weights_each_location_below_the_last_layer(model, images, labels):
    """At layer3 the gradients vary over the map: LayerCAM is not Grad-CAM up to a scale."""
    layercam = MAP_KINDS["layercam"]().raw_maps(model, images, labels, "layer3")
    gradcam = MAP_KINDS["gradcam"]().raw_maps(model, images, labels, "layer3")
    present = labels > 0.5
    a, b = layercam[present].flatten(1), gradcam[present].flatten(1)
    a = a / a.amax(dim=1, keepdim=True)
    b = b / b.amax(dim=1, keepdim=True).clamp(min=1e-12)
    assert (a - b).abs().amax(dim=1).min() > 1e-2
