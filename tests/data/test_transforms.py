"""Training crops at the working resolution: random rescale around ``data.image_scale``, crop,
padding that the losses ignore; maps and predictions computed back at that resolution."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2

from wsss.config import ConfigError, load_config
from wsss.data.transforms import (IMAGENET_MEAN, MEAN_COLOUR, RandomRescale, scale_crop_flip,
                                  train_transform)
from wsss.data.palette import IGNORE_INDEX


def _pair(height: int = 40, width: int = 60) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    """An image whose red channel is its column index and a mask of class = column // 20."""
    columns = torch.arange(width).repeat(height, 1)
    image = torch.stack([columns, columns.flip(-1), torch.full_like(columns, 7)]).to(torch.uint8)
    return tv_tensors.Image(image), tv_tensors.Mask(columns // 20)


def test_random_rescale_draws_the_factor_from_its_range_of_the_images_own_size():
    torch.manual_seed(0)
    image, mask = _pair(40, 60)
    transform = RandomRescale(0.5, 1.5)
    sizes = [transform(image, mask) for _ in range(200)]
    heights = np.array([out[0].shape[-2] for out in sizes])
    widths = np.array([out[0].shape[-1] for out in sizes])
    assert heights.min() >= 20 and heights.max() <= 60 and widths.max() <= 90
    assert heights.min() <= 24 and heights.max() >= 56  # the whole range is used
    assert np.abs(widths - 1.5 * heights).max() <= 1  # the aspect ratio is kept (rounding)
    for out_image, out_mask in sizes[:20]:
        assert out_image.shape[-2:] == out_mask.shape[-2:]
        assert set(out_mask.unique().tolist()) <= {0, 1, 2}  # nearest: no blended labels
    with pytest.raises(ValueError, match="low <= high"):
        RandomRescale(1.5, 0.5)


def test_the_training_augmentation_repeats_under_torch_manual_seed():
    """A training run seeds torch (``train.seed``) and nothing else: the augmentation must draw
    every random choice from torch, whatever state Python's own generator is in."""
    import random

    image, mask = _pair(40, 60)
    transform = train_transform(32, 1.0, (0.5, 1.5))
    runs = []
    for python_seed in (1, 2):
        random.seed(python_seed)
        torch.manual_seed(0)
        runs.append([transform(image, mask) for _ in range(8)])
    for (image_a, mask_a), (image_b, mask_b) in zip(*runs):
        assert torch.equal(image_a, image_b) and torch.equal(mask_a, mask_b)
    assert len({out[0].sum().item() for out in runs[0]}) > 1  # still random across draws


def test_crops_are_padded_with_the_mean_colour_and_ignored_mask():
    torch.manual_seed(0)
    image, mask = _pair(40, 60)
    transform = v2.Compose(scale_crop_flip(64, image_scale=1.0, scale_range=(1.0, 1.0)))
    out_image, out_mask = transform(image, mask)
    assert out_image.shape == (3, 64, 64) and out_mask.shape == (64, 64)
    padded = out_mask == IGNORE_INDEX
    assert padded.sum() == 64 * 64 - 40 * 60  # exactly the pixels outside the image
    assert (out_image[:, padded] == torch.tensor(MEAN_COLOUR)[:, None]).all()
    # normalised, the padding is zero: it carries no colour into the classifier
    normalised, _ = train_transform(64, 1.0, (1.0, 1.0))(image, mask)
    assert normalised.dtype == torch.float32 and normalised.shape == (3, 64, 64)
    assert MEAN_COLOUR == tuple(round(255 * m) for m in IMAGENET_MEAN)


def test_objects_in_training_crops_have_the_size_maps_are_computed_at():
    """At image_scale 0.5 a 20-px wide stripe is 10 px in the crop (5-15 px with the range)."""
    torch.manual_seed(0)
    image, mask = _pair(80, 120)
    exact = v2.Compose(scale_crop_flip(32, image_scale=0.5, scale_range=(1.0, 1.0)))
    for _ in range(10):
        _, out_mask = exact(image, mask)
        counts = torch.bincount(out_mask[0])[:IGNORE_INDEX]
        present = counts[counts > 0]
        assert (present[1:-1] == 10).all()  # stripes not cut by the crop's edges are 10 px
        assert present.max() == 10
    jittered = v2.Compose(scale_crop_flip(64, image_scale=0.5, scale_range=(0.5, 1.5)))
    widest = []
    for _ in range(40):
        _, out_mask = jittered(image, mask)
        row = out_mask[(out_mask != IGNORE_INDEX).sum(dim=1).argmax()]  # a row inside the image
        widest.append(int(torch.bincount(row)[:IGNORE_INDEX].max()))
    assert 4 <= min(widest) and max(widest) <= 16  # 20 px x 0.5 x [0.5, 1.5] (+1 rounding)
    assert max(widest) - min(widest) >= 6  # the scale is jittered


def test_image_scale_and_scale_range_are_validated():
    cfg = load_config(None, ["data.image_scale=0.5", "data.scale_range=[0.75, 1.25]"])
    assert cfg.data.image_scale == 0.5 and cfg.data.scale_range == (0.75, 1.25)
    with pytest.raises(ConfigError, match="data.image_scale"):
        load_config(None, ["data.image_scale=0"])
    with pytest.raises(ConfigError, match="data.scale_range"):
        load_config(None, ["data.scale_range=[1.5, 0.5]"])
    with pytest.raises(ConfigError, match="data.scale_range"):
        load_config(None, ["data.scale_range=[1.0]"])


def test_maps_and_predictions_are_computed_at_the_trained_scale():
    """``image_scale`` resizes the whole image before the network and the output comes back at
    the image's own size: the same as resizing by hand and upsampling."""
    from wsss.core import maps as cams
    from wsss.methods import get_method
    from wsss.models import CamClassifier, build_backbone
    from wsss.models.segmenter import build_segmenter
    from wsss.train.segmenter import predict_labels

    torch.manual_seed(0)
    images = torch.randn(2, 3, 64, 96)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    model = CamClassifier(build_backbone("resnet18"), 3).eval()
    method = get_method("cam")(3, {})
    at_half = cams.localization_maps(method, model, images, labels, image_scale=0.5)
    by_hand = cams.localization_maps(method, model, images, labels, scales=(0.5,))
    assert at_half.shape == (2, 3, 64, 96)
    torch.testing.assert_close(at_half, by_hand)
    full = cams.localization_maps(method, model, images, labels)
    assert not torch.allclose(at_half, full, atol=1e-3)

    segmenter = build_segmenter("deeplabv3_resnet18", 4).eval()
    pixels = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8)
    predicted = predict_labels(segmenter, pixels, image_scale=0.5)
    assert predicted.shape == (2, 64, 96)
    from wsss.data.transforms import normalize

    with torch.no_grad():
        small = segmenter(F.interpolate(normalize(pixels), size=(32, 48), mode="bilinear",
                                        align_corners=False)).softmax(dim=1)
    expected = F.interpolate(small, size=(64, 96), mode="bilinear",
                             align_corners=False).argmax(dim=1)
    assert torch.equal(predicted, expected)


def test_checkpoints_carry_the_scale_they_were_trained_at():
    from wsss.train.checkpoint import trained_image_scale

    assert trained_image_scale({"config": {"data": {"image_scale": 0.5}}}) == 0.5
    assert trained_image_scale({"config": {"data": {}}}) == 1.0  # written before the key
