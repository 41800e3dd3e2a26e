"""Confusion-matrix scores and average precision on hand-computed examples."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch

from wsss.core.classification import average_precision, mean_average_precision
from wsss.core.scoring import ConfusionMatrix

I = 255  # noqa: E741 - ignore label, short for readable grids
GT = np.array([[0, 0, 1, 1],
               [0, 0, 1, 1],
               [2, 2, 2, I],
               [2, 2, I, I]], dtype=np.uint8)
PRED = np.array([[0, 1, 1, 1],
                 [0, 0, 1, 2],
                 [2, 2, 0, 0],
                 [2, 1, 1, 2]], dtype=np.int64)
# Counted pixels (13 of 16, 3 ignored), rows = gt, columns = pred:
#   gt 0: 3 0, 1 1, 0 2   -> class 0: TP 3, FP 1 (gt 2), FN 1      IoU 3/5, P 3/4, R 3/4
#   gt 1: 0 0, 3 1, 1 2   -> class 1: TP 3, FP 2 (gt 0, gt 2), FN 1 IoU 3/6, P 3/5, R 3/4
#   gt 2: 1 0, 1 1, 3 2   -> class 2: TP 3, FP 1 (gt 1), FN 2      IoU 3/6, P 3/4, R 3/5
EXPECTED_MATRIX = np.array([[3, 1, 0], [0, 3, 1], [1, 1, 3]])
NAMES = ("background", "cat", "dog")


def nan_eq(a, b) -> bool:
    return bool(np.allclose(np.asarray(a, float), np.asarray(b, float), equal_nan=True))


def hand_matrix(num_classes: int = 3) -> ConfusionMatrix:
    return ConfusionMatrix(num_classes).update(PRED, GT)


def test_hand_example_counts_and_scores() -> None:
    cm = hand_matrix()
    assert np.array_equal(cm.matrix, EXPECTED_MATRIX)
    assert cm.total == 13
    s = cm.compute(NAMES)
    assert s.iou == pytest.approx((3 / 5, 3 / 6, 3 / 6))
    assert s.precision == pytest.approx((3 / 4, 3 / 5, 3 / 4))
    assert s.recall == pytest.approx((3 / 4, 3 / 4, 3 / 5))
    assert s.miou == pytest.approx((0.6 + 0.5 + 0.5) / 3)
    assert s.pixel_accuracy == pytest.approx(9 / 13)
    assert s.macro_precision == pytest.approx(0.7)
    assert s.macro_recall == pytest.approx(0.7)
    assert s.fg_precision is None and s.fg_recall is None


def test_ignore_pixels_are_excluded_whatever_the_prediction() -> None:
    other_pred = PRED.copy()
    other_pred[GT == I] = (other_pred[GT == I] + 1) % 3
    assert hand_matrix() == ConfusionMatrix(3).update(other_pred, GT)


def test_torch_inputs_match_numpy() -> None:
    cm = ConfusionMatrix(3).update(torch.from_numpy(PRED), torch.from_numpy(GT.astype(np.int64)))
    assert cm == hand_matrix()
    mixed = ConfusionMatrix(3).update(torch.from_numpy(PRED), GT)
    assert mixed == hand_matrix()


def test_batched_shapes_are_flattened() -> None:
    cm = ConfusionMatrix(3).update(np.stack([PRED, PRED]), np.stack([GT, GT]))
    assert np.array_equal(cm.matrix, 2 * EXPECTED_MATRIX)


def test_merge_of_two_halves_equals_the_whole() -> None:
    top = ConfusionMatrix(3).update(PRED[:2], GT[:2])
    bottom = ConfusionMatrix(3).update(PRED[2:], GT[2:])
    assert top + bottom == hand_matrix()
    assert sum([top, bottom]) == hand_matrix()
    merged = top.copy().merge(bottom)
    assert merged == hand_matrix()
    assert top != merged  # __add__ and copy leave the operands alone
    assert merged.compute().miou == pytest.approx(hand_matrix().compute().miou)


def test_serialisation_round_trips() -> None:
    cm = hand_matrix()
    assert pickle.loads(pickle.dumps(cm)) == cm
    assert ConfusionMatrix.from_dict(cm.to_dict()) == cm
    with pytest.raises(ValueError, match="shape"):
        ConfusionMatrix.from_dict({**cm.to_dict(), "num_classes": 4})


def test_absent_class_is_nan_and_excluded_from_means() -> None:
    s = hand_matrix(num_classes=4).compute()
    assert math.isnan(s.iou[3]) and math.isnan(s.precision[3]) and math.isnan(s.recall[3])
    assert s.miou == pytest.approx(1.6 / 3)
    assert s.macro_precision == pytest.approx(0.7)
    assert "iou/3" not in s.summary() and "iou/2" in s.summary()


def test_class_only_in_prediction_counts_with_iou_zero() -> None:
    # class 1 is predicted once but never in gt: IoU 0, precision 0, recall undefined
    s = ConfusionMatrix(3).update(np.array([0, 0, 1]), np.array([0, 0, 0])).compute()
    assert nan_eq(s.iou, (2 / 3, 0.0, np.nan))
    assert nan_eq(s.precision, (1.0, 0.0, np.nan))
    assert nan_eq(s.recall, (2 / 3, np.nan, np.nan))
    assert s.miou == pytest.approx(1 / 3)


def test_ignore_in_prediction_is_a_miss() -> None:
    s = ConfusionMatrix(2).update(np.array([0, I, 1]), np.array([0, 1, 1])).compute()
    assert nan_eq(s.iou, (1.0, 1 / 2))
    assert nan_eq(s.precision, (1.0, 1.0))
    assert nan_eq(s.recall, (1.0, 1 / 2))
    assert s.pixel_accuracy == pytest.approx(2 / 3)


def test_foreground_precision_recall_hand_case() -> None:
    # gt fg at positions 1, 2, 3, 4; pred fg at 0, 1 (4 predicts ignore); fg TP only at 1
    gt = np.array([0, 1, 2, 2, 1])
    pred = np.array([1, 1, 0, 0, I])
    s = ConfusionMatrix(3).update(pred, gt).compute(background=0)
    assert s.fg_precision == pytest.approx(1 / 2)
    assert s.fg_recall == pytest.approx(1 / 4)
    # confusing two foreground classes is still a foreground hit
    s = ConfusionMatrix(3).update(np.array([2, 0]), np.array([1, 0])).compute(background=0)
    assert (s.fg_precision, s.fg_recall) == (1.0, 1.0)
    assert s.iou[1] == 0.0


def test_foreground_scores_with_other_background_index() -> None:
    s = hand_matrix().compute(background=2)
    # fg = classes 0, 1: rows/cols 0..1 of the matrix -> TP 3+1+0+3 = 7, pred 9, gt 8
    assert s.fg_precision == pytest.approx(7 / 9)
    assert s.fg_recall == pytest.approx(7 / 8)


def test_empty_matrix_scores_are_nan() -> None:
    s = ConfusionMatrix(2).compute(background=0)
    assert math.isnan(s.miou) and math.isnan(s.pixel_accuracy) and math.isnan(s.fg_recall)


def test_summary_and_table() -> None:
    s = hand_matrix().compute(NAMES, background=0)
    summary = s.summary()
    assert summary["miou"] == pytest.approx(1.6 / 3)
    assert summary["fg_precision"] == pytest.approx(8 / 9)
    assert summary["fg_recall"] == pytest.approx(8 / 9)
    assert summary["iou/cat"] == pytest.approx(0.5)
    assert summary["precision/cat"] == pytest.approx(0.6)
    assert summary["recall/dog"] == pytest.approx(0.6)
    assert all(isinstance(v, float) for v in summary.values())
    table = s.table()
    lines = table.splitlines()
    assert lines[0].split() == ["class", "IoU", "prec", "recall"]
    assert lines[2].split() == ["background", "60.00", "75.00", "75.00"]
    assert lines[3].split() == ["cat", "50.00", "60.00", "75.00"]
    assert "mIoU 53.33" in table and "pixel accuracy 69.23" in table
    assert "precision 88.89" in table
    assert len({len(line) for line in lines[:6]}) == 1  # fixed width rows


def test_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(2, 8\)"):
        ConfusionMatrix(3).update(PRED, GT.reshape(2, 8))


@pytest.mark.parametrize("bad", [3, -1, 254])
def test_out_of_range_prediction(bad: int) -> None:
    pred = PRED.copy()
    pred[0, 0] = bad
    with pytest.raises(ValueError, match=str(bad)):
        ConfusionMatrix(3).update(pred, GT)


def test_out_of_range_gt_and_bad_dtypes() -> None:
    gt = GT.copy()
    gt[0, 0] = 7
    with pytest.raises(ValueError, match="gt"):
        ConfusionMatrix(3).update(PRED, gt)
    with pytest.raises(TypeError):
        ConfusionMatrix(3).update(PRED.astype(np.float32), GT)


def test_invalid_construction_and_merge() -> None:
    with pytest.raises(ValueError):
        ConfusionMatrix(3, ignore_index=1)
    with pytest.raises(ValueError, match="3 and 4"):
        hand_matrix(3) + hand_matrix(4)
    with pytest.raises(ValueError, match="class names"):
        hand_matrix().compute(("a", "b"))
    with pytest.raises(ValueError, match="background"):
        hand_matrix().compute(background=3)


# ------------------------------------------------------------------- average precision


def test_average_precision_hand_example() -> None:
    # ranks 1 and 3 are positive: precisions 1/1 and 2/3
    ap = average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0])
    assert ap == pytest.approx([(1 + 2 / 3) / 2])


def test_average_precision_tied_scores_form_one_threshold() -> None:
    # threshold 0.9 takes both tied items: P = 1/2 at R = 1/2; then P = 2/3 at R = 1
    ap = average_precision([0.9, 0.9, 0.5], [0, 1, 1])
    assert ap == pytest.approx([0.5 * 0.5 + 0.5 * 2 / 3])
    assert average_precision([0.9, 0.9, 0.5], [1, 0, 1]) == pytest.approx(ap)


def test_average_precision_multi_class_and_no_positive_class() -> None:
    scores = np.array([[0.9, 0.1, 0.3], [0.2, 0.8, 0.4], [0.6, 0.7, 0.2]])
    targets = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 0]])
    ap = average_precision(scores, targets)
    assert ap[0] == pytest.approx(1.0)
    assert ap[1] == pytest.approx(1.0)
    assert math.isnan(ap[2])
    assert mean_average_precision(scores, targets) == pytest.approx(1.0)
    targets[0] = [0, 0, 0]  # class 0 now has no positives either
    targets[2] = [1, 1, 0]  # class 0: positive ranked 2nd -> AP 1/2
    assert average_precision(scores, targets)[0] == pytest.approx(0.5)
    assert mean_average_precision(torch.tensor(scores), torch.tensor(targets)) == \
        pytest.approx((0.5 + 1.0) / 2)


def _reference_ap(scores: np.ndarray, targets: np.ndarray) -> float:
    """AP = sum_k (R_k - R_{k-1}) P_k over distinct thresholds, computed one by one."""
    ap, prev_recall = 0.0, 0.0
    for threshold in np.unique(scores)[::-1]:
        chosen = scores >= threshold
        tp = (targets[chosen] == 1).sum()
        recall = tp / targets.sum()
        ap += (recall - prev_recall) * tp / chosen.sum()
        prev_recall = recall
    return ap


def test_average_precision_matches_threshold_definition_on_random_data() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 10, size=(60, 5)) / 10.0  # many ties
    targets = (rng.random((60, 5)) < 0.3).astype(int)
    ap = average_precision(scores, targets)
    expected = [_reference_ap(scores[:, c], targets[:, c]) for c in range(5)]
    assert ap == pytest.approx(expected)


def test_average_precision_input_errors() -> None:
    with pytest.raises(ValueError, match="shape"):
        average_precision(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="0/1"):
        average_precision([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="NaN"):
        average_precision([0.1, np.nan], [0, 1])


def test_errors_split_each_union_into_false_positives_and_negatives() -> None:
    # class 1 (4 true pixels) is predicted on only 2 of them: too narrow, FN > FP; class 0
    # takes the other 2 and so is too wide. An ignored prediction is a false negative.
    gt = np.array([0, 0, 1, 1, 1, 1, 1])
    pred = np.array([0, 0, 1, 1, 0, 0, I])
    s = ConfusionMatrix(2).update(pred, gt).compute()
    assert nan_eq(s.false_negative, (0.0, 3 / 5))
    assert nan_eq(s.false_positive, (2 / 4, 0.0))
    for iou, fp, fn in zip(s.iou, s.false_positive, s.false_negative):
        assert iou + fp + fn == pytest.approx(1.0)
    assert s.mean_false_negative == pytest.approx(0.3)
    assert s.summary()["mean_false_positive"] == pytest.approx(0.25)
    assert "false positives 25.00  false negatives 30.00" in s.table()


# -- the Scorer: one dataset's scores, merged from per-image rows ------------------------------
def _info(has_background: bool):
    from wsss.data.voc import DatasetInfo

    names = ("background", "cat", "dog") if has_background else ("grass", "cow", "sky")
    return DatasetInfo("data", names, has_background)


def test_a_mask_is_degenerate_when_it_loses_the_layout() -> None:
    from wsss.core.scoring import is_degenerate

    gt = np.array([[0, 0, 1, 1], [0, 0, 2, 255]], np.uint8)
    assert not is_degenerate(gt, gt, 0, 3)  # the ground truth itself
    assert is_degenerate(np.ones_like(gt), gt, 0, 3)  # flooded by one class
    assert is_degenerate(np.array([[1, 1, 1, 1], [2, 2, 2, 2]], np.uint8), gt, 0, 3)  # no bg
    assert not is_degenerate(np.array([[1, 1, 1, 1], [2, 2, 2, 2]], np.uint8), gt, None, 3)
    assert is_degenerate(np.full_like(gt, 255), gt, None, 3)  # nothing labelled at all
    one_class = np.full((2, 2), 1, np.uint8)
    assert not is_degenerate(one_class, one_class, None, 3)  # one class truly present
    assert not is_degenerate(one_class, one_class, 0, 3)  # no background to lose


@pytest.mark.parametrize("has_background", [True, False])
def test_scorer_rows_merge_into_the_scores_of_the_whole(has_background: bool) -> None:
    from wsss.core.scoring import Scorer

    info = _info(has_background)
    rng = np.random.default_rng(0)
    gts = [rng.integers(0, 3, (8, 8)).astype(np.uint8) for _ in range(5)]
    preds = [gt.copy() for gt in gts]
    preds[1][:] = 1  # flooded
    preds[3][rng.random((8, 8)) < 0.3] = 255
    whole = Scorer(info)
    rows = []
    for pred, gt in zip(preds, gts):
        whole.update(pred, gt)
        rows.append(Scorer(info).update(pred, gt).counts())
    merged = Scorer(info)
    for row in rows:
        merged.add(row)
    merged.add(np.zeros(0, np.int64))  # a row of an unscored image adds nothing
    assert np.array_equal(merged.counts(), whole.counts())
    assert merged.images == 5 and merged.degenerate == 1 and merged.degenerate_share == 0.2
    assert merged.scores() == whole.scores()
    assert merged.scores().background == (0 if has_background else None)
    with pytest.raises(ValueError, match="does not fit 3 classes"):
        merged.add(np.zeros(7, np.int64))
