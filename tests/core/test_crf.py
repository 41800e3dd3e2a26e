"""Dense CRF: follows image edges, keeps a perfect mask, present-classes-only equals all-classes."""

from __future__ import annotations

import numpy as np
import pytest

from wsss.config import ConfigError, RefineConfig, load_config
from wsss.core.masks import crf_probs, dense_crf, label_probs, normalise_scores, pseudo_mask

CFG = RefineConfig()


def _two_regions(height: int = 61, width: int = 83, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noisy image [H, W, 3] uint8: a dark left part, a bright right part along a wavy edge;
    and the true labels [H, W] (0 left, 1 right)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    edge = width * 0.45 + 4.0 * np.sin(yy / 6.0)
    truth = (xx >= edge).astype(np.int64)
    image = np.where(truth[..., None] == 1, [190.0, 170.0, 120.0], [50.0, 70.0, 90.0])
    image = image + rng.normal(0.0, 6.0, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), truth


def _iou_mean(labels: np.ndarray, truth: np.ndarray) -> float:
    ious = [((labels == c) & (truth == c)).sum() / ((labels == c) | (truth == c)).sum()
            for c in (0, 1)]
    return float(np.mean(ious))


def _blurred_probs(truth: np.ndarray, shift: int = 7, width: float = 6.0) -> np.ndarray:
    """Smooth class-1 probability [2, H, W] whose 0.5 level is ``shift`` px right of the edge:
    what an upsampled low-resolution map looks like."""
    xx = np.arange(truth.shape[1])[None, :]
    edge = truth.argmax(axis=1)[:, None] + shift
    p1 = 1.0 / (1.0 + np.exp(-(xx - edge) / width))
    return np.stack([1.0 - p1, p1]).astype(np.float32)


def test_crf_moves_a_blurred_mask_to_the_edge() -> None:
    image, truth = _two_regions()
    probs = _blurred_probs(truth)
    before = _iou_mean(probs.argmax(axis=0), truth)
    refined = dense_crf(image, probs, CFG)
    after = _iou_mean(refined.argmax(axis=0), truth)
    assert refined.shape == probs.shape and refined.dtype == np.float32
    assert np.allclose(refined.sum(axis=0), 1.0, atol=1e-4)
    assert after > before + 0.05, (before, after)
    assert after > 0.95


def test_label_probs_put_the_confidence_on_the_label() -> None:
    labels = np.array([[0, 2], [1, 2]])
    probs = label_probs(labels, 3, 0.7)
    assert probs.shape == (3, 2, 2) and np.allclose(probs.sum(axis=0), 1.0)
    assert (probs.argmax(axis=0) == labels).all()
    assert np.allclose(probs.max(axis=0), 0.7) and np.allclose(np.sort(probs, 0)[0], 0.15)


def test_label_unary_crf_moves_a_shifted_mask_to_the_edge() -> None:
    """From labels alone (no score magnitudes) the CRF still snaps the boundary to the edge."""
    image, truth = _two_regions(seed=2)
    cfg = RefineConfig(crf_unary="labels", crf_label_confidence=0.7)
    probs = crf_probs(_blurred_probs(truth), cfg)
    before = _iou_mean(probs.argmax(axis=0), truth)
    after = _iou_mean(dense_crf(image, probs, cfg).argmax(axis=0), truth)
    assert after > before + 0.05 and after > 0.95, (before, after)


def test_label_confidence_must_keep_the_label_ahead_of_the_rest() -> None:
    """At 0.5 a two-class unary is uniform and the CRF would return a single class."""
    with pytest.raises(ConfigError, match="crf_label_confidence"):
        RefineConfig(crf_unary="labels", crf_label_confidence=0.5).validate()


def test_crf_keeps_a_perfect_mask() -> None:
    image, truth = _two_regions(seed=1)
    probs = np.stack([truth == 0, truth == 1]).astype(np.float32) * 0.9 + 0.05
    refined = dense_crf(image, probs, CFG)
    assert (refined.argmax(axis=0) == truth).all()


def test_present_classes_only_equals_all_classes_with_zero_scores() -> None:
    image, truth = _two_regions(seed=2)
    present = _blurred_probs(truth)
    present = np.concatenate([present * 0.8, np.zeros_like(present[:1])])  # + a third class
    present[2, :15] = 0.95
    present[:, :, 70:] = 0.0  # no evidence at all: uniform over the present classes
    probs = normalise_scores(present)
    ids = np.array([4, 11, 17])
    full = np.zeros((21,) + present.shape[1:], dtype=np.float32)
    full[ids] = probs  # the same probabilities, absent classes 0
    small = dense_crf(image, probs, CFG).argmax(axis=0)
    large = dense_crf(image, full, CFG).argmax(axis=0)
    assert (ids[small] == large).all()
    assert len(np.unique(large)) >= 2


def test_any_layout_and_odd_sizes() -> None:
    image, truth = _two_regions(height=37, width=53, seed=3)
    probs = _blurred_probs(truth)
    reference = dense_crf(image, probs, CFG)
    flipped = dense_crf(image[:, ::-1], probs[:, :, ::-1].astype(np.float64), CFG)
    # the permutohedral lattice is not mirror-symmetric: equal up to its approximation
    assert np.allclose(flipped[:, :, ::-1], reference, atol=1e-3)
    assert (flipped[:, :, ::-1].argmax(axis=0) == reference.argmax(axis=0)).all()
    fortran = dense_crf(np.asfortranarray(image), np.asfortranarray(probs), CFG)
    assert np.allclose(fortran, reference, atol=1e-6)
    tall = dense_crf(np.ascontiguousarray(image.transpose(1, 0, 2)), probs.transpose(0, 2, 1),
                     CFG)
    assert tall.shape == (2, 53, 37)


def test_single_class_and_bad_shapes() -> None:
    image, _ = _two_regions(height=9, width=11)
    one = np.ones((1, 9, 11), dtype=np.float32)
    assert (dense_crf(image, one, CFG) == one).all()
    with pytest.raises(ValueError, match="matching probs"):
        dense_crf(image[:8], np.ones((2, 9, 11)), CFG)


def test_zero_iterations_are_invalid() -> None:
    image, truth = _two_regions(height=9, width=11)
    with pytest.raises(ConfigError, match="crf_iterations"):
        dense_crf(image, _blurred_probs(truth), RefineConfig(crf_iterations=0))
    with pytest.raises(ConfigError, match="refine.crf_iterations=0"):
        load_config(None, ["refine.crf_iterations=0"])
    with pytest.raises(ConfigError, match="refine.bg_mode"):
        load_config(None, ["refine.bg_mode=sigmoid"])


def test_pseudo_mask_with_crf_follows_the_edge() -> None:
    """Maps of one foreground class blurred past the object's edge; the CRF snaps back."""
    image, truth = _two_regions(seed=4)
    maps = _blurred_probs(truth, shift=-6)[1:]  # class map leaks 6 px into the background
    cfg = RefineConfig(bg_threshold=0.5)
    plain = pseudo_mask(image, maps, [3], True, RefineConfig(bg_threshold=0.5, crf=False))
    refined = pseudo_mask(image, maps, [3], True, cfg)
    truth_ids = np.where(truth == 1, 3, 0)
    assert (refined == truth_ids).mean() > (plain == truth_ids).mean() + 0.05
    with pytest.raises(ValueError, match="needs the image"):
        pseudo_mask(None, maps, [3], True, cfg)


def test_refine_stage_writes_resumes_and_lists_bad_maps(tmp_path) -> None:
    """run_refine: palette PNG per image, mIoU vs ground truth, missing maps listed, resume."""
    from wsss.core.maps import save_maps
    from wsss.config import TrackingConfig
    from wsss.data.synthetic import generate_dataset
    from wsss.data.dataset import VOCDataset
    from wsss.data.decode import load_mask
    from wsss.pipeline.masks import run_refine

    root = tmp_path / "synth"
    generate_dataset(root, n=6, seed=0, image_size=48, val_fraction=0.2)
    dataset = VOCDataset(root, "train")
    for sample in list(dataset)[1:]:  # the first id gets no map file
        mask = sample["mask"].numpy()
        ids = [c for c in np.unique(mask) if c not in (0, 255)]
        save_maps(tmp_path / "cams" / f"{sample['id']}.npz",
                  np.stack([(mask == c).astype(np.float32) for c in ids]), ids)
    tracking = TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="refine")
    out = tmp_path / "masks"
    small = RefineConfig(crf_gaussian_sxy=1, crf_bilateral_sxy=10, crf_bilateral_srgb=8)
    report = run_refine(tmp_path / "cams", root, "train", out, small, tracking)
    assert report.done == len(dataset) - 1 and report.reused == 0
    assert [i for i, _ in report.failed] == dataset.ids[:1]
    assert "map file not found" in report.failed[0][1]
    assert report.extra["miou"] > 0.8, report.extra  # maps are the ground truth
    mask = load_mask(out / f"{dataset.ids[1]}.png", (48, 48), dataset.info.num_classes)
    assert mask.dtype == np.uint8 and (out / "report.json").is_file()
    again = run_refine(tmp_path / "cams", root, "train", out, small, tracking)
    assert again.done == 0 and again.reused == len(dataset) - 1
