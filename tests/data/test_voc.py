"""VOC-layout reader: both dataset kinds, labels from masks or labels.json, and bad input."""

import json

import numpy as np
import pytest
from PIL import Image

from wsss.data.voc import VOC_CLASSES
from wsss.data.errors import DatasetError
from wsss.data.dataset import VOCDataset
from wsss.data.reader import read_info


def _write(root, ids, classes=None, size=(24, 32), masks=True):
    """A tiny VOC-layout dataset: id i has class (i % 3) + 1 in its top-left quarter."""
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "SegmentationClass").mkdir(exist_ok=True)
    (root / "ImageSets/Segmentation").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, sample_id in enumerate(ids):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(
            root / "JPEGImages" / f"{sample_id}.jpg")
        if masks:
            mask = np.zeros(size, np.uint8)
            mask[: size[0] // 2, : size[1] // 2] = i % 3 + 1
            mask[-1, :] = 255
            Image.fromarray(mask, mode="L").save(root / "SegmentationClass" / f"{sample_id}.png")
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids) + "\n")
    if classes is not None:
        (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


@pytest.fixture
def voc(tmp_path):
    return _write(tmp_path / "voc", ["a", "b", "c"])


def test_voc_defaults_have_background(voc):
    info = read_info(voc)
    assert info.class_names == VOC_CLASSES and info.has_background
    assert info.num_fg == 20 and info.fg_classes[0] == 1


def test_labels_come_from_masks_without_background_or_ignore(voc):
    ds = VOCDataset(voc, "train")
    sample = ds[1]
    assert sample["class_ids"] == [0, 2]
    assert sample["labels"].sum() == 1 and sample["labels"][1] == 1  # class 2 -> fg index 1
    assert sample["image"].shape == (3, 24, 32) and sample["mask"].shape == (24, 32)
    assert int(sample["mask"][-1, 0]) == 255


def test_dataset_without_background_class(tmp_path):
    root = _write(tmp_path / "msrc", ["x", "y"], classes=["building", "grass", "tree", "cow"])
    ds = VOCDataset(root, "train")
    assert not ds.info.has_background and ds.info.num_fg == 4
    assert ds[0]["class_ids"] == [0, 1]
    assert ds[0]["labels"].tolist() == [1.0, 1.0, 0.0, 0.0]  # building is a real label


def test_labels_file_serves_ids_without_masks(tmp_path):
    root = _write(tmp_path / "aug", ["a", "b"], masks=False)
    (root / "labels.json").write_text(json.dumps({"a": ["cat", "dog"], "b": [15]}))
    ds = VOCDataset(root, "train")
    assert ds[0]["class_ids"] == [8, 12] and ds[1]["class_ids"] == [15]
    assert int(ds[0]["mask"].max()) == 255  # no mask: all ignore


def test_labels_file_with_unknown_class_is_named(tmp_path):
    root = _write(tmp_path / "aug", ["a"], masks=False)
    (root / "labels.json").write_text(json.dumps({"a": ["unicorn"]}))
    with pytest.raises(DatasetError, match=r"labels\.json.*unknown class 'unicorn'"):
        VOCDataset(root, "train")


def test_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match="dataset folder not found.*nowhere"):
        VOCDataset(tmp_path / "nowhere", "train")


def test_missing_and_empty_split(voc):
    with pytest.raises(DatasetError, match=r"split file not found.*val\.txt.*available splits: train"):
        VOCDataset(voc, "val")
    (voc / "ImageSets/Segmentation/empty.txt").write_text("\n")
    with pytest.raises(DatasetError, match="split file is empty"):
        VOCDataset(voc, "empty")


def test_split_ids_cannot_escape_the_dataset(voc):
    (voc / "ImageSets/Segmentation/evil.txt").write_text("a\n../../etc/passwd\n")
    with pytest.raises(DatasetError, match="not a plain file name"):
        VOCDataset(voc, "evil")


def test_id_without_image(voc):
    (voc / "JPEGImages/b.jpg").unlink()
    ds = VOCDataset(voc, "train")
    with pytest.raises(DatasetError, match=r"image not found for id 'b'.*b\.jpg"):
        ds[1]
    scan = ds.scan()
    assert scan.ids == ["a", "c"] and scan.skipped[0][0] == "b"


def test_corrupt_and_truncated_jpeg(voc):
    (voc / "JPEGImages/a.jpg").write_bytes(b"not a jpeg at all")
    data = (voc / "JPEGImages/b.jpg").read_bytes()
    (voc / "JPEGImages/b.jpg").write_bytes(data[: len(data) // 2])
    ds = VOCDataset(voc, "train")
    with pytest.raises(DatasetError, match=r"cannot read image .*a\.jpg"):
        ds[0]
    with pytest.raises(DatasetError, match=r"cannot read image .*b\.jpg"):
        ds[1]
    scan = ds.scan()
    assert scan.ids == ["c"] and [i for i, _ in scan.skipped] == ["a", "b"]


def test_mask_size_differs_from_image(voc):
    Image.fromarray(np.zeros((10, 10), np.uint8), mode="L").save(voc / "SegmentationClass/a.png")
    with pytest.raises(DatasetError, match=r"mask .*a\.png has size 10x10 but its image is 32x24"):
        VOCDataset(voc, "train")[0]


def test_mask_value_out_of_range(voc):
    mask = np.zeros((24, 32), np.uint8)
    mask[0, 0] = 42
    Image.fromarray(mask, mode="L").save(voc / "SegmentationClass/a.png")
    with pytest.raises(DatasetError, match=r"a\.png has label value\(s\) \[42\] outside 0\.\.20"):
        VOCDataset(voc, "train")[0]


def test_rgb_mask_is_refused_with_reason(voc):
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(voc / "SegmentationClass/a.png")
    with pytest.raises(DatasetError, match="mode RGB: expected a palette"):
        VOCDataset(voc, "train")[0]


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "I;16", "P"])
def test_odd_image_modes_are_converted(voc, mode):
    rgb = Image.fromarray(np.full((24, 32, 3), 200, np.uint8))
    if mode == "I;16":
        image = Image.fromarray(np.full((24, 32), 4000, np.uint16))
    else:
        image = rgb.convert(mode)
    suffix = ".jpg" if mode in ("L", "CMYK") else ".png"
    (voc / "JPEGImages/a.jpg").unlink()
    image.save(voc / "JPEGImages" / f"a{suffix}")
    sample = VOCDataset(voc, "train")[0]
    assert sample["image"].shape == (3, 24, 32) and sample["image"].dtype.is_floating_point is False
    assert int(sample["image"].max()) > 100


def test_huge_image_is_downscaled_with_its_mask(tmp_path):
    root = _write(tmp_path / "big", ["a"], size=(300, 400))
    sample = VOCDataset(root, "train", max_image_side=100)[0]
    assert sample["image"].shape == (3, 75, 100) and sample["mask"].shape == (75, 100)
    assert sample["class_ids"] == [0, 1]
