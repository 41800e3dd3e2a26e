"""Saliency guidance: foreground follows the saliency map, class follows the best seed."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from wsss.config import ConfigError, RefineConfig
from wsss.data.errors import DatasetError
from wsss.methods import get_method
from wsss.core.saliency import load_saliency, saliency_for, spectral_residual

NO_CRF = RefineConfig(crf=False)


def _scene():
    """Two present classes (ids 3, 5): seeds are small blobs; saliency covers two bodies."""
    maps = np.zeros((2, 40, 60), np.float32)
    maps[0, 10:14, 8:12] = 1.0   # class 3's seed (a small part of its body)
    maps[0, 10:30, 5:25] += 0.1  # weak CAM over the body
    maps[1, 20:24, 45:49] = 1.0  # class 5's seed
    maps[1, 15:35, 35:55] += 0.1  # weak CAM over its body
    saliency = np.zeros((40, 60), np.float32)
    saliency[8:32, 4:26] = 0.9   # body of object 1
    saliency[15:35, 35:55] = 0.8  # body of object 2
    return maps, [3, 5], saliency


def _method(**params):
    return get_method("saliency")(6, params)


def test_foreground_is_exactly_the_salient_region():
    maps, ids, saliency = _scene()
    mask = _method(threshold=0.5).pseudo_mask(None, maps, ids, True, NO_CRF, lambda s: saliency)
    assert np.array_equal(mask > 0, saliency > 0.5)
    assert (mask[8:32, 4:26] == 3).all()    # the whole body, not just the seed
    assert (mask[15:35, 35:55] == 5).all()


def test_plain_cam_masks_miss_the_bodies_that_saliency_recovers():
    maps, ids, saliency = _scene()
    plain = get_method("cam")(6).pseudo_mask(None, maps, ids, True, NO_CRF)
    guided = _method().pseudo_mask(None, maps, ids, True, NO_CRF, lambda s: saliency)
    assert (guided > 0).sum() > 3 * (plain > 0).sum()


def test_product_fusion_needs_saliency_and_a_seed():
    maps, ids, saliency = _scene()
    mask = _method(fusion="product").pseudo_mask(None, maps, ids, True, NO_CRF,
                                                 lambda s: saliency)
    assert (mask[10:14, 8:12] == 3).all()       # salient and seeded
    assert (mask[28:31, 20:25] == 0).all()      # salient, weak seed (0.9 * 0.1 < 0.5)
    assert (mask[:, 56:] == 0).all()            # not salient


def test_without_background_class_saliency_is_not_used():
    maps, ids, saliency = _scene()
    plain = get_method("cam")(6).pseudo_mask(None, maps, ids, False, NO_CRF)
    guided = _method().pseudo_mask(None, maps, ids, False, NO_CRF, lambda s: saliency)
    assert np.array_equal(plain, guided)


def test_spectral_residual_finds_the_odd_object():
    rng = np.random.default_rng(0)
    image = (120 + rng.integers(0, 10, (96, 128, 3))).astype(np.uint8)
    image[30:60, 70:100] = [250, 20, 20]
    sal = spectral_residual(image)
    inside = np.zeros(sal.shape, bool)
    inside[30:60, 70:100] = True
    assert sal.shape == (96, 128) and 0.0 <= sal.min() and sal.max() <= 1.0
    assert sal[inside].mean() > 2 * sal[~inside].mean()


def test_folder_maps_are_read_resized_and_preferred(tmp_path):
    (tmp_path / "SaliencyMaps").mkdir()
    Image.fromarray(np.full((20, 30), 255, np.uint8)).save(tmp_path / "SaliencyMaps/a.png")
    image = np.zeros((40, 60, 3), np.uint8)
    assert load_saliency(tmp_path, "a", (40, 60)).shape == (40, 60)
    assert saliency_for(tmp_path, "a", image).min() == pytest.approx(1.0)  # auto -> folder
    with pytest.raises(DatasetError, match=r"SaliencyMaps/b\.png"):
        saliency_for(tmp_path, "b", image, "folder")


def test_saliency_map_with_exif_orientation_is_read_upright(tmp_path):
    """A map stored sideways with EXIF Orientation 6 (turn 90 degrees clockwise to view) is
    turned upright like an image: its salient top-left block stays top-left."""
    upright = np.zeros((40, 60), np.uint8)
    upright[:10, :20] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "SaliencyMaps").mkdir()
    Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(
        tmp_path / "SaliencyMaps/a.png", exif=exif.tobytes())
    saliency = load_saliency(tmp_path, "a", (40, 60))
    assert np.array_equal(saliency, upright / 255.0)


@pytest.mark.parametrize("params, key", [({"threshold": 0.0}, "threshold"),
                                         ({"fusion": "max"}, "fusion"),
                                         ({"source": "web"}, "source")])
def test_invalid_params(params, key):
    with pytest.raises(ConfigError, match=key):
        get_method("saliency").parse_params(params)
