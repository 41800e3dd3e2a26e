"""The synthetic generator: VOC layout, label consistency, determinism, variety, and the
defining property (a small part identifies the class; the bodies carry only a weak class tint)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.data.synthetic import CLASS_NAMES, generate_dataset, render_sample, sample_id
from wsss.data.palette import IGNORE_INDEX
from wsss.data.dataset import VOCDataset
from wsss.data.reader import read_info, read_split

SEED, N, SIZE = 0, 24, 64  # what the ``synth_root`` fixture generates


def _samples() -> list:
    return [render_sample(SEED, i, SIZE) for i in range(N)]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_is_read_by_voc_dataset(synth_root: Path) -> None:
    info = read_info(synth_root)
    assert info.class_names == CLASS_NAMES and info.has_background and 4 <= info.num_fg <= 5
    train, val = read_split(synth_root, "train"), read_split(synth_root, "val")
    assert not set(train) & set(val) and len(val) == round(N * 0.2)
    assert sorted(train + val) == read_split(synth_root, "trainval")
    scan = VOCDataset(synth_root, "trainval").scan()
    assert scan.problems == [] and len(scan.ids) == N
    item = VOCDataset(synth_root, "train")[0]
    assert tuple(item["image"].shape) == (3, SIZE, SIZE) and tuple(item["mask"].shape) == (SIZE, SIZE)
    with Image.open(synth_root / "SegmentationClass" / f"{train[0]}.png") as mask:
        assert mask.mode == "P"
    assert not list(synth_root.rglob("*.tmp")), "temporary files left behind"


def test_files_match_rendered_ground_truth(synth_root: Path) -> None:
    dataset = VOCDataset(synth_root, "trainval")
    for index, sample in enumerate(_samples()):
        item = dataset[dataset.ids.index(sample_id(index))]
        assert np.array_equal(item["mask"].numpy(), sample.mask)
        jpeg = item["image"].permute(1, 2, 0).numpy().astype(np.int16)
        assert np.abs(jpeg - sample.image).mean() < 3.0  # JPEG quality 95, no chroma subsampling


def test_labels_are_the_classes_in_the_mask(synth_root: Path) -> None:
    dataset = VOCDataset(synth_root, "trainval")
    for index, sample in enumerate(_samples()):
        item = dataset[dataset.ids.index(sample_id(index))]
        in_mask = {int(c) for c in np.unique(sample.mask)} - {0, IGNORE_INDEX}
        assert 1 <= len(sample.classes) <= 3 and in_mask == set(sample.classes)
        assert set(item["class_ids"]) - {0} == in_mask
        assert np.flatnonzero(item["labels"].numpy()).tolist() == sorted(c - 1 for c in in_mask)


def test_void_band_is_thin_and_on_boundaries() -> None:
    for sample in _samples()[:8]:
        void = sample.mask == IGNORE_INDEX
        assert 0 < void.mean() < 0.15
        labels = sample.instances.astype(np.int16)
        edge = np.zeros_like(void)
        edge[1:] |= labels[1:] != labels[:-1]
        edge[:-1] |= labels[:-1] != labels[1:]
        edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
        edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
        assert not (void & ~edge).any()


def test_same_seed_same_bytes_other_seed_differs(synth_root: Path, tmp_path: Path) -> None:
    again = _files(Path(generate_dataset(tmp_path / "again", n=N, seed=SEED, image_size=SIZE).root))
    assert again == _files(synth_root)
    other = _files(Path(generate_dataset(tmp_path / "other", n=N, seed=SEED + 1,
                                         image_size=SIZE).root))
    images = [k for k in other if k.startswith("JPEGImages")]
    assert sum(other[k] != again[k] for k in images) == len(images)


def test_bad_arguments_are_rejected(tmp_path: Path) -> None:
    for kwargs in ({"n": 1}, {"val_fraction": 0.0}, {"val_fraction": 1.0}, {"image_size": 16}):
        with pytest.raises(ValueError):
            generate_dataset(tmp_path / "bad", **kwargs)


def test_several_classes_counts_and_sizes() -> None:
    samples = [render_sample(SEED, i, SIZE) for i in range(60)]
    classes = {c for s in samples for c in s.classes}
    counts = {len(s.classes) for s in samples}
    areas = [(s.instances == k).sum() for s in samples for k in range(1, len(s.classes) + 1)]
    assert classes == set(range(1, len(CLASS_NAMES)))
    assert counts == {1, 2, 3}
    assert max(areas) > 3 * min(areas)


def _object_stats(samples: list) -> tuple[list[float], dict[int, list], dict[int, list]]:
    """Part share of each object, and per class the mean body / part colours [3] per object."""
    fractions, body, part = [], {}, {}
    for s in samples:
        pixels = s.image.reshape(-1, 3).astype(np.float64)
        for k, cls in enumerate(s.classes, start=1):
            obj = (s.instances == k).reshape(-1)
            is_part = (s.parts.reshape(-1) == cls) & obj
            fractions.append(is_part.sum() / obj.sum())
            body.setdefault(cls, []).append(pixels[obj & ~is_part].mean(0))
            part.setdefault(cls, []).append(pixels[is_part].mean(0))
    return fractions, body, part


def _nearest_mean_accuracy(features: dict[int, list]) -> float:
    """Accuracy of classifying per-object colours [3] by the nearest class mean, fitted on the
    first half of each class's objects and scored on the second half."""
    fit = {c: np.mean(v[: len(v) // 2], axis=0) for c, v in features.items()}
    classes = sorted(fit)
    means = np.array([fit[c] for c in classes])
    hits = total = 0
    for c, values in features.items():
        held_out = np.array(values[len(values) // 2:])
        nearest = np.argmin(((held_out[:, None] - means[None]) ** 2).sum(-1), axis=1)
        hits += int((np.asarray(classes)[nearest] == c).sum())
        total += len(held_out)
    return hits / total


def test_part_is_the_strong_class_cue_and_the_body_a_weak_one() -> None:
    samples = [render_sample(SEED, i, SIZE) for i in range(200)]
    fractions, body, part = _object_stats(samples)
    assert 0.05 < min(fractions) and max(fractions) < 0.22 and 0.09 < np.mean(fractions) < 0.16
    body_means = np.array([np.mean(body[c], axis=0) for c in sorted(body)])
    part_means = np.array([np.mean(part[c], axis=0) for c in sorted(part)])

    def pairwise(x: np.ndarray) -> np.ndarray:
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        return d[np.triu_indices(len(x), 1)]

    assert pairwise(body_means).max() < 0.3 * pairwise(part_means).min()
    # The part alone identifies the class; the body's tint is a cue well above chance (0.2)
    # but unreliable, so a classifier can get by on the part and must be pushed to the body.
    assert _nearest_mean_accuracy(part) > 0.95
    assert 0.35 < _nearest_mean_accuracy(body) < 0.8


def test_body_texture_differs_from_background() -> None:
    """Bodies carry fine stripes: far more pixel-to-pixel contrast than the smooth background."""
    body_grad, bg_grad = [], []
    for s in _samples():
        gray = s.image.astype(np.float64).mean(-1)
        grad = np.abs(np.diff(gray, axis=1))[:-1] + np.abs(np.diff(gray, axis=0))[:, :-1]
        inner = (s.mask[:-1, :-1] == s.mask[1:, :-1]) & (s.mask[:-1, :-1] == s.mask[:-1, 1:])
        region = s.instances[:-1, :-1]
        body_grad.append(grad[inner & (region > 0) & (s.parts[:-1, :-1] == 0)])
        bg_grad.append(grad[inner & (region == 0)])
    assert np.median(np.concatenate(body_grad)) > 2.5 * np.median(np.concatenate(bg_grad))
