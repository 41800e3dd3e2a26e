"""Bad inputs, one test per kind, through the entry points a user runs (`wsss` commands, the
stage functions, the Ray Data pipeline): each gives a clear error naming the file and the
problem before any work, or is skipped, listed in the run's report with its reason, and the
run goes on. docs/reliability.md tabulates them.

Per-image problems share one dataset (``bad_dataset``): `wsss cam` and `wsss refine` run over
it once (module fixture) and each test checks its row of the reports.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsss.core.maps import load_maps
from wsss.cli import main
from wsss.config import CamConfig, ExperimentConfig, RefineConfig, TrackingConfig
from wsss.data.synthetic import generate_dataset
from wsss.data.dataset import VOCDataset
from wsss.data.decode import load_rgb
from wsss.methods import get_method
from wsss.pipeline.pseudo_label import PipelineOptions, run_pseudo_label
from wsss.train.checkpoint import CheckpointError, load_classifier, save_checkpoint

CLASSES = ["background", "a", "b", "c", "d", "e"]  # the synthetic set: 5 foreground classes
SMALL = ["--set", "data.max_image_side=64", "--set", "data.crop_size=32"]

# id -> (what the reason says, the file it names), for every image that must be skipped
SKIPPED = {
    "no_image": ("image not found for id 'no_image'", "JPEGImages/no_image.jpg"),
    "truncated_jpeg": ("cannot read image", "JPEGImages/truncated_jpeg.jpg"),
    "truncated_png": ("cannot read image", "JPEGImages/truncated_png.png"),
    "not_an_image": ("cannot read image", "JPEGImages/not_an_image.jpg"),
    "empty_file": ("cannot read image", "JPEGImages/empty_file.jpg"),
    "mask_size": ("has size 12x10 but its image is 32x32", "SegmentationClass/mask_size.png"),
    "mask_value": ("label value(s) [42] outside 0..5 (255 = ignore)",
                   "SegmentationClass/mask_value.png"),
    "mask_rgb": ("has mode RGB: expected a palette (P) or grayscale (L) PNG",
                 "SegmentationClass/mask_rgb.png"),
    "no_labels": ("no labels for id 'no_labels'", "SegmentationClass/no_labels.png"),
}
# ids whose odd files are converted and used, never refused
CONVERTED = ["gray", "rgba", "cmyk", "gray16", "palette", "large_pair", "empty_labels"]


# -- the datasets -----------------------------------------------------------------------------
def small_dataset(root: Path) -> Path:
    """A valid 6-image, 32 px synthetic dataset (train split: 4 or 5 ids)."""
    generate_dataset(root, n=6, seed=0, image_size=32)
    return root


def _split(root: Path, name: str = "train") -> Path:
    return root / "ImageSets/Segmentation" / f"{name}.txt"


def bad_dataset(root: Path) -> Path:
    """``small_dataset`` plus one image per row of ``SKIPPED`` and ``CONVERTED``."""
    small_dataset(root)
    images, masks = root / "JPEGImages", root / "SegmentationClass"
    good = _split(root).read_text().split()
    source = Image.open(images / f"{good[0]}.jpg").convert("RGB")
    mask = Image.open(masks / f"{good[0]}.png")
    jpeg, png = (images / f"{good[0]}.jpg").read_bytes(), _png_bytes(source)
    (images / "truncated_jpeg.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (images / "truncated_png.png").write_bytes(png[: len(png) // 2])
    (images / "not_an_image.jpg").write_bytes(b"this is not a picture")
    (images / "empty_file.jpg").write_bytes(b"")
    source.save(images / "mask_size.jpg")
    Image.new("L", (12, 10)).save(masks / "mask_size.png")
    source.save(images / "mask_value.jpg")
    bad = np.array(mask)
    bad[0, 0], bad[0, 1] = 42, 255  # 255 (ignore) is allowed, 42 is not
    Image.fromarray(bad, mode="L").save(masks / "mask_value.png")
    source.save(images / "mask_rgb.jpg")
    mask.convert("RGB").save(masks / "mask_rgb.png")
    source.save(images / "no_labels.jpg")  # no mask and no labels.json entry
    source.convert("L").save(images / "gray.jpg")
    source.convert("RGBA").save(images / "rgba.png")
    source.convert("CMYK").save(images / "cmyk.jpg")
    Image.fromarray(np.asarray(source.convert("L"), np.uint16) * 257).save(images / "gray16.png")
    source.convert("P").save(images / "palette.png")
    # 128x113 is downscaled to 64 px; image and mask must land on the same size
    source.resize((128, 113)).save(images / "large_pair.jpg")
    mask.resize((128, 113), Image.NEAREST).save(masks / "large_pair.png")
    source.save(images / "empty_labels.jpg")  # labels.json says: no foreground class
    for name in ["gray", "rgba", "cmyk", "gray16", "palette"]:
        shutil.copyfile(masks / f"{good[0]}.png", masks / f"{name}.png")
    (root / "labels.json").write_text(json.dumps({"empty_labels": []}))
    _split(root).write_text("\n".join(good + list(SKIPPED) + CONVERTED) + "\n")
    return root


def _png_bytes(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _save_classifier(path: Path, method: str = "cam", num_classes: int = 5) -> Path:
    torch.manual_seed(0)
    m = get_method(method)(num_classes)
    save_checkpoint(path, model=m.build_model(ExperimentConfig().model), method=m,
                    cfg=ExperimentConfig(), class_names=CLASSES, has_background=True, epoch=1)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return _save_classifier(tmp_path_factory.mktemp("ckpt") / "model.pt")


@pytest.fixture(scope="module")
def tracking(tmp_path_factory) -> list[str]:
    return ["--tracking-uri", f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"]


def _wsss(capsys, *argv: str) -> tuple[int, str, str]:
    """Run `wsss ARGV`; (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _failed(report: Path) -> dict[str, str]:
    return {e["id"]: e["reason"] for e in json.loads(report.read_text())["failed"]}


@pytest.fixture(scope="module")
def cam_and_refine(tmp_path_factory, checkpoint, tracking) -> dict:
    """`wsss cam` then `wsss refine` over ``bad_dataset``; between the two, one good image is
    truncated and one good ground truth gets an out-of-range value."""
    base = tmp_path_factory.mktemp("bad")
    root = bad_dataset(base / "data")
    code = main(["cam", "--checkpoint", str(checkpoint), "--data", str(root), "--out",
                 str(base / "cams"), "--device", "cpu", *SMALL, *tracking])
    good = [i for i in _split(root).read_text().split() if i not in SKIPPED
            and i not in CONVERTED]
    jpeg = root / f"JPEGImages/{good[1]}.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[:100])
    gt = np.array(Image.open(root / f"SegmentationClass/{good[2]}.png"))
    gt[0, 0] = 77
    Image.fromarray(gt, mode="L").save(root / f"SegmentationClass/{good[2]}.png")
    refine_code = main(["refine", "--cams", str(base / "cams"), "--data", str(root), "--out",
                        str(base / "masks"), *SMALL, *tracking])
    return {"root": root, "cams": base / "cams", "masks": base / "masks", "cam_code": code,
            "refine_code": refine_code, "good": good}


# -- dataset-level problems: an error before any work -----------------------------------------
def _entry_points(checkpoint: Path, data: Path, out: Path, split: str = "train") -> dict:
    """The commands a dataset error must stop, as `wsss` argument lists."""
    return {
        "cam": ["cam", "--checkpoint", checkpoint, "--data", data, "--split", split,
                "--out", out, "--device", "cpu"],
        "refine": ["refine", "--cams", out.parent, "--data", data, "--split", split,
                   "--out", out],
        "eval": ["eval", "--masks", out.parent, "--data", data, "--split", split],
        "train-cls": ["train-cls", "--data", data, "--out", out],
        "train-seg": ["train-seg", "--pseudo-masks", out.parent, "--data", data, "--out", out],
    }


@pytest.mark.parametrize("command", ["cam", "refine", "eval", "train-cls", "train-seg",
                                     "pseudo-label"])
def test_missing_dataset_folder(command, tmp_path, checkpoint, tracking, capsys):
    missing, out = tmp_path / "no_such_data", tmp_path / "out"
    message = f"dataset folder not found: {missing}"
    if command == "pseudo-label":  # run_pseudo_label checks before it touches Ray
        with pytest.raises(Exception, match=re.escape(message)):
            run_pseudo_label(checkpoint, missing, "train", out)
    else:
        code, _, err = _wsss(capsys, *_entry_points(checkpoint, missing, out)[command], *tracking)
        assert code == 2 and f"wsss {command}: error: {message}" in err
    assert not out.exists()


@pytest.mark.parametrize("problem", ["missing", "empty", "blank lines only"])
@pytest.mark.parametrize("command", ["cam", "refine", "eval", "pseudo-label"])
def test_missing_or_empty_split_file(problem, command, tmp_path, checkpoint, tracking, capsys):
    root, out = small_dataset(tmp_path / "data"), tmp_path / "out"
    split = _split(root, "test")
    if problem != "missing":
        split.write_text("" if problem == "empty" else "\n  \n\n")
    expected = (f"split file not found: {split} (available splits: train, trainval, val)"
                if problem == "missing" else f"split file is empty: {split}")
    if command == "pseudo-label":
        with pytest.raises(Exception, match=re.escape(expected)):
            run_pseudo_label(checkpoint, root, "test", out)
    else:
        args = _entry_points(checkpoint, root, out, split="test")[command]
        code, _, err = _wsss(capsys, *args, *tracking)
        assert code == 2 and expected in err
    assert not out.exists()


@pytest.mark.parametrize("labels, problem", [
    ({"x": ["unicorn"]}, "id 'x' names unknown class 'unicorn'; valid: background, red_spot"),
    ({"x": [9]}, "id 'x' names unknown class 9"),
    ({"x": [True]}, "id 'x' names unknown class True"),
    ({"x": "red_spot"}, "id 'x' has 'red_spot'; expected a list of class names or indices"),
    (["red_spot"], "expected an object {id: [class names or indices]}, got a JSON list"),
])
@pytest.mark.parametrize("command", ["cam", "pseudo-label"])
def test_labels_file_naming_an_unknown_class(labels, problem, command, tmp_path, checkpoint,
                                             tracking, capsys):
    root, out = small_dataset(tmp_path / "data"), tmp_path / "out"
    (root / "labels.json").write_text(json.dumps(labels))
    expected = f"{root / 'labels.json'}: {problem}"
    if command == "pseudo-label":
        with pytest.raises(Exception, match=re.escape(expected)):
            run_pseudo_label(checkpoint, root, "train", out)
    else:
        code, _, err = _wsss(capsys, *_entry_points(checkpoint, root, out)["cam"], *tracking)
        assert code == 2 and expected in err
    assert not out.exists()


@pytest.mark.parametrize("name", ["classes.txt", "labels.json", "split"])
def test_dataset_text_file_that_is_not_utf8(name, tmp_path, checkpoint, tracking, capsys):
    root, out = small_dataset(tmp_path / "data"), tmp_path / "out"
    path = _split(root) if name == "split" else root / name
    path.write_bytes(b"\xff\xfe\x00garbage")
    code, _, err = _wsss(capsys, *_entry_points(checkpoint, root, out)["cam"], *tracking)
    assert code == 2 and f"{path}: not UTF-8 text" in err


@pytest.mark.parametrize("command", ["refine", "eval --cams", "eval --masks"])
def test_missing_maps_or_masks_folder(command, tmp_path, tracking, capsys):
    root, missing = small_dataset(tmp_path / "data"), tmp_path / "no_such_folder"
    name, flag = ("refine", "--cams") if command == "refine" else command.split()
    extra = ["--out", tmp_path / "out"] if name == "refine" else []
    code, _, err = _wsss(capsys, name, flag, missing, "--data", root, *extra, *tracking)
    kind = "masks" if flag == "--masks" else "maps"
    assert code == 2 and f"error: {kind} folder not found: {missing}" in err
    assert not (tmp_path / "out").exists()


# -- per-image problems: skipped, listed with the reason, the run goes on ---------------------
@pytest.mark.parametrize("sample_id", list(SKIPPED))
def test_cam_skips_and_lists_each_bad_image(sample_id, cam_and_refine):
    """Rows: split id without an image; corrupt or truncated JPEG/PNG; mask size differing
    from the image; mask values outside the class range; an image with no labels at all."""
    problem, file = SKIPPED[sample_id]
    reason = _failed(cam_and_refine["cams"] / "report.json")[sample_id]
    assert problem in reason and reason.count(str(cam_and_refine["root"] / file)) == 1
    assert not (cam_and_refine["cams"] / f"{sample_id}.npz").exists()


def test_cam_run_goes_on_past_bad_images(cam_and_refine):
    cams = cam_and_refine["cams"]
    report = json.loads((cams / "report.json").read_text())
    assert cam_and_refine["cam_code"] == 0
    assert set(_failed(cams / "report.json")) == set(SKIPPED)
    done = sorted(p.stem for p in cams.glob("*.npz"))
    assert done == sorted(cam_and_refine["good"] + CONVERTED) and report["done"] == len(done)


@pytest.mark.parametrize("sample_id", ["gray", "rgba", "cmyk", "gray16", "palette"])
def test_grayscale_rgba_16bit_cmyk_palette_images_are_converted(sample_id, cam_and_refine):
    root = cam_and_refine["root"]
    image = VOCDataset(root, ids=[sample_id])[0]["image"]
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8 and int(image.max()) > 50
    maps, class_ids = load_maps(cam_and_refine["cams"] / f"{sample_id}.npz")
    assert maps.shape[1:] == (32, 32) and class_ids  # labels from its mask
    assert (cam_and_refine["masks"] / f"{sample_id}.png").is_file()


def test_image_over_the_decompression_bomb_limit_is_skipped(tmp_path, checkpoint, tracking,
                                                           capsys, monkeypatch):
    """PIL refuses images over twice ``MAX_IMAGE_PIXELS`` (~179 MP by default) before decoding;
    lowered here so that the 32x32 images of the test set are over it."""
    root, out = small_dataset(tmp_path / "data"), tmp_path / "out"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)
    code, stdout, _ = _wsss(capsys, *_entry_points(checkpoint, root, out)["cam"], *tracking)
    failed = _failed(out / "report.json")
    assert code == 0 and failed and len(failed) == len(_split(root).read_text().split())
    assert all("cannot read image" in r and "exceeds limit" in r for r in failed.values())
    assert f"skipped {next(iter(failed))}: cannot read image" in stdout


