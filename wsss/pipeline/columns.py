"""Column helpers of the steps' batches (dicts of equal-length numpy columns)."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np


def objects(values: Iterable[Any]) -> np.ndarray:
    """A 1-D object column holding ``values`` as they are (arrays of any shape stay whole)."""
    values = list(values)
    column = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        column[i] = value
    return column


def same_size_groups(images: Sequence[np.ndarray], errors: Sequence[str]) -> list[list[int]]:
    """Row indices of the good images grouped by image size (first-seen order)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for row, (image, error) in enumerate(zip(images, errors)):
        if not error:
            groups.setdefault(tuple(image.shape), []).append(row)
    return list(groups.values())
