"""Multi-label classification scores: average precision per class and its mean (mAP), the
classifier's validation metric (scikit-learn's ``average_precision_score`` definition: the
precision at each true positive, averaged; classes without a positive are NaN and left out).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from wsss.core.scoring import ArrayLike, as_numpy, nan_mean, safe_ratio


def average_precision(scores: ArrayLike, targets: ArrayLike) -> np.ndarray:
    """Per-class non-interpolated average precision, float64 [C].

    ``scores`` float [N, C] (or [N] for one class), ``targets`` multi-hot {0, 1} of the same
    shape. AP = sum over score thresholds of (R_k - R_{k-1}) * P_k, i.e. the mean over positives
    of the precision at that positive's score, with tied scores forming a single threshold (the
    definition used by scikit-learn's ``average_precision_score``). Classes without positives
    are NaN.
    """
    s, t = _to_float(scores, "scores"), _to_float(targets, "targets")
    if s.shape != t.shape:
        raise ValueError(f"scores shape {s.shape} does not match targets shape {t.shape}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    if not np.isin(t, (0.0, 1.0)).all():
        raise ValueError("targets must be 0/1 multi-hot")
    n, c = s.shape
    if n == 0:
        return np.full(c, np.nan)
    order = np.argsort(-s, axis=0, kind="stable")
    s_sorted = np.take_along_axis(s, order, axis=0)
    t_sorted = np.take_along_axis(t, order, axis=0)
    precision = np.cumsum(t_sorted, axis=0) / np.arange(1, n + 1)[:, None]
    # The last row of each run of tied scores ends a threshold; every row of the run takes
    # the precision at that end.
    run_end = np.ones_like(s_sorted, dtype=bool)
    run_end[:-1] = s_sorted[:-1] != s_sorted[1:]
    end_index = np.where(run_end, np.arange(n)[:, None], n)
    end_index = np.minimum.accumulate(end_index[::-1], axis=0)[::-1]
    precision_at_end = np.take_along_axis(precision, end_index, axis=0)
    return safe_ratio((t_sorted * precision_at_end).sum(axis=0), t_sorted.sum(axis=0))


def mean_average_precision(scores: ArrayLike, targets: ArrayLike) -> float:
    """Mean of ``average_precision`` over classes with at least one positive (NaN if none)."""
    return nan_mean(average_precision(scores, targets))


def _to_float(x: Any, name: str) -> np.ndarray:
    """Array float64 [N, C]; 1-D input [N] becomes [N, 1]."""
    arr = as_numpy(x).astype(np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be [N, C] or [N], got shape {arr.shape}")
    return arr