def test_image_with_an_empty_label_list_is_a_negative_not_an_error(cam_and_refine):
    """labels.json ``[]``: no foreground class; its pseudo-mask is all background."""
    maps, class_ids = load_maps(cam_and_refine["cams"] / "empty_labels.npz")
    assert class_ids == [] and maps.shape == (0, 32, 32)
    mask = np.asarray(Image.open(cam_and_refine["masks"] / "empty_labels.png"))
    assert mask.shape == (32, 32) and (mask == 0).all()


def test_large_image_and_its_mask_are_downscaled_alike(cam_and_refine):
    """128x113 with a 64 px limit: the old loader rounded image and mask apart (57 vs 56 rows)
    and refused the pair as a size mismatch."""
    maps, _ = load_maps(cam_and_refine["cams"] / "large_pair.npz")
    assert max(maps.shape[1:]) == 64
    mask = np.asarray(Image.open(cam_and_refine["masks"] / "large_pair.png"))
    assert mask.shape == maps.shape[1:]


def test_refine_skips_unreadable_images_and_lists_unscorable_masks(cam_and_refine, capsys):
    masks, good = cam_and_refine["masks"], cam_and_refine["good"]
    report = json.loads((masks / "report.json").read_text())
    failed = _failed(masks / "report.json")
    assert cam_and_refine["refine_code"] == 0
    assert "cannot read image" in failed[good[1]] and f"{good[1]}.jpg" in failed[good[1]]
    for sample_id, (problem, file) in SKIPPED.items():  # `wsss cam` skipped them: no maps
        if file.startswith("JPEGImages"):  # the image is read first: its problem is named
            assert problem in failed[sample_id] and file in failed[sample_id]
        else:  # the image is fine; without ground truth a mask is still made, from the maps
            assert (f"map file not found: {cam_and_refine['cams'] / sample_id}.npz"
                    in failed[sample_id])
    # the mask is made (refine needs no ground truth) but the bad ground truth is not scored
    assert (masks / f"{good[2]}.png").is_file()
    not_scored = {e["id"]: e["reason"] for e in report["not_scored"]}
    assert list(not_scored) == [good[2]] and "label value(s) [77]" in not_scored[good[2]]
    written = sorted(p.stem for p in masks.glob("*.png") if p.stem != "samples")
    assert report["done"] == len(written) == len(good) - 1 + len(CONVERTED)


