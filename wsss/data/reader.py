"""The one reader of datasets in the VOC layout (``wsss.data.voc``), local or in an object store.

Every step that reads images reads them here: the classifier's and segmenter's training sets
(``wsss.data.dataset.VOCDataset`` wraps a reader for torch), the local map and mask steps, and
the Ray Data tasks of ``wsss pseudo-label`` (a reader is small and picklable). So a file is
found, decoded, downscaled and checked the same way whichever executor runs the step.

    reader = DatasetReader.open("data/msrc21")      # classes.txt, labels.json
    refs = reader.index("train")                     # folders listed once, no per-file checks
    sample = reader.read(refs[0])                    # Sample(id, image, gt, class_ids)
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Sequence

import numpy as np

from wsss.data import errors
from wsss.data.decode import load_mask, load_rgb
from wsss.data.errors import DatasetError
from wsss.data.voc import (IMAGE_DIR, IMAGE_SUFFIXES, MASK_DIR, SPLIT_DIR, DatasetInfo,
                           decode_text, image_class_ids, info_from_text, labels_from_text,
                           split_file, split_from_text)
from wsss.storage import Location


@dataclass(frozen=True)
class SampleRef:
    """Where one sample's files are: names inside ``JPEGImages/`` and ``SegmentationClass/``
    (``""`` when the folder has none for ``id``)."""

    id: str
    image_file: str
    mask_file: str


@dataclass(frozen=True)
class Sample:
    """One decoded sample.

    Attributes:
        id: the sample id (file stem).
        image: RGB uint8 [H, W, 3], downscaled so its longer side is at most the reader's
            ``max_image_side`` pixels.
        gt: ground-truth class indices uint8 [H, W] (255 = ignore) of the image's size, or None
            when the id has no mask.
        class_ids: the dataset class indices present (from ``gt``, else labels.json).
    """

    id: str
    image: np.ndarray
    gt: np.ndarray | None
    class_ids: list[int]


@dataclass(frozen=True)
class DatasetReader:
    """Class names, image-level labels and the decoder of one dataset folder.

    Attributes:
        data: the dataset folder (local path or URI, ``wsss.storage.Location``).
        info: its classes (``classes.txt``, VOC's 21 without one).
        labels: ``labels.json``, ``{id: [class ids]}`` ({} without one).
        max_image_side: images (and their masks) larger than this many pixels on the longer
            side are downscaled on read.
    """

    data: Location
    info: DatasetInfo
    labels: dict[str, list[int]]
    max_image_side: int = 1024

    @classmethod
    def open(cls, data: str | os.PathLike | Location,
             max_image_side: int = 1024) -> "DatasetReader":
        """Read ``classes.txt`` and ``labels.json`` of folder ``data``.

        Raises:
            DatasetError: the folder does not exist, or a text file is invalid (named).
        """
        location = data if isinstance(data, Location) else Location.parse(data)
        if not location.is_dir():
            raise DatasetError(f"dataset folder not found: {location.uri}")
        classes = _text(location, "classes.txt") if location.is_file("classes.txt") else None
        info = info_from_text(location.uri, classes, location.name("classes.txt"))
        labels = {}
        if location.is_file("labels.json"):
            labels = labels_from_text(_text(location, "labels.json"),
                                      location.name("labels.json"), info)
        return cls(location, info, labels, max_image_side)

    @property
    def root(self) -> str:
        """The folder as a local path, or its URI (for side folders such as saliency maps)."""
        return self.data.root if self.data.is_local else self.data.uri

    def split_ids(self, split: str) -> list[str]:
        """Ids of ``ImageSets/Segmentation/<split>.txt`` in file order.

        Raises:
            DatasetError: the split file is missing (the message lists the available splits),
                empty, lists an id twice or an id that is not a plain file name.
        """
        path = (SPLIT_DIR, split_file(split))
        if not self.data.is_file(*path):
            available = [n[:-4] for n in self.data.list_files(SPLIT_DIR) if n.endswith(".txt")]
            raise DatasetError(f"split file not found: {self.data.name(*path)} (available "
                               f"splits: {', '.join(available) or 'none'})")
        return split_from_text(_text(self.data, *path), self.data.name(*path))

    def index(self, split: str | None = None,
              ids: Sequence[str] | None = None) -> list[SampleRef]:
        """The files of every id of ``split``, or of ``ids`` (each in the split when both are
        given). The image and mask folders are listed once: no per-file existence checks hit
        an object store; an id without an image fails when it is read.

        Raises:
            DatasetError: the split file is bad, or ``ids`` holds an id not in the split.
            ValueError: neither ``split`` nor ``ids`` is given.
        """
        if split is None and ids is None:
            raise ValueError("give a split or explicit ids")
        chosen = list(ids) if ids is not None else self.split_ids(split)
        if split is not None and ids is not None:
            listed = set(self.split_ids(split))
            missing = sorted(set(chosen) - listed)
            if missing:
                raise DatasetError(f"{self.data.name(SPLIT_DIR, split_file(split))}: "
                                   f"{len(missing)} requested id(s) not in the split, e.g. "
                                   f"{missing[:3]}")
        images = _by_id(self.data.list_files(IMAGE_DIR), IMAGE_SUFFIXES)
        masks = _by_id(self.data.list_files(MASK_DIR), (".png",))
        return [SampleRef(i, images.get(i, ""), masks.get(i, "")) for i in chosen]

    def read_image(self, ref: SampleRef) -> np.ndarray:
        """RGB uint8 [H, W, 3] of ``ref`` (DatasetError naming the file when it is missing or
        cannot be decoded)."""
        if not ref.image_file:
            missing = self.data.name(IMAGE_DIR, f"{ref.id}.jpg")
            raise DatasetError(f"image not found for id '{ref.id}': {missing}",
                               errors.IMAGE_MISSING, missing)
        return load_rgb(self._open(IMAGE_DIR, ref.image_file), self.max_image_side)

    def read_gt(self, ref: SampleRef, size: tuple[int, int]) -> np.ndarray | None:
        """Ground truth uint8 [H, W] of ``ref`` checked against the image ``size`` (H, W) in
        pixels and the class range; None when the id has no mask."""
        if not ref.mask_file:
            return None
        return load_mask(self._open(MASK_DIR, ref.mask_file), size, self.info.num_classes,
                         self.max_image_side)

    def class_ids(self, sample_id: str, gt: np.ndarray | None) -> list[int]:
        """Dataset class indices present: from ``gt`` [H, W] when there is one, else from
        labels.json (DatasetError when neither knows the id)."""
        return image_class_ids(sample_id, gt, self.labels, self.data.uri)

    def read(self, ref: SampleRef) -> Sample:
        """The decoded :class:`Sample` of ``ref``.

        Raises:
            DatasetError: a file is missing or bad; the message names it and the problem, and
                its ``kind`` groups it in a split scan (``wsss.data.errors``).
        """
        image = self.read_image(ref)
        gt = self.read_gt(ref, image.shape[:2])
        return Sample(ref.id, image, gt, self.class_ids(ref.id, gt))

    def _open(self, *parts: str) -> Path | BinaryIO:
        """A local file's path, or an object's bytes as an open file named after it."""
        if self.data.is_local:
            return self.data.local_path(*parts)
        handle = io.BytesIO(self.data.read_bytes(*parts))
        handle.name = self.data.name(*parts)
        return handle


def read_info(data: str | os.PathLike | Location) -> DatasetInfo:
    """The classes of dataset folder ``data`` (see :meth:`DatasetReader.open`)."""
    return DatasetReader.open(data).info


def read_split(data: str | os.PathLike | Location, split: str) -> list[str]:
    """The ids of ``split`` in dataset folder ``data`` (see :meth:`DatasetReader.split_ids`)."""
    return DatasetReader.open(data).split_ids(split)


def _text(data: Location, *parts: str) -> str:
    return decode_text(data.read_bytes(*parts), data.name(*parts))


def _by_id(names: list[str], suffixes: tuple[str, ...]) -> dict[str, str]:
    """File name per id (stem), preferring the earlier suffix."""
    found: dict[str, str] = {}
    for suffix in reversed(suffixes):
        for name in names:
            if name.endswith(suffix):
                found[name[:-len(suffix)]] = name
    return found
