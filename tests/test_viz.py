"""Artifact pictures: VOC palette, colorize, mask PNGs and the overlay grid (what its panels,
titles, colour bars and legends show, read from the Figure before it is saved)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.data.decode import load_mask
from wsss.data.palette import colorize, save_mask_png, voc_palette
from wsss.viz import CELL_INCHES, LEGEND_INCHES, VOID_LABEL, grid_figure, overlay_grid

NAMES = ["background", "red_spot", "blue_stripes", "green_checks"]


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
    no_maps = overlay_grid(images, None, masks, path=tmp_path / "e.png")
    widths = [Image.open(p).size[0] for p in (with_gt, without, only_maps, no_maps)]
    # picture columns of CELL_INCHES at 100 dpi, and the legend column when masks are shown
    legend = round(100 * LEGEND_INCHES)
    assert widths == [round(100 * CELL_INCHES * 4) + legend, round(100 * CELL_INCHES * 3) + legend,
                      round(100 * CELL_INCHES * 2), round(100 * CELL_INCHES * 2) + legend]
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


def _legends_of(fig) -> list:
    """Each row's colour legend, top row first."""
    axes = sorted((ax for ax in fig.axes if ax.get_legend() is not None),
                  key=lambda ax: -ax.get_position().y0)
    return [ax.get_legend() for ax in axes]


def _legends(fig) -> list[list[str]]:
    """The entries of each row's colour legend, top row first."""
    return [[t.get_text() for t in legend.get_texts()] for legend in _legends_of(fig)]


def _titles(fig) -> list[str]:
    return [ax.get_title() for ax in fig.axes if ax.get_title()]


def test_the_legend_names_exactly_the_classes_of_the_rows_masks_in_their_colours() -> None:
    """Each row's legend lists the classes (and void) present in its pseudo-mask or ground
    truth, by name, each patch in the VOC palette colour the mask panel uses for it."""
    image = np.zeros((16, 16, 3), np.uint8)
    mask_a = np.zeros((16, 16), np.uint8)
    mask_a[:4] = 2  # blue_stripes: green in the VOC palette
    gt_a = mask_a.copy()
    gt_a[8:] = 3
    gt_a[4] = 255
    mask_b = np.ones((16, 16), np.uint8)
    mask_b[0, 0] = 7  # a class index without a name: shown as its number
    fig = grid_figure([image, image], [np.zeros((0, 16, 16))] * 2, [mask_a, mask_b],
                      [gt_a, None], NAMES, row_titles=["a", "b"])
    assert _legends(fig) == [["background", "blue_stripes", "green_checks", VOID_LABEL],
                             ["red_spot", "7"]]
    legend = _legends_of(fig)[0]
    colours = [tuple(np.round(np.array(p.get_facecolor()[:3]) * 255).astype(int))
               for p in legend.get_patches()]
    palette = voc_palette()
    assert colours == [tuple(palette[c]) for c in (0, 2, 3, 255)]
    assert tuple(palette[2]) == (0, 128, 0)  # why the legend is needed: blue_stripes is green


def test_panel_titles_are_short_and_the_map_names_its_classes_with_a_colour_bar() -> None:
    image = np.zeros((16, 24, 3), np.uint8)
    maps = [np.ones((2, 16, 24)), np.ones((1, 8, 12)), np.zeros((0, 16, 24))]
    masks = [np.zeros((16, 24), np.uint8)] * 3
    fig = grid_figure([image] * 3, maps, masks, [masks[0], None, masks[0]], NAMES,
                      row_titles=["id1", "id2", "id3"], map_classes=[[1, 3], [2], []])
    assert _titles(fig) == [
        "id1", "map: max over red_spot,\ngreen_checks", "pseudo-mask", "ground truth",
        "id2", "map: blue_stripes", "pseudo-mask", "no ground truth",
        "id3", "map: no class present", "pseudo-mask", "ground truth"]
    map_axes = [ax for ax in fig.axes if ax.get_title().startswith("map")]
    for ax in map_axes:  # a 0..1 colour bar beside each map
        (bar,) = ax.child_axes
        assert bar.get_ylim() == (0.0, 1.0)
        assert [t for t in bar.get_yticks()] == [0.0, 0.5, 1.0]
    many = grid_figure([image], [np.ones((9, 16, 24))], map_classes=[list(range(1, 10))],
                       class_names=[f"class_number_{i}" for i in range(10)])
    assert _titles(many)[1] == "map: max over 9 classes"  # more names than three lines hold
    unnamed = grid_figure([image], [np.ones((2, 16, 24))], None, None)
    assert _titles(unnamed) == ["image", "map: max over 2 classes"]
    assert not _legends(unnamed)  # no mask shown: no colour legend
    with pytest.raises(ValueError, match="map classes"):
        grid_figure([image], [np.ones((2, 16, 24))], map_classes=[[1]])


def test_nothing_in_the_grid_overlaps(tmp_path: Path) -> None:
    """Drawn, no two titles, legends or colour bars overlap, nor does any of them cover a
    picture, however many classes a row has and whatever the images' shapes."""
    names = NAMES + ["a_rather_long_class_name", "yellow_dots", "violet_rings"]
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, shape, dtype=np.uint8)
              for shape in ((30, 60, 3), (60, 30, 3), (40, 40, 3))]
    masks = [rng.integers(0, len(names), im.shape[:2]).astype(np.uint8) for im in images]
    maps = [rng.random((len(names) - 1, *im.shape[:2])) for im in images]
    fig = grid_figure(images, maps, masks, masks, names, row_titles=["x1", "x2", "x3"],
                      map_classes=[list(range(1, len(names)))] * 3)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    pictures = [ax for ax in fig.axes if ax.images]
    parts = [(ax.get_title(), ax.title.get_window_extent(renderer))
             for ax in fig.axes if ax.get_title()]
    parts += [("legend", legend.get_window_extent(renderer)) for legend in _legends_of(fig)]
    parts += [("colour bar", bar.get_tightbbox(renderer))
              for ax in fig.axes for bar in ax.child_axes]
    assert len(parts) == 3 * 4 + 3 + 3
    for i, (name, box) in enumerate(parts):
        assert fig.bbox.contains(box.x0, box.y0) and fig.bbox.contains(box.x1, box.y1), name
        for other, other_box in parts[i + 1:]:
            assert not box.overlaps(other_box), (name, other)
        for ax in pictures:
            assert not box.overlaps(ax.get_window_extent(renderer)), (name, ax.get_title())
    path = overlay_grid(images, maps, masks, masks, names, tmp_path / "g.png",
                        row_titles=["x1", "x2", "x3"])
    assert Image.open(path).size[1] == 3 * Image.open(
        overlay_grid(images[:1], maps[:1], masks[:1], masks[:1], names, tmp_path / "h.png",
                     row_titles=["x1"])).size[1]
