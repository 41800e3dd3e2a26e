"""`wsss data convert-masks`: RGB masks in the PASCAL VOC colour map -> palette PNGs of class
indices, exactly; originals kept; colours outside the map refused before anything changes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from wsss.cli import main
from wsss.data.palette import colorize, voc_palette
from wsss.data.synthetic import generate_dataset
from wsss.data.dataset import VOCDataset

N = 6


@pytest.fixture
def rgb_dataset(tmp_path):
    """A synthetic dataset (6 classes, void borders) whose masks were saved as VOC-coloured
    RGB pictures, one of them RGBA (opaque); returns (root, {file name: class indices})."""
    root = tmp_path / "data"
    generate_dataset(root, n=N, seed=0, image_size=32)
    originals = {}
    for k, path in enumerate(sorted((root / "SegmentationClass").glob("*.png"))):
        originals[path.name] = np.asarray(Image.open(path)).copy()
        mode = "RGBA" if k == 0 else "RGB"
        Image.fromarray(colorize(originals[path.name])).convert(mode).save(path)
    assert any((m == 255).any() for m in originals.values())  # void pixels are converted too
    return root, originals


def _snapshot(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def test_conversion_round_trips_the_masks_exactly(rgb_dataset, capsys):
    root, originals = rgb_dataset
    masks = root / "SegmentationClass"
    rgb_files = _snapshot(masks)
    assert main(["data", "convert-masks", "--data", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"converted {N} RGB mask(s) in {masks} to palette PNGs" in out
    for name, indices in originals.items():
        with Image.open(masks / name) as im:
            assert im.mode == "P"
            palette = np.asarray(im.getpalette()[:768], np.uint8).reshape(256, 3)
            assert np.array_equal(palette, voc_palette())
            assert np.array_equal(np.asarray(im), indices)
    assert _snapshot(root / "SegmentationClassRGB") == rgb_files  # originals kept, byte-exact
    assert VOCDataset(root, "trainval").scan().problems == []


def test_a_second_run_changes_nothing(rgb_dataset, capsys):
    root, _ = rgb_dataset
    assert main(["data", "convert-masks", "--data", str(root)]) == 0
    converted, backups = _snapshot(root / "SegmentationClass"), _snapshot(
        root / "SegmentationClassRGB")
    capsys.readouterr()
    assert main(["data", "convert-masks", "--data", str(root)]) == 0
    assert (f"converted 0 RGB mask(s) in {root / 'SegmentationClass'} to palette PNGs; "
            f"{N} already palette or grayscale") in capsys.readouterr().out
    assert _snapshot(root / "SegmentationClass") == converted
    assert _snapshot(root / "SegmentationClassRGB") == backups


def test_an_interrupted_run_loses_nothing(rgb_dataset, monkeypatch):
    """The third write fails: a re-run converts the rest, every original is kept."""
    import wsss.data.convert

    root, originals = rgb_dataset
    rgb_files = _snapshot(root / "SegmentationClass")
    real_save, calls = wsss.data.convert.save_mask_png, []

    def failing_save(path, mask):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk went away")
        return real_save(path, mask)

    monkeypatch.setattr(wsss.data.convert, "save_mask_png", failing_save)
    with pytest.raises(OSError, match="disk went away"):
        main(["data", "convert-masks", "--data", str(root)])
    monkeypatch.setattr(wsss.data.convert, "save_mask_png", real_save)
    assert main(["data", "convert-masks", "--data", str(root)]) == 0
    for name, indices in originals.items():
        assert np.array_equal(np.asarray(Image.open(root / "SegmentationClass" / name)), indices)
    assert _snapshot(root / "SegmentationClassRGB") == rgb_files


@pytest.mark.parametrize("colour, shown", [
    ((1, 2, 3), "(1, 2, 3)"),  # in no class's colour
    (tuple(int(c) for c in voc_palette()[7]), "(128, 128, 128)"),  # VOC's class 7: not here
])
def test_a_colour_outside_the_map_is_refused_and_nothing_changes(rgb_dataset, capsys, colour,
                                                                 shown):
    root, _ = rgb_dataset
    masks = root / "SegmentationClass"
    name = sorted(p.name for p in masks.glob("*.png"))[2]
    rgb = np.asarray(Image.open(masks / name).convert("RGB")).copy()
    rgb[0, 0] = colour
    Image.fromarray(rgb).save(masks / name)
    before = _snapshot(masks)
    assert main(["data", "convert-masks", "--data", str(root)]) == 2
    err = capsys.readouterr().err
    assert (f"wsss data: error: 1 of {N} RGB masks cannot be converted: their colours are not "
            f"all in the PASCAL VOC colour map of the 6 classes of {root} (nothing was "
            f"changed):") in err
    assert (f"{masks / name}: colour(s) {shown} outside the PASCAL VOC colour map of classes "
            f"0..5 and 255") in err
    assert _snapshot(masks) == before and not (root / "SegmentationClassRGB").exists()


def test_transparent_rgba_mask_is_refused(rgb_dataset, capsys):
    root, _ = rgb_dataset
    path = sorted((root / "SegmentationClass").glob("*.png"))[0]  # the RGBA one
    rgba = np.asarray(Image.open(path)).copy()
    rgba[0, 0, 3] = 0
    Image.fromarray(rgba).save(path)
    assert main(["data", "convert-masks", "--data", str(root)]) == 2
    assert f"{path}: transparent pixels" in capsys.readouterr().err


def test_missing_dataset_or_masks_folder(tmp_path, capsys):
    assert main(["data", "convert-masks", "--data", str(tmp_path / "nowhere")]) == 2
    assert f"dataset folder not found: {tmp_path / 'nowhere'}" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["data", "convert-masks", "--data", str(tmp_path / "empty")]) == 2
    assert (f"masks folder not found: {tmp_path / 'empty' / 'SegmentationClass'}"
            in capsys.readouterr().err)