def test_training_scan_lists_bad_images_with_their_files(tmp_path):
    """`wsss train-cls` scans the split before Ray Train starts and trains on the good ids
    only; the bad ones are printed and logged (tests/train/test_classifier.py runs it)."""
    from wsss.train.classifier import scan_split

    root = bad_dataset(tmp_path / "data")
    scan = scan_split(str(root), "train", 64)
    good, reasons = scan.ids, dict(scan.skipped)
    assert set(reasons) == set(SKIPPED) and set(CONVERTED) <= set(good)
    for sample_id, (problem, file) in SKIPPED.items():
        assert problem in reasons[sample_id] and str(root / file) in reasons[sample_id]


@pytest.mark.slow
def test_pseudo_label_pipeline_reports_every_bad_image_and_labels_the_rest(
        ray_session, tmp_path, checkpoint):
    """One Ray Data run over every per-image problem at once."""
    root, out = bad_dataset(tmp_path / "data"), tmp_path / "out"
    report = run_pseudo_label(checkpoint, root, "train", out, CamConfig(batch_size=4),
                              RefineConfig(crf=False),
                              TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}"),
                              PipelineOptions(cam_workers=1, max_image_side=64))
    failed = _failed(out / "report.json")
    assert set(failed) == set(SKIPPED)
    for sample_id, (problem, file) in SKIPPED.items():
        assert problem in failed[sample_id] and file in failed[sample_id], failed[sample_id]
        assert "object at 0x" not in failed[sample_id]  # files are read into memory first
    good = [i for i in _split(root).read_text().split() if i not in SKIPPED]
    written = sorted(p.stem for p in out.glob("*.png"))
    assert written == sorted(good) and report.done == len(good)


