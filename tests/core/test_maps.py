"""Localization maps of every registered kind: object localisation, TTA, the Grad-CAM engine's
single forward pass, map files (each kind's own tests: tests/core/map_kinds/)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsss.core import maps as cams
from wsss.core.map_kinds import MAP_KINDS
from wsss.methods import get_method
from wsss.models import CamClassifier, build_backbone

NUM_CLASSES = 5
LABELS = torch.tensor([[1, 0, 1, 0, 0],
                       [0, 1, 0, 0, 1],
                       [1, 1, 1, 0, 0]], dtype=torch.float32)


def _flip_equivariant_model(random_classifier, seed: int = 1) -> CamClassifier:
    """A model whose maps satisfy m(flip(x)) == flip(m(x)) for inputs of odd width.

    Every kernel is made left-right symmetric; with odd widths at every stride-2 stage
    (e.g. W = 65 -> 33 -> 17 -> 9 -> 5) the strided sampling is mirror-symmetric too.
    """
    model = random_classifier(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.copy_((module.weight + module.weight.flip(-1)) / 2)
    return model


# -- a map that peaks on the object ----------------------------------------------------------
def _square_image(top: int, left: int, size: int = 48, side: int = 128):
    image = torch.zeros(1, 3, side, side)
    image[:, :, top:top + size, left:left + size] = 1.0
    mask = torch.zeros(side, side, dtype=torch.bool)
    mask[top:top + size, left:left + size] = True
    return image, mask


@pytest.fixture(scope="module")
def square_detector() -> CamClassifier:
    """Class 1's head weight is the feature difference square-minus-background of one image."""
    torch.manual_seed(0)
    model = CamClassifier(build_backbone("resnet18"), 2).eval()
    image, mask = _square_image(16, 16)
    with torch.no_grad():
        features = model.backbone(image)[0]
        cover = F.adaptive_avg_pool2d(mask[None, None].float(), features.shape[-2:])[0, 0]
        direction = features[:, cover > 0.99].mean(1) - features[:, cover < 0.01].mean(1)
        model.head.weight.zero_()
        model.head.weight[1, :, 0, 0] = direction / direction.norm()
    return model


@pytest.mark.parametrize("kind", MAP_KINDS.names())
@pytest.mark.parametrize("top,left", [(70, 8), (8, 72)])
def test_map_peaks_on_the_object(square_detector, kind, top, left):
    model, method = square_detector, get_method("cam")(2)
    image, mask = _square_image(top, left)
    labels = torch.tensor([[0.0, 1.0]])
    for scales, flip in [((1.0,), False), ((1.0, 0.75), True)]:
        maps = cams.localization_maps(method, model, image, labels, kind=kind, scales=scales,
                                      flip=flip)
        target = maps[0, 1]
        assert mask.flatten()[target.argmax()]
        assert target[mask].mean() > target[~mask].mean() + 0.3
        assert torch.all(maps[0, 0] == 0)


# -- multi-scale, flip, batching -------------------------------------------------------------
@pytest.mark.parametrize("kind", MAP_KINDS.names())
def test_localization_maps_shape_range_and_normalisation(model, images, kind):
    method = get_method("cam")(NUM_CLASSES)
    labels = LABELS.clone()
    labels[1] = 0  # an image with no class at all
    maps = cams.localization_maps(method, model, images, labels, kind=kind,
                                  scales=(1.0, 0.5, 1.5), flip=True, out_size=(40, 50))
    assert maps.shape == (3, NUM_CLASSES, 40, 50) and maps.dtype == torch.float32
    assert maps.min() >= 0 and maps.max() <= 1
    assert torch.all(maps[labels == 0] == 0)
    peaks = maps.amax(dim=(2, 3))[labels > 0]
    assert torch.all((peaks > 1 - 1e-3) | (peaks == 0))
    assert (peaks > 1 - 1e-3).sum() >= 3
    assert cams.localization_maps(method, model, images, labels, kind=kind).shape[-2:] == (64, 96)


