"""Segmentation and multi-label classification metrics.

Segmentation scores are accumulated in a ``ConfusionMatrix`` (one per worker or data block),
the matrices are summed, and the scores are computed once from the total. Per-image scores are
never averaged.

Conventions:

* rows of the matrix are ground-truth classes, columns predicted classes;
* ground-truth pixels equal to ``ignore_index`` are skipped entirely;
* predicted pixels equal to ``ignore_index`` (e.g. "uncertain" regions of a pseudo-mask) on a
  valid ground-truth pixel count as a miss: a false negative of the true class, a false
  positive of no class;
* a class's IoU is NaN when it occurs in neither ground truth nor prediction, precision is NaN
  when it was never predicted, recall is NaN when it never occurs in ground truth; mean scores
  (mIoU, macro precision/recall) are means over the non-NaN classes. So mIoU averages over the
  classes that occur in ground truth *or* prediction;
* a class's errors split its union into false positives and false negatives: IoU + FP + FN = 1,
  each a fraction of the union (the FP/FN analysis of AdvCAM, Lee et al., CVPR 2021, Sec. 5):
  a map too narrow for its objects shows as FN > FP, one too wide as FP > FN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from wsss.data.palette import IGNORE_INDEX
from wsss.data.voc import DatasetInfo
from wsss.names import check_class_names, mapped_class_keys

ArrayLike = np.ndarray | torch.Tensor


class ConfusionMatrix:
    """Pixel counts ``matrix[gt, pred]`` int64 [C, C] plus ``missed`` int64 [C].

    ``missed[c]`` counts pixels of true class ``c`` whose prediction was ``ignore_index``.
    Instances are picklable (plain numpy state); ``to_dict`` gives a JSON-friendly form.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index {ignore_index} is a valid class index "
                             f"(num_classes={num_classes})")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.missed = np.zeros(num_classes, dtype=np.int64)

    def __repr__(self) -> str:
        return (f"ConfusionMatrix(num_classes={self.num_classes}, "
                f"ignore_index={self.ignore_index}, pixels={self.total})")

    @property
    def total(self) -> int:
        """Number of counted (non-ignored ground-truth) pixels."""
        return int(self.matrix.sum() + self.missed.sum())

    def reset(self) -> None:
        self.matrix[:] = 0
        self.missed[:] = 0

    def update(self, pred: ArrayLike, gt: ArrayLike) -> ConfusionMatrix:
        """Add one prediction / ground truth pair of integer labels, any equal shapes.

        Torch tensors on one device are counted there; only the [C, C] counts are copied back.
        Raises ValueError for mismatched shapes or labels outside ``[0, C)`` other than
        ``ignore_index``; TypeError for non-integer arrays.
        """
        pred_shape, gt_shape = _shape(pred), _shape(gt)
        if pred_shape != gt_shape:
            raise ValueError(f"pred shape {pred_shape} does not match gt shape {gt_shape}")
        device = None
        if isinstance(pred, torch.Tensor) and isinstance(gt, torch.Tensor) \
                and pred.device == gt.device:
            device = pred.device
        pred_t, gt_t = _flat_labels(pred, "pred", device), _flat_labels(gt, "gt", device)
        self._check_range(pred_t, "pred")
        self._check_range(gt_t, "gt")
        valid = gt_t != self.ignore_index
        pred_t, gt_t = pred_t[valid], gt_t[valid]
        miss = pred_t == self.ignore_index
        c = self.num_classes
        hit = gt_t[~miss] * c + pred_t[~miss]
        self.matrix += torch.bincount(hit, minlength=c * c).reshape(c, c).cpu().numpy()
        self.missed += torch.bincount(gt_t[miss], minlength=c).cpu().numpy()
        return self

    def _check_range(self, labels: torch.Tensor, name: str) -> None:
        """Raise ValueError naming the values of ``labels`` [P] outside the class range."""
        bad = ((labels < 0) | (labels >= self.num_classes)) & (labels != self.ignore_index)
        if bool(bad.any()):
            values = sorted(set(labels[bad].unique()[:10].tolist()))
            raise ValueError(f"{name} has label value(s) {values} outside "
                             f"0..{self.num_classes - 1} (ignore = {self.ignore_index})")

    def _check_compatible(self, other: Any) -> None:
        if not isinstance(other, ConfusionMatrix):
            raise TypeError(f"cannot merge ConfusionMatrix with {type(other).__name__}")
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge confusion matrices with {self.num_classes} and "
                             f"{other.num_classes} classes")
        if other.ignore_index != self.ignore_index:
            raise ValueError(f"cannot merge confusion matrices with ignore_index "
                             f"{self.ignore_index} and {other.ignore_index}")

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add ``other``'s counts into this matrix (in place); returns self."""
        self._check_compatible(other)
        self.matrix += other.matrix
        self.missed += other.missed
        return self

    def copy(self) -> ConfusionMatrix:
        out = ConfusionMatrix(self.num_classes, self.ignore_index)
        return out.merge(self)

    def __add__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """New matrix with the summed counts; ``sum(matrices)`` works too."""
        return self.copy().merge(other)

    def __radd__(self, other: Any) -> ConfusionMatrix:
        if isinstance(other, int) and other == 0:
            return self.copy()
        return self.__add__(other)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ConfusionMatrix):
            return NotImplemented
        return (self.num_classes == other.num_classes
                and self.ignore_index == other.ignore_index
                and np.array_equal(self.matrix, other.matrix)
                and np.array_equal(self.missed, other.missed))

    __hash__ = None  # mutable

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form: counts as nested lists of ints."""
        return {"num_classes": self.num_classes, "ignore_index": self.ignore_index,
                "matrix": self.matrix.tolist(), "missed": self.missed.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConfusionMatrix:
        """Inverse of ``to_dict``; raises ValueError on inconsistent shapes."""
        out = cls(int(data["num_classes"]), int(data["ignore_index"]))
        matrix = np.asarray(data["matrix"], dtype=np.int64)
        missed = np.asarray(data.get("missed", np.zeros(out.num_classes)), dtype=np.int64)
        if matrix.shape != out.matrix.shape or missed.shape != out.missed.shape:
            raise ValueError(f"matrix shape {matrix.shape} / missed shape {missed.shape} do not "
                             f"fit {out.num_classes} classes")
        if (matrix < 0).any() or (missed < 0).any():
            raise ValueError("confusion matrix counts must be non-negative")
        out.matrix[:] = matrix
        out.missed[:] = missed
        return out

    def compute(self, class_names: Sequence[str] | None = None,
                background: int | None = None) -> SegmentationScores:
        """Scores from the accumulated counts (see the module docstring for conventions).

        ``background``: index of the background class; when given, binary foreground
        precision/recall (foreground = any class other than ``background``) are computed too.
        """
        c = self.num_classes
        names = tuple(str(i) for i in range(c)) if class_names is None else tuple(class_names)
        if len(names) != c:
            raise ValueError(f"got {len(names)} class names for {c} classes")
        if background is not None and not 0 <= background < c:
            raise ValueError(f"background index {background} outside 0..{c - 1}")
        m = self.matrix.astype(np.float64)
        tp = np.diag(m)
        gt_total = m.sum(axis=1) + self.missed
        pred_total = m.sum(axis=0)
        union = gt_total + pred_total - tp
        iou = safe_ratio(tp, union)
        precision, recall = safe_ratio(tp, pred_total), safe_ratio(tp, gt_total)
        fg_precision = fg_recall = None
        if background is not None:
            fg_precision, fg_recall = _foreground_scores(m, self.missed, background)
        return SegmentationScores(
            class_names=names, iou=_floats(iou), precision=_floats(precision),
            recall=_floats(recall), miou=nan_mean(iou),
            pixel_accuracy=float(safe_ratio(tp.sum(), gt_total.sum())),
            macro_precision=nan_mean(precision), macro_recall=nan_mean(recall),
            fg_precision=fg_precision, fg_recall=fg_recall, background=background,
            num_pixels=self.total, false_positive=_floats(safe_ratio(pred_total - tp, union)),
            false_negative=_floats(safe_ratio(gt_total - tp, union)))


def is_degenerate(pred: ArrayLike, gt: ArrayLike, background: int | None,
                  num_classes: int) -> bool:
    """Whether a mask lost its image's layout: it holds a single class (or none) where the
    ground truth holds several, or, with a background class, no background where the ground
    truth has some: the flooded masks a high mIoU can hide (a map spread over the whole
    image). Both [H, W] class indices; pixels whose ground truth is 255 are left out.

    Raises ValueError when the shapes differ.
    """
    pred, gt = as_numpy(pred).reshape(-1), as_numpy(gt).reshape(-1)
    if pred.shape != gt.shape:
        raise ValueError(f"pred has {pred.size} pixels, gt {gt.size}")
    valid = gt != IGNORE_INDEX
    labelled = valid & (pred != IGNORE_INDEX)
    gt_present = np.bincount(gt[valid].astype(np.int64), minlength=num_classes) > 0
    pred_present = np.bincount(pred[labelled].astype(np.int64), minlength=num_classes) > 0
    if gt_present.sum() > 1 and pred_present.sum() <= 1:
        return True
    return background is not None and bool(gt_present[background]) and \
        not pred_present[background]


class Scorer:
    """Scores masks against ground truth for one dataset: the one place that knows its class
    names and background index, merges per-image or per-block counts and serialises them.

    A worker scores its masks (``update``) and sends ``counts()`` (a flat int64 row); the
    driver adds the rows (``add``) and computes the scores once (``scores``).

    Args:
        info: the dataset's classes; class 0 is the background class when ``has_background``.
    """

    def __init__(self, info: DatasetInfo) -> None:
        self.class_names = tuple(info.class_names)
        self.background = 0 if info.has_background else None
        self.confusion = ConfusionMatrix(info.num_classes)
        self.images = 0
        self.degenerate = 0

    def update(self, pred: ArrayLike, gt: ArrayLike) -> Scorer:
        """Add one image's mask ``pred`` and ground truth ``gt`` (both [H, W] class indices,
        255 = ignore)."""
        self.confusion.update(pred, gt)
        self.images += 1
        self.degenerate += int(is_degenerate(pred, gt, self.background,
                                             self.confusion.num_classes))
        return self

    @property
    def degenerate_share(self) -> float:
        """The share of scored images whose mask is degenerate (:func:`is_degenerate`); NaN
        before any image."""
        return self.degenerate / self.images if self.images else math.nan

    def counts(self) -> np.ndarray:
        """The counts as one int64 row [2 + C * C + C]: images, degenerate masks, ``matrix``
        and ``missed``."""
        return np.concatenate([[self.images, self.degenerate],
                               self.confusion.matrix.reshape(-1),
                               self.confusion.missed]).astype(np.int64)

    def add(self, counts: np.ndarray) -> Scorer:
        """Add a row of :meth:`counts` (an empty row adds nothing). ValueError when its size
        does not fit the dataset's classes."""
        counts = np.asarray(counts, dtype=np.int64).reshape(-1)
        if counts.size == 0:
            return self
        c = self.confusion.num_classes
        if counts.size != 2 + c * c + c:
            raise ValueError(f"a counts row of {counts.size} values does not fit {c} classes "
                             f"(expected {2 + c * c + c})")
        self.images += int(counts[0])
        self.degenerate += int(counts[1])
        self.confusion.matrix += counts[2:2 + c * c].reshape(c, c)
        self.confusion.missed += counts[2 + c * c:]
        return self

    def merge(self, other: Scorer) -> Scorer:
        """Add the counts of ``other`` (a scorer of the same dataset)."""
        return self.add(other.counts())

    def scores(self) -> SegmentationScores:
        """The scores of every image added so far (``ConfusionMatrix.compute``)."""
        return self.confusion.compute(self.class_names, self.background)


