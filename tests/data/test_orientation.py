"""EXIF orientation: photos stored sideways (or upside down) are read upright, as viewers and
annotation tools show them, so a mask drawn on the upright picture lines up pixel for pixel.

Each picture is built upright: grey, a red block in the top-left corner (class 1) and a blue
block in the bottom-right corner (class 2), with the mask labelling exactly those blocks. The
JPEG stores it turned the other way and says so in its EXIF Orientation tag (EXIF 2.3, tag
0x0112): 6 = "turn 90 degrees clockwise to view", 8 = "turn 90 degrees counter-clockwise",
3 = "turn 180 degrees". PIL's ``Transpose.ROTATE_90`` turns counter-clockwise.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from wsss.data.errors import DatasetError
from wsss.data.dataset import VOCDataset
from wsss.data.decode import load_mask, load_rgb
from wsss.data.reader import DatasetReader
from wsss.pipeline.steps import Job, decode, ref_columns

GREY, RED, BLUE = (128, 128, 128), (220, 30, 30), (30, 30, 220)
COLOURS = np.array([GREY, RED, BLUE])  # index = class
CLASSES = ["background", "red", "blue"]
# How the upright picture is stored for each orientation (the inverse of the viewer's turn).
STORED_AS = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90,
             8: Image.Transpose.ROTATE_270}
ORIENTATION = 0x0112


def upright_scene(width: int, height: int) -> tuple[Image.Image, np.ndarray]:
    """(upright RGB picture, its mask uint8 [height, width]); block edges on 16 px, so the
    JPEG keeps flat colours."""
    mask = np.zeros((height, width), np.uint8)
    mask[:16, :32] = 1  # red: top-left, wider than high
    mask[-16:, -16:] = 2  # blue: bottom-right
    return Image.fromarray(COLOURS[mask].astype(np.uint8)), mask


def exif_jpeg(upright: Image.Image, orientation: int) -> bytes:
    """``upright`` stored as the camera would for ``orientation``, with the EXIF tag."""
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    buffer = io.BytesIO()
    upright.transpose(STORED_AS[orientation]).save(buffer, "JPEG", quality=95, subsampling=0,
                                                   exif=exif.tobytes())
    return buffer.getvalue()


def write_dataset(root, width: int, height: int, orientation: int):
    """One id 'photo': the EXIF-rotated JPEG and the mask drawn on the upright picture."""
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    upright, mask = upright_scene(width, height)
    (root / "JPEGImages/photo.jpg").write_bytes(exif_jpeg(upright, orientation))
    Image.fromarray(mask, mode="L").save(root / "SegmentationClass/photo.png")
    (root / "ImageSets/Segmentation/train.txt").write_text("photo\n")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return root, mask


def nearest_class(image: np.ndarray) -> np.ndarray:
    """The class whose colour is nearest each pixel of RGB [H, W, 3] -> [H, W]."""
    distance = ((image[:, :, None, :].astype(int) - COLOURS[None, None]) ** 2).sum(-1)
    return distance.argmin(-1)


CASES = [(96, 64, 6), (64, 64, 6), (96, 64, 8), (64, 64, 8), (96, 64, 3), (64, 64, 3)]


@pytest.mark.parametrize("width, height, orientation", CASES)
def test_exif_rotated_photo_is_read_upright_with_its_mask(tmp_path, width, height, orientation):
    root, mask = write_dataset(tmp_path / "data", width, height, orientation)
    with Image.open(root / "JPEGImages/photo.jpg") as stored:  # the file really is turned
        assert stored.size == ((height, width) if orientation != 3 else (width, height))
    sample = VOCDataset(root, "train")[0]
    image = sample["image"].permute(1, 2, 0).numpy()
    assert image.shape == (height, width, 3)
    assert np.array_equal(sample["mask"].numpy(), mask)
    assert np.array_equal(nearest_class(image), mask)  # every pixel, both blocks
    assert sample["class_ids"] == [0, 1, 2]


@pytest.mark.parametrize("width, height, orientation", CASES)
def test_pipeline_decode_reads_the_photo_upright(tmp_path, width, height, orientation):
    """The Ray Data decode task (called directly) reads files the same way."""
    root, mask = write_dataset(tmp_path / "data", width, height, orientation)
    reader = DatasetReader.open(root)
    batch = decode(ref_columns(reader.index(ids=["photo"])), Job(reader))
    image, gt = batch["image"][0], batch["gt"][0]
    assert not batch["error"][0] and image.shape == (height, width, 3)
    assert np.array_equal(gt, mask) and np.array_equal(nearest_class(image), mask)
    assert batch["labels"][0].tolist() == [1.0, 1.0]  # both foreground classes present


def test_downscaled_rotated_photo_keeps_the_upright_target(tmp_path):
    """A 400x200 upright picture stored 200x400 (orientation 6), read with max side 100:
    upright 100x50, image and mask alike; the JPEG is decoded at reduced scale."""
    upright, mask = upright_scene(400, 200)
    data = exif_jpeg(upright, 6)
    image = load_rgb(io.BytesIO(data), max_side=100).astype(int)
    assert image.shape == (50, 100, 3)
    mask_file = io.BytesIO()
    Image.fromarray(mask, mode="L").save(mask_file, "PNG")
    small = load_mask(io.BytesIO(mask_file.getvalue()), (50, 100), 3, max_side=100)
    assert small.shape == (50, 100)
    assert tuple(image[2, 2]) == pytest.approx(RED, abs=12) and small[2, 2] == 1
    assert tuple(image[-2, -2]) == pytest.approx(BLUE, abs=12) and small[-2, -2] == 2
    assert tuple(image[25, 50]) == pytest.approx(GREY, abs=12) and small[25, 50] == 0


def test_mask_drawn_on_the_sideways_file_names_exif_as_the_cause(tmp_path):
    """A mask drawn on the stored (sideways) picture by a tool that ignored the EXIF tag has
    the transposed size: the reason says so."""
    root, mask = write_dataset(tmp_path / "data", 96, 64, 6)
    Image.fromarray(np.ascontiguousarray(mask.T), mode="L").save(
        root / "SegmentationClass/photo.png")
    with pytest.raises(DatasetError) as caught:
        VOCDataset(root, "train")[0]
    message = str(caught.value)
    assert "photo.png has size 64x96 but its image is 96x64: the transpose" in message
    assert "EXIF orientation" in message
    scan = VOCDataset(root, "train").scan()
    assert scan.ids == [] and "1 of 1 masks have the transposed size" in scan.summary()


def test_mask_with_its_own_exif_orientation_is_read_upright(tmp_path):
    """A mask PNG stored sideways with Orientation 6 is turned like an image (a viewer shows
    it upright), so it matches the upright photo."""
    root, mask = write_dataset(tmp_path / "data", 96, 64, 6)
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    Image.fromarray(mask, mode="L").transpose(Image.Transpose.ROTATE_90).save(
        root / "SegmentationClass/photo.png", exif=exif.tobytes())
    sample = VOCDataset(root, "train")[0]
    assert np.array_equal(sample["mask"].numpy(), mask)