@pytest.mark.parametrize("kind", MAP_KINDS.names())
def test_flip_of_symmetric_input_equals_no_flip(kind, random_classifier):
    model, method = _flip_equivariant_model(random_classifier), get_method("cam")(NUM_CLASSES)
    half = torch.randn(2, 3, 48, 32, generator=torch.Generator().manual_seed(3))
    symmetric = torch.cat([half, half[..., :1], half.flip(-1)], dim=-1)  # width 65
    assert torch.equal(symmetric, symmetric.flip(-1))
    plain = cams.localization_maps(method, model, symmetric, LABELS[:2], kind=kind)
    flipped = cams.localization_maps(method, model, symmetric, LABELS[:2], kind=kind, flip=True)
    torch.testing.assert_close(flipped, plain, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", MAP_KINDS.names())
def test_flipped_maps_are_mirrored_back(kind, random_classifier):
    """For a mirror-equivariant model, flip TTA of any input equals the plain map."""
    model, method = _flip_equivariant_model(random_classifier), get_method("cam")(NUM_CLASSES)
    image = torch.randn(2, 3, 48, 65, generator=torch.Generator().manual_seed(4))
    plain = cams.localization_maps(method, model, image, LABELS[:2], kind=kind)
    assert not torch.allclose(plain, plain.flip(-1), atol=1e-2)  # the maps are not symmetric
    flipped = cams.localization_maps(method, model, image, LABELS[:2], kind=kind, flip=True)
    torch.testing.assert_close(flipped, plain, atol=1e-4, rtol=0)


@pytest.mark.parametrize("method_name", ["cam", "gradcam"])
def test_batched_maps_equal_per_image_maps(model, images, method_name):
    method = get_method(method_name)(NUM_CLASSES)
    kwargs = dict(scales=(1.0, 0.75), flip=True)
    batched = cams.localization_maps(method, model, images, LABELS, **kwargs)
    single = torch.cat([cams.localization_maps(method, model, images[i:i + 1], LABELS[i:i + 1],
                                               **kwargs) for i in range(len(images))])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-4)
    explicit = cams.localization_maps(method, model, images, LABELS, kind=method.default_map_kind,
                                      layer=method.map_layer, **kwargs)
    torch.testing.assert_close(batched, explicit)


def test_localization_maps_restores_training_mode(model, images):
    model.train()
    try:
        cams.localization_maps(get_method("cam")(NUM_CLASSES), model, images, LABELS)
        assert model.training
    finally:
        model.eval()


def test_unknown_kind_is_rejected(model, images):
    with pytest.raises(ValueError, match="gradcam"):
        cams.localization_maps(get_method("cam")(NUM_CLASSES), model, images, LABELS, kind="x")


# -- Grad-CAM differentiates the tail only, from one forward pass -------------------------------
@pytest.mark.parametrize("layer", ["layer4", "layer3"])
def test_gradcam_one_forward_and_tail_only_backward(images, layer, monkeypatch,
                                                     random_classifier):
    model = random_classifier(5)
    backbone = model.backbone
    calls = {"forward_until": 0, "forward_from": 0}

    def counted(name):
        original = getattr(backbone, name)

        def wrapper(*args, **kwargs):
            calls[name] += 1
            return original(*args, **kwargs)
        return wrapper

    for name in calls:
        monkeypatch.setattr(backbone, name, counted(name))
    grad_flags = []
    handle = backbone.layer2.register_forward_hook(
        lambda module, inputs, output: grad_flags.append(output.requires_grad))
    try:
        maps = cams.gradcam_maps(model, images, LABELS, layer)  # 3 classes for image 2
    finally:
        handle.remove()
    assert calls == {"forward_until": 1, "forward_from": 1}
    assert grad_flags == [False]  # the head of the network ran without autograd
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    assert torch.all(maps[LABELS == 0] == 0) and maps.amax(dim=(2, 3))[LABELS > 0].min() > 0


def test_gradcam_without_present_classes_is_zero(model, images):
    maps = cams.gradcam_maps(model, images, torch.zeros(3, NUM_CLASSES))
    assert maps.shape == (3, NUM_CLASSES, 4, 6) and torch.all(maps == 0)


# -- map files -------------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path):
    maps = torch.rand(2, 30, 40, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "sub" / "img_001.npz"
    cams.save_maps(path, maps, [3, 17])
    loaded, class_ids = cams.load_maps(path)
    assert loaded.dtype == np.float32 and loaded.shape == (2, 30, 40)
    np.testing.assert_allclose(loaded, maps.numpy(), atol=1e-3)
    assert class_ids == [3, 17]
    assert sorted(p.name for p in path.parent.iterdir()) == ["img_001.npz"]  # no temp files left
    cams.save_maps(path, np.zeros((0, 30, 40), np.float32), [])  # overwrite, no classes
    assert cams.load_maps(path)[0].shape == (0, 30, 40)


def test_save_rejects_mismatched_ids(tmp_path):
    with pytest.raises(ValueError, match="len"):
        cams.save_maps(tmp_path / "a.npz", np.zeros((2, 4, 4)), [1])


@pytest.mark.parametrize("content", [b"not a zip file", b"PK\x03\x04broken"])
def test_corrupt_map_file_names_the_file(tmp_path, content):
    path = tmp_path / "broken_map.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="broken_map.npz"):
        cams.load_maps(path)


def test_npy_or_wrong_keys_name_the_file(tmp_path):
    plain = tmp_path / "plain_array.npz"
    with open(plain, "wb") as handle:
        np.save(handle, np.zeros((2, 3, 3)))
    wrong = tmp_path / "wrong_keys.npz"
    np.savez(wrong, other=np.zeros(3))
    for path in (plain, wrong):
        with pytest.raises(ValueError, match=path.name):
            cams.load_maps(path)


def test_truncated_and_missing_map_files(tmp_path):
    path = tmp_path / "cut.npz"
    cams.save_maps(path, np.random.rand(2, 50, 50), [0, 1])
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="cut.npz"):
        cams.load_maps(path)
    with pytest.raises(FileNotFoundError, match="nothere.npz"):
        cams.load_maps(tmp_path / "nothere.npz")