def _foreground_scores(m: np.ndarray, missed: np.ndarray, bg: int) -> tuple[float, float]:
    """Binary foreground (precision, recall) from float counts ``m`` [C, C], ``missed`` [C]."""
    fg_gt = np.ones(len(m), dtype=bool)
    fg_gt[bg] = False
    tp = m[fg_gt][:, fg_gt].sum()
    pred_fg = m[:, fg_gt].sum()
    gt_fg = m[fg_gt].sum() + missed[fg_gt].sum()
    return float(safe_ratio(tp, pred_fg)), float(safe_ratio(tp, gt_fg))


def safe_ratio(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    """Elementwise ``num / den`` with NaN where ``den == 0``."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def nan_mean(values: np.ndarray) -> float:
    """Mean of the non-NaN entries; NaN when there are none (no warning)."""
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def _floats(values: np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(x.shape) if hasattr(x, "shape") else tuple(np.shape(x))


def _flat_labels(x: Any, name: str, device: torch.device | None) -> torch.Tensor:
    """Integer labels of any shape -> int64 tensor [P] on ``device`` (CPU when None)."""
    if isinstance(x, torch.Tensor):
        if x.is_floating_point() or x.is_complex():
            raise TypeError(f"{name} must hold integer labels, got dtype {x.dtype}")
        return x.detach().reshape(-1).to(device=device or "cpu", dtype=torch.int64)
    arr = np.asarray(x)
    if arr.dtype.kind not in "iub":
        raise TypeError(f"{name} must hold integer labels, got dtype {arr.dtype}")
    return torch.from_numpy(np.ascontiguousarray(arr.reshape(-1), dtype=np.int64))


def as_numpy(x: Any) -> np.ndarray:
    """``x`` (a tensor, array or list) as a numpy array on the CPU; booleans as int64."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    arr = np.asarray(x)
    return arr.astype(np.int64) if arr.dtype == bool else arr


@dataclass(frozen=True)
class SegmentationScores:
    """Scores computed from a ``ConfusionMatrix``; per-class tuples have length C.

    Fractions in [0, 1]; NaN where undefined (see the ``wsss.core.scoring`` conventions).
    ``fg_precision`` / ``fg_recall`` are None unless a background index was given.
    ``false_positive`` / ``false_negative``: each class's false positives / negatives as a
    fraction of its union (``iou + false_positive + false_negative = 1``; empty when unknown).
    """

    class_names: tuple[str, ...]
    iou: tuple[float, ...]
    precision: tuple[float, ...]
    recall: tuple[float, ...]
    miou: float
    pixel_accuracy: float
    macro_precision: float
    macro_recall: float
    fg_precision: float | None = None
    fg_recall: float | None = None
    background: int | None = None
    num_pixels: int = 0
    false_positive: tuple[float, ...] = ()
    false_negative: tuple[float, ...] = ()

    @property
    def mean_false_positive(self) -> float:
        """Mean over classes of false positives / union (NaN classes left out)."""
        return nan_mean(np.asarray(self.false_positive, dtype=np.float64))

    @property
    def mean_false_negative(self) -> float:
        """Mean over classes of false negatives / union (NaN classes left out)."""
        return nan_mean(np.asarray(self.false_negative, dtype=np.float64))

    def summary(self) -> dict[str, float]:
        """Flat metrics for experiment tracking.

        Keys: ``miou``, ``pixel_accuracy``, ``macro_precision``, ``macro_recall``,
        ``mean_false_positive``/``mean_false_negative`` (fractions of the union),
        ``fg_precision``/``fg_recall`` (with a background), and ``iou/<name>``,
        ``precision/<name>``, ``recall/<name>`` for each class whose value is not NaN, the
        name made a valid MLflow key part by ``wsss.names.metric_key_part`` (``table()``
        lists the names it changed). Raises ``wsss.names.InvalidNameError`` when two class
        names would give one key (``wsss.names.check_class_names``).
        """
        parts = check_class_names(self.class_names)
        out = {"miou": self.miou, "pixel_accuracy": self.pixel_accuracy,
               "macro_precision": self.macro_precision, "macro_recall": self.macro_recall}
        if self.false_positive:
            out["mean_false_positive"] = self.mean_false_positive
            out["mean_false_negative"] = self.mean_false_negative
        if self.fg_precision is not None:
            out["fg_precision"] = self.fg_precision
            out["fg_recall"] = self.fg_recall
        for key, values in (("iou", self.iou), ("precision", self.precision),
                            ("recall", self.recall)):
            for part, value in zip(parts, values):
                if not np.isnan(value):
                    out[f"{key}/{part}"] = value
        return out

    def table(self) -> str:
        """Fixed-width table (class, IoU, precision, recall in %) plus summary lines and, for
        each class whose name ``summary()`` had to change in its metric keys, those keys."""
        width = max([5] + [len(n) for n in self.class_names])
        header = f"{'class':<{width}}  {'IoU':>7}  {'prec':>7}  {'recall':>7}"
        lines = [header, "-" * len(header)]
        for name, i, p, r in zip(self.class_names, self.iou, self.precision, self.recall):
            lines.append(f"{name:<{width}}  {_pct(i)}  {_pct(p)}  {_pct(r)}")
        lines.append("-" * len(header))
        lines.append(f"{'mean':<{width}}  {_pct(self.miou)}  {_pct(self.macro_precision)}  "
                     f"{_pct(self.macro_recall)}")
        lines.append(f"mIoU {_pct(self.miou).strip()}  pixel accuracy "
                     f"{_pct(self.pixel_accuracy).strip()}  ({self.num_pixels} pixels)")
        if self.false_positive:
            lines.append(f"errors, % of each class's union (mean): false positives "
                         f"{_pct(self.mean_false_positive).strip()}  false negatives "
                         f"{_pct(self.mean_false_negative).strip()}")
        if self.fg_precision is not None:
            bg = self.class_names[self.background]
            lines.append(f"foreground (not '{bg}'): precision {_pct(self.fg_precision).strip()}"
                         f"  recall {_pct(self.fg_recall).strip()}")
        for part, name in mapped_class_keys(self.class_names).items():
            lines.append(f"metric keys iou/{part}, precision/{part}, recall/{part}: "
                         f"class {name!r}")
        return "\n".join(lines)


def _pct(value: float | None) -> str:
    """A fraction as a 7-wide percentage; '-' when undefined."""
    if value is None or np.isnan(value):
        return f"{'-':>7}"
    return f"{100.0 * value:7.2f}"