# -- huge images: downscaled at load, memory bounded ------------------------------------------
def _peak_growth_mib(load) -> float:
    """Growth of this process's peak resident memory while ``load()`` runs (Linux)."""
    status = Path("/proc/self/status")

    def read(key: str) -> float:
        return int(re.search(rf"{key}:\s+(\d+) kB", status.read_text()).group(1)) / 1024

    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    base = read("VmRSS")
    load()
    return read("VmHWM") - base


@pytest.fixture(scope="module")
def huge_dataset(tmp_path_factory) -> Path:
    """8000x6000 images (JPEG and PNG, constant colour: small on disk) with their masks, and
    a JPEG stored sideways (6000x8000, EXIF Orientation 6) that is 8000x6000 upright."""
    root = tmp_path_factory.mktemp("huge") / "data"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    image = Image.new("RGB", (8000, 6000), (200, 40, 40))
    image.save(root / "JPEGImages/huge_jpeg.jpg")
    image.save(root / "JPEGImages/huge_png.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF Orientation: turn 90 degrees clockwise to view
    Image.new("RGB", (6000, 8000), (200, 40, 40)).save(root / "JPEGImages/huge_rotated.jpg",
                                                       exif=exif.tobytes())
    for name in ("huge_jpeg", "huge_png", "huge_rotated"):
        Image.new("L", (8000, 6000), 15).save(root / f"SegmentationClass/{name}.png")
    _split(root).write_text("huge_jpeg\nhuge_png\nhuge_rotated\n")
    return root


@pytest.mark.parametrize("index", [0, 1, 2])
def test_huge_image_is_downscaled_within_the_limit(huge_dataset, index):
    sample = VOCDataset(huge_dataset, "train", max_image_side=1024)[index]
    assert sample["image"].shape == (3, 768, 1024) and sample["mask"].shape == (768, 1024)
    assert sample["class_ids"] == [15]


def test_huge_image_decoding_memory_is_bounded(huge_dataset):
    """Peak memory is read from Linux /proc, as on every machine the project runs on."""
    full_mib = 8000 * 6000 * 4 / 2**20  # what PIL holds for the whole picture (4 bytes/pixel)
    jpeg = _peak_growth_mib(lambda: load_rgb(huge_dataset / "JPEGImages/huge_jpeg.jpg", 1024))
    png = _peak_growth_mib(lambda: load_rgb(huge_dataset / "JPEGImages/huge_png.png", 1024))
    rotated = _peak_growth_mib(
        lambda: load_rgb(huge_dataset / "JPEGImages/huge_rotated.jpg", 1024))
    assert jpeg < full_mib / 3, f"JPEG decoding grew the peak by {jpeg:.0f} MiB"  # draft: 1/4
    assert rotated < full_mib / 3, f"EXIF-rotated JPEG grew the peak by {rotated:.0f} MiB"
    # PNG has no reduced decode: the full picture once, then nothing of its size again
    assert png < full_mib + 64, f"PNG decoding grew the peak by {png:.0f} MiB"


# -- checkpoints: an error before any work -----------------------------------------------------
def _foreign_method_checkpoint(path: Path) -> Path:
    """An MDC checkpoint relabelled as plain CAM (weights of another method's model)."""
    _save_classifier(path, "mdc")
    state = torch.load(path, weights_only=True)
    state.update(method="cam", method_params={})
    torch.save(state, path)
    return path


@pytest.mark.parametrize("case, message", [
    ("class count", "was trained for 3 classes but the dataset has 5 foreground classes"),
    ("method", "its weights do not fit the CamClassifier model it names"),
    ("unknown method", "cannot rebuild its classifier (method 'no_such_method'): unknown "
                       "method 'no_such_method'; choose one of: acol"),
    ("segmenter", "is not a wsss classifier checkpoint"),
])
@pytest.mark.parametrize("command", ["cam", "pseudo-label"])
def test_checkpoint_from_another_method_or_class_count(case, message, command, tmp_path,
                                                       tracking, capsys):
    root, out, ckpt = small_dataset(tmp_path / "data"), tmp_path / "out", tmp_path / "m.pt"
    if case == "class count":
        _save_classifier(ckpt, num_classes=3)
    elif case == "method":
        _foreign_method_checkpoint(ckpt)
    elif case == "unknown method":
        _save_classifier(ckpt)
        state = torch.load(ckpt, weights_only=True)
        torch.save({**state, "method": "no_such_method"}, ckpt)
    else:
        _segmenter_checkpoint(ckpt, len(CLASSES))
    if command == "pseudo-label":  # checked in the driver, before Ray or any actor
        with pytest.raises(CheckpointError, match=re.escape(message)):
            run_pseudo_label(ckpt, root, "train", out)
    else:
        code, _, err = _wsss(capsys, *_entry_points(ckpt, root, out)["cam"], *tracking)
        assert code == 2 and str(ckpt) in err and message in err
    assert not out.exists()


def _segmenter_checkpoint(path: Path, num_classes: int) -> Path:
    from wsss.models.segmenter import build_segmenter
    from wsss.train.segmenter import save_segmenter

    model = build_segmenter("deeplabv3_resnet18", num_classes)
    names = [f"c{i}" for i in range(num_classes)]
    return save_segmenter(path, model=model, cfg=ExperimentConfig(), class_names=names,
                          has_background=True, history=[])


@pytest.mark.parametrize("case, message", [
    ("class count", "predicts 3 classes but"),
    ("classifier", "is not a wsss segmenter checkpoint"),
    ("weights", "its weights do not fit the Segmenter model it names"),
])
def test_predict_refuses_a_checkpoint_that_does_not_fit(case, message, tmp_path, tracking,
                                                        capsys):
    root, out, ckpt = small_dataset(tmp_path / "data"), tmp_path / "out", tmp_path / "m.pt"
    if case == "class count":
        _segmenter_checkpoint(ckpt, 3)
    elif case == "classifier":
        _save_classifier(ckpt)
    else:
        _segmenter_checkpoint(ckpt, len(CLASSES))
        state = torch.load(ckpt, weights_only=True)
        state["state_dict"] = {k: v for k, v in list(state["state_dict"].items())[:-2]}
        torch.save(state, ckpt)
    code, _, err = _wsss(capsys, "predict", "--checkpoint", ckpt, "--data", root, "--split",
                         "val", "--out", out, "--device", "cpu", *tracking)
    assert code == 2 and str(ckpt) in err and message in err
    assert not out.exists()


def test_checkpoint_state_checks_run_before_the_model_is_used(tmp_path):
    """The library call behind both commands: class count first, then the model's fit."""
    ckpt = _foreign_method_checkpoint(tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="trained for 5 classes but the dataset has 20"):
        load_classifier(ckpt, expect_classes=20)
    with pytest.raises(CheckpointError, match=r"m\.pt: its weights do not fit .*Missing key"):
        load_classifier(ckpt, expect_classes=5)


# -- configuration: errors list the valid choices ---------------------------------------------
def test_unknown_method_name_lists_the_registered_ones(tmp_path, tracking, capsys):
    from wsss.methods import METHODS

    code, _, err = _wsss(capsys, "train-cls", "--data", tmp_path, "--set",
                         "method.name=hide_and_sneak", *tracking)
    assert code == 2 and f"unknown method 'hide_and_sneak'; choose one of: " \
                         f"{', '.join(sorted(METHODS))}" in err


@pytest.mark.parametrize("override, message", [
    ("train.lrate=0.1", "unknown config key(s) train.lrate; valid keys under 'train.': "
                        "batch_size, channels_last, epochs, head_lr_mult, lr, max_failures, "
                        "num_workers, optimizer, precision, schedule, seed, use_gpu, "
                        "warmup_epochs, weight_decay"),
    ("trian.lr=0.1", "unknown config key(s) trian; valid keys under '<root>': affinity, cams, data"),
    ("method.params.hide=0.1", "method 'hide_and_seek' has no parameter(s) hide; valid: "
                               "grid_size, hide_prob"),
])
def test_unknown_config_key_lists_the_valid_ones(override, message, tmp_path, tracking, capsys):
    code, _, err = _wsss(capsys, "train-cls", "--data", tmp_path, "--method", "hide_and_seek",
                         "--set", override, *tracking)
    assert code == 2 and message in err


@pytest.mark.parametrize("command, overrides, message", [
    ("train-cls", ["method.name=hide_and_seek", "method.params.hide_prob=-0.1"],
     "config value method.params.hide_prob=-0.1 is out of range: expected in [0, 1)"),
    ("train-cls", ["method.name=mdc", "method.params.dilations=[]"],
     "config value method.params.dilations=() is out of range: expected a non-empty list of "
     "distinct positive integers that includes 1"),
    ("refine", ["refine.crf_iterations=0"],
     "config value refine.crf_iterations=0 is out of range: expected in [1, 100]"),
    ("refine", ["refine.crf_iterations=ten"],
     "config value refine.crf_iterations='ten' has the wrong type: expected an integer"),
    ("train-cls", ["method.name=mdc", "method.params.dilations=3"],
     "config value method.params.dilations=3 has the wrong type: expected a list of integers"),
    ("train-cls", ["cams.scales=0.5"],
     "config value cams.scales=0.5 has the wrong type: expected a list of numbers"),
])
def test_config_value_out_of_range_or_of_the_wrong_type(command, overrides, message, tmp_path,
                                                        tracking, capsys):
    root = small_dataset(tmp_path / "data")
    args = {"train-cls": ["train-cls", "--data", root, "--out", tmp_path / "out"],
            "refine": ["refine", "--cams", tmp_path, "--data", root, "--out", tmp_path / "out"]}
    sets = [a for o in overrides for a in ("--set", o)]
    code, _, err = _wsss(capsys, *args[command], *sets, *tracking)
    assert code == 2 and message in err
    assert not (tmp_path / "out").exists()
