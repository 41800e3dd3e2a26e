"""A split none of whose images can be trained on is an error before any compute: the message
counts the problems by kind, each with a sample file, and neither Ray nor MLflow starts (no run,
no output folder). docs/reliability.md lists these rows.
"""

from __future__ import annotations

import runpy
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.cli import main
from wsss.data.palette import colorize
from wsss.data.synthetic import generate_dataset

ROOT = Path(__file__).resolve().parents[1]
N = 8


def _dataset(root: Path) -> tuple[Path, list[str]]:
    """A valid synthetic dataset whose train split lists all its N ids."""
    generate_dataset(root, n=N, seed=0, image_size=32)
    splits = root / "ImageSets/Segmentation"
    ids = (splits / "trainval.txt").read_text().split()
    (splits / "train.txt").write_text("\n".join(ids) + "\n")
    return root, ids


def _masks_to_rgb(root: Path, ids: list[str], voc_colours: bool = True) -> None:
    """Save the masks of ``ids`` as RGB pictures: in the VOC colour map, or in other colours."""
    for sample_id in ids:
        path = root / "SegmentationClass" / f"{sample_id}.png"
        mask = np.asarray(Image.open(path))
        rgb = colorize(mask) if voc_colours else np.stack([mask * 40 + 1] * 3, -1)
        Image.fromarray(rgb.astype(np.uint8), mode="RGB").save(path)


@pytest.fixture
def nothing_starts(tmp_path, monkeypatch):
    """Fails the test if Ray is started; yields the tracking arguments of an MLflow store in
    ``tmp_path`` and, after the command, checks that it holds no run."""
    import ray

    import wsss.cli
    import wsss.tune.tuner

    started = []
    for module in (wsss.cli, wsss.tune.tuner):  # where the commands and sweeps start Ray
        monkeypatch.setattr(module, "init_ray", lambda *a, **k: started.append(a))
    ray_was_up = ray.is_initialized()
    db = tmp_path / "mlflow.db"
    yield ["--tracking-uri", f"sqlite:///{db}"]
    assert started == [] and (ray_was_up or not ray.is_initialized())
    if db.exists():  # the store may be created by the reachability check, but holds no run
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{db}")
        experiments = [e.experiment_id for e in client.search_experiments()]
        assert client.search_runs(experiments) == []


def _run(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_train_cls_on_rgb_voc_masks_says_how_many_and_how_to_convert(tmp_path, capsys,
                                                                      nothing_starts):
    root, ids = _dataset(tmp_path / "data")
    _masks_to_rgb(root, ids)
    out = tmp_path / "out"
    code, err = _run(capsys, "train-cls", "--data", root, "--out", out, *nothing_starts)
    assert code == 2
    assert (f"wsss train-cls: error: {root}: no readable training images in split 'train' "
            f"({len(ids)} listed):") in err
    assert (f"{len(ids)} of {len(ids)} masks are RGB images in the PASCAL VOC colour map; "
            f"expected palette or grayscale class indices: "
            f"{root}/SegmentationClass/{ids[0]}.png\n") in err
    assert f"wsss data convert-masks --data {root}\n" in err
    assert not out.exists()


def test_train_cls_on_rgb_masks_of_other_colours(tmp_path, capsys, nothing_starts):
    root, ids = _dataset(tmp_path / "data")
    _masks_to_rgb(root, ids, voc_colours=False)
    code, err = _run(capsys, "train-cls", "--data", root, "--out", tmp_path / "out",
                     *nothing_starts)
    assert code == 2
    assert (f"{len(ids)} of {len(ids)} masks are RGB colour images; expected palette or "
            f"grayscale class indices: {root}/SegmentationClass/{ids[0]}.png\n") in err
    assert "convert-masks" not in err


def test_problems_are_grouped_by_kind_most_common_first(tmp_path, capsys, nothing_starts):
    """Five RGB masks, two missing images, one truncated JPEG: three lines, by count."""
    root, ids = _dataset(tmp_path / "data")
    _masks_to_rgb(root, ids[:5], voc_colours=False)
    for sample_id in ids[5:7]:
        (root / "JPEGImages" / f"{sample_id}.jpg").unlink()
    jpeg = root / "JPEGImages" / f"{ids[7]}.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[:200])
    code, err = _run(capsys, "train-cls", "--data", root, "--out", tmp_path / "out",
                     *nothing_starts)
    total = len(ids)
    assert total == N
    lines = [line.strip() for line in err.splitlines()[1:]]
    assert code == 2 and len(lines) == 3
    assert lines[0] == (f"5 of {total} masks are RGB colour images; expected palette or "
                        f"grayscale class indices: {root}/SegmentationClass/{ids[0]}.png")
    assert lines[1] == (f"2 of {total} ids have no image file: "
                        f"{root}/JPEGImages/{ids[5]}.jpg")
    assert lines[2].startswith(f"1 of {total} images cannot be decoded: "
                               f"{root}/JPEGImages/{ids[7]}.jpg (")


def test_train_seg_on_rgb_ground_truth(tmp_path, capsys, nothing_starts):
    """Segmenter training reads the ground truth for the image-level labels: the same error,
    before Ray and MLflow, with the pseudo-masks all present."""
    from wsss.data.palette import save_mask_png

    root, ids = _dataset(tmp_path / "data")
    pseudo = tmp_path / "pseudo"
    for sample_id in ids:
        save_mask_png(pseudo / f"{sample_id}.png",
                      np.asarray(Image.open(root / "SegmentationClass" / f"{sample_id}.png")))
    _masks_to_rgb(root, ids)
    out = tmp_path / "out"
    code, err = _run(capsys, "train-seg", "--pseudo-masks", pseudo, "--data", root, "--out", out,
                     *nothing_starts)
    assert code == 2
    assert (f"wsss train-seg: error: {root}: no usable training images in split 'train' "
            f"(image, labels and pseudo-mask in {pseudo})") in err
    assert (f"{len(ids)} of {len(ids)} masks are RGB images in the PASCAL VOC colour map; "
            f"expected palette or grayscale class indices: "
            f"{root}/SegmentationClass/{ids[0]}.png\n") in err
    assert not out.exists()


def test_sweep_checks_its_dataset_before_ray_and_mlflow(tmp_path, capsys, nothing_starts):
    from wsss.tune.tuner import main as sweep_main

    root, ids = _dataset(tmp_path / "data")
    _masks_to_rgb(root, ids)
    sweep = runpy.run_path(str(ROOT / "sweeps/erasing.py"))["SWEEP"]
    workdir = tmp_path / "runs"
    code = sweep_main(sweep, ["--smoke-test", "--workdir", str(workdir), "--data", str(root),
                              *nothing_starts])
    err = capsys.readouterr().err
    assert code == 2
    assert f"erasing sweep: error: {root}: no readable training images in split 'train'" in err
    assert f"{len(ids)} of {len(ids)} masks are RGB images in the PASCAL VOC colour map" in err
    assert not workdir.exists()
