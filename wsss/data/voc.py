"""The PASCAL VOC layout: its folders, class list, split and label files (read by
``wsss.data.reader``).

    <root>/JPEGImages/<id>.jpg
    <root>/SegmentationClass/<id>.png     palette or grayscale PNG, value = class, 255 = ignore
    <root>/ImageSets/Segmentation/<split>.txt
    <root>/classes.txt                    optional, one class name per line (default: VOC's 21)
    <root>/labels.json                    optional, {id: [class names or indices]} for ids without masks

The dataset says whether it has a background class: it does when class 0 is named
``background`` (VOC 2012). MSRC-21 has none: every class is a real label and pseudo-masks are an
argmax over the present classes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from wsss.data import errors
from wsss.data.errors import DatasetError
from wsss.data.palette import IGNORE_INDEX
from wsss.names import InvalidNameError, check_class_names, path_component_problem, shown

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
IMAGE_DIR, MASK_DIR, SPLIT_DIR = "JPEGImages", "SegmentationClass", "ImageSets/Segmentation"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class DatasetInfo:
    """Class names and whether class 0 is background.

    The classifier predicts the *foreground* classes only: ``fg_classes[i]`` is the dataset class
    index of classifier output ``i``.
    """

    root: str
    class_names: tuple[str, ...]
    has_background: bool

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def fg_classes(self) -> tuple[int, ...]:
        start = 1 if self.has_background else 0
        return tuple(range(start, self.num_classes))

    @property
    def num_fg(self) -> int:
        return len(self.fg_classes)

    def multi_hot(self, class_ids: Sequence[int]) -> torch.Tensor:
        """Dataset class ids -> float multi-hot over foreground classes [num_fg]."""
        target = torch.zeros(self.num_fg)
        offset = 1 if self.has_background else 0
        for c in class_ids:
            if c >= offset:
                target[c - offset] = 1.0
        return target


def decode_text(data: bytes, source: str) -> str:
    """``data`` decoded as UTF-8 (a leading byte-order mark dropped); ``source`` names the
    file in the error."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DatasetError(f"{source}: not UTF-8 text ({err.reason} at byte {err.start})") from err


def info_from_text(root: str, classes_text: str | None, source: str) -> DatasetInfo:
    """``DatasetInfo`` from the content of ``classes.txt`` (None: VOC's classes); ``source``
    names the file in errors.

    One name a line, white space at either end dropped, blank lines skipped. DatasetError
    for a name with a control character, a name listed twice, and names whose per-class
    metric keys would be too long or collide (``wsss.names.check_class_names``).
    """
    if classes_text is None:
        return DatasetInfo(root, VOC_CLASSES, True)
    names = tuple(line.strip() for line in classes_text.splitlines() if line.strip())
    if not names:
        raise DatasetError(f"{source}: no class names")
    try:
        check_class_names(names)
    except InvalidNameError as err:
        raise DatasetError(f"{source}: {err}") from err
    return DatasetInfo(root, names, names[0].lower() == "background")


def split_from_text(text: str, source: str) -> list[str]:
    """Ids of a split file's content (first column, blank lines skipped); ``source`` names the
    file in errors."""
    numbered = [(n, line.split()[0]) for n, line in enumerate(text.splitlines(), 1)
                if line.strip()]
    if not numbered:
        raise DatasetError(f"split file is empty: {source}")
    first_line: dict[str, int] = {}
    for number, sample_id in numbered:
        check_id(sample_id, source)
        if sample_id in first_line:  # its outputs would be written twice
            raise DatasetError(f"{source}: id {shown(sample_id)} is listed twice (lines "
                               f"{first_line[sample_id]} and {number})")
        first_line[sample_id] = number
    return [sample_id for _, sample_id in numbered]


def check_id(sample_id: str, source: str) -> None:
    """DatasetError unless ``sample_id`` is a plain file name (``wsss.names.
    path_component_problem``): no folder separator, not ``.`` or ``..``, no control character,
    at most 200 bytes, so ``<folder>/<id>.<ext>`` stays inside ``<folder>`` and fits."""
    problem = path_component_problem(sample_id)
    if problem:
        raise DatasetError(f"{source}: id {shown(sample_id)} is not a plain file name: it "
                           f"{problem} (ids name files inside the dataset folder)")


def split_file(split: str) -> str:
    """The file name ``<split>.txt`` of a split; DatasetError when ``split`` is not a plain
    file name (``wsss.names.path_component_problem``)."""
    problem = path_component_problem(split)
    if problem:
        raise DatasetError(f"split name {shown(split)} is not a plain file name: it {problem} "
                           f"(splits are files {SPLIT_DIR}/<split>.txt)")
    return f"{split}.txt"


def image_class_ids(sample_id: str, mask: np.ndarray | None, labels_file: dict[str, list[int]],
                    root: str) -> list[int]:
    """Dataset class indices present in an image: from its mask [H, W] when there is one,
    else from ``labels_file`` (labels.json); DatasetError when neither knows the id."""
    if mask is not None:
        values = np.unique(mask)
        return [int(v) for v in values if v != IGNORE_INDEX]
    if sample_id in labels_file:
        return labels_file[sample_id]
    mask_file = f"{root}/{MASK_DIR}/{sample_id}.png"
    raise DatasetError(f"no labels for id '{sample_id}': no mask at {mask_file} and no entry "
                       f"in labels.json", errors.NO_LABELS, mask_file)


def labels_from_text(text: str, source: str, info: DatasetInfo) -> dict[str, list[int]]:
    """Parse labels.json content ``{id: [class names or indices]}``; ``source`` names the file.

    An empty list is an image with no foreground class (a valid negative example).
    """
    path = source
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(raw, dict):
        raise DatasetError(f"{path}: expected an object {{id: [class names or indices]}}, got "
                           f"a JSON {type(raw).__name__}")
    index = {name: i for i, name in enumerate(info.class_names)}
    labels: dict[str, list[int]] = {}
    for sample_id, classes in raw.items():
        if not isinstance(classes, list):
            raise DatasetError(f"{path}: id '{sample_id}' has {classes!r}; expected a list of "
                               f"class names or indices")
        ids = []
        for c in classes:
            if isinstance(c, int) and not isinstance(c, bool) and 0 <= c < info.num_classes:
                ids.append(c)
            elif isinstance(c, str) and c in index:
                ids.append(index[c])
            else:
                raise DatasetError(f"{path}: id '{sample_id}' names unknown class {c!r}; "
                                   f"valid: {', '.join(info.class_names)} "
                                   f"(or 0..{info.num_classes - 1})")
        labels[sample_id] = sorted(set(ids))
    return labels
