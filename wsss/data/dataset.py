"""The torch view of a dataset split: ``VOCDataset`` (training sets) and its scan."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torchvision import tv_tensors

from wsss.data import errors
from wsss.data.errors import DatasetError
from wsss.data.palette import IGNORE_INDEX
from wsss.data.reader import DatasetReader, Sample, SampleRef
from wsss.data.voc import MASK_DIR, DatasetInfo


@dataclass
class VOCDataset(torch.utils.data.Dataset):
    """Images, optional masks and image-level labels of one split, read by a
    :class:`~wsss.data.reader.DatasetReader`.

    ``dataset[i]`` is a dict: ``id`` (str), ``image`` (tv_tensors.Image uint8 [3, H, W], or what
    ``transform`` makes of it), ``mask`` (tv_tensors.Mask int64 [H, W]; all 255 when the id has
    no mask), ``labels`` (float multi-hot over foreground classes [num_fg]) and ``class_ids``
    (list of dataset class indices present). Bad files raise ``DatasetError`` naming the file.

    Args:
        root: dataset folder (local path or URI).
        split: name of a split file; ignored when ``ids`` are given.
        ids: explicit ids (override the split file).
        transform: joint transform taking and returning ``(image, mask)``.
        max_image_side: images larger than this many pixels on the longer side are
            downscaled on load (memory bound).
    """

    root: str | Path
    split: str | None = "train"
    ids: Sequence[str] | None = None
    transform: Callable[[Any, Any], tuple[Any, Any]] | None = None
    max_image_side: int = 1024
    reader: DatasetReader = field(init=False)
    refs: dict[str, SampleRef] = field(init=False)

    def __post_init__(self) -> None:
        self.reader = DatasetReader.open(self.root, self.max_image_side)
        self.root = Path(self.root) if "://" not in str(self.root) else self.root
        refs = self.reader.index(None if self.ids is not None else self.split, self.ids)
        self.refs = {ref.id: ref for ref in refs}
        self.ids = [ref.id for ref in refs]

    @property
    def info(self) -> DatasetInfo:
        return self.reader.info

    def __len__(self) -> int:
        return len(self.ids)

    def sample(self, sample_id: str) -> Sample:
        """The decoded :class:`~wsss.data.reader.Sample` of ``sample_id``."""
        return self.reader.read(self.refs[sample_id])

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.sample(self.ids[index])
        mask = sample.gt
        if mask is None:
            mask = np.full(sample.image.shape[:2], IGNORE_INDEX, dtype=np.uint8)
        image_t = tv_tensors.Image(torch.from_numpy(sample.image).permute(2, 0, 1))
        mask_t = tv_tensors.Mask(torch.from_numpy(mask.astype(np.int64)))
        if self.transform is not None:
            image_t, mask_t = self.transform(image_t, mask_t)
        return {"id": sample.id, "image": image_t, "mask": mask_t,
                "labels": self.info.multi_hot(sample.class_ids),
                "class_ids": sample.class_ids}

    def scan(self) -> SplitScan:
        """Read every sample once, without raising: the readable ids and the problems of the
        others (see ``SplitScan``)."""
        good, bad = [], []
        for sample_id in self.ids:
            try:
                self.sample(sample_id)
                good.append(sample_id)
            except DatasetError as err:
                bad.append((sample_id, err))
        return SplitScan(str(self.root), good, bad)


@dataclass
class SplitScan:
    """What reading every sample of a split once found.

    Attributes:
        root: the dataset folder.
        ids: the readable ids, in split order.
        problems: ``(id, DatasetError)`` of every other id, in split order; each error's
            ``kind`` (``wsss.data.errors``) groups it with the others of its kind.
    """

    root: str
    ids: list[str] = field(default_factory=list)
    problems: list[tuple[str, DatasetError]] = field(default_factory=list)

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """``(id, reason)`` of every unreadable id, as reports list them."""
        return [(sample_id, str(err)) for sample_id, err in self.problems]

    @property
    def total(self) -> int:
        return len(self.ids) + len(self.problems)

    def summary(self, most: int = 5) -> str:
        """The problems grouped by kind, most common first, one line each (at most ``most``):
        ``<n> of <total> <kind>: <a file of that kind> (<what is particular to it>)``, and how
        to convert RGB masks in the VOC colour map when some are."""
        groups: dict[str, list[DatasetError]] = {}
        for _, err in self.problems:
            groups.setdefault(err.kind or "ids have other problems", []).append(err)
        ranked = sorted(groups.items(), key=lambda item: -len(item[1]))  # stable: ties in order
        lines = [f"  {len(group)} of {self.total} {kind}: {_sample(group[0])}"
                 for kind, group in ranked[:most]]
        if len(ranked) > most:
            rest = sum(len(group) for _, group in ranked[most:])
            lines.append(f"  and {rest} more with {len(ranked) - most} other kind(s) of problem")
        if any(Path(err.path).parent.name == MASK_DIR
               for err in groups.get(errors.MASK_VOC_COLOURS, [])):
            lines.append(f"  the RGB masks use the PASCAL VOC colour map: convert them to "
                         f"palette PNGs (originals kept) with: wsss data convert-masks "
                         f"--data {self.root}")
        return "\n".join(lines)

    def require_readable(self, what: str) -> SplitScan:
        """``self``, or DatasetError ``<what>`` followed by the summary when no id is readable."""
        if not self.ids:
            raise DatasetError(f"{what} ({self.total} listed):\n{self.summary()}")
        return self


def _sample(err: DatasetError) -> str:
    """The file of a problem and what is particular to it (the whole message without a file)."""
    if err.path is None:
        return str(err)
    return f"{err.path} ({err.detail})" if err.detail else err.path
