"""Artifact pictures: VOC palette, colorize, mask PNGs and the overlay grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.data.decode import load_mask
from wsss.data.palette import colorize, save_mask_png, voc_palette
from wsss.viz import overlay_grid


def _rows(n: int, size: int = 32) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(n)
    images = [rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8) for _ in range(n)]
    maps = [rng.random((2, size, size + 8)).astype(np.float32) for _ in range(n)]
    masks = [rng.integers(0, 3, (size, size + 8), dtype=np.uint8) for _ in range(n)]
    return images, maps, masks


def test_palette_and_colorize() -> None:
    palette = voc_palette()
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    assert tuple(palette[0]) == (0, 0, 0) and tuple(palette[15]) == (192, 128, 128)
    assert palette[255].min() >= 190  # void is light
    rgb = colorize(np.array([[0, 1], [2, 255]], dtype=np.uint8))
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 1]) == (128, 0, 0) and tuple(rgb[1, 0]) == (0, 128, 0)
    assert tuple(rgb[1, 1]) == tuple(palette[255])


def test_overlay_grid_rows_scale_with_images(tmp_path: Path) -> None:
    heights, widths = {}, {}
    for n in (1, 3):
        images, maps, masks = _rows(n)
        path = overlay_grid(images, maps, masks, masks, ["background", "a", "b"],
                            tmp_path / f"grid{n}.png", row_titles=[f"id{i}" for i in range(n)])
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.format == "PNG"
            widths[n], heights[n] = im.size
    assert heights[3] == 3 * heights[1] and widths[3] == widths[1]
    assert not list(tmp_path.glob("*.tmp"))


def test_overlay_grid_columns_and_odd_inputs(tmp_path: Path) -> None:
    images, maps, masks = _rows(2)
    images[1] = np.zeros((20, 24, 3), dtype=np.uint8)  # another size
    maps[1] = np.ones((0, 5, 6), dtype=np.float32)     # no present class
    masks[1] = None                                    # no pseudo-mask for this row
    with_gt = overlay_grid(images, maps, masks, [np.zeros((32, 40), np.uint8), None], None,
                           tmp_path / "a.png")
    without = overlay_grid(images, [m[:, ::2, ::2] for m in maps], masks, path=tmp_path / "b.png")
    only_maps = overlay_grid(np.stack(_rows(2)[0]), _rows(2)[1], path=tmp_path / "c.png")
    sizes = [Image.open(p).size for p in (with_gt, without, only_maps)]
    assert sizes[0][0] * 3 == sizes[1][0] * 4 and sizes[2][0] * 3 == sizes[1][0] * 2
    with pytest.raises(ValueError):
        overlay_grid(images, maps[:1], masks, path=tmp_path / "d.png")
    with pytest.raises(ValueError):
        overlay_grid(images, maps, masks)


def test_save_mask_png_round_trips(tmp_path: Path) -> None:
    mask = np.array([[0, 1, 2], [5, 20, 255]], dtype=np.uint8)
    path = save_mask_png(tmp_path / "sub" / "m.png", mask)
    with Image.open(path) as im:
        assert im.mode == "P" and tuple(im.getpalette()[3:6]) == (128, 0, 0)
    assert np.array_equal(load_mask(path, mask.shape, num_classes=21), mask)
