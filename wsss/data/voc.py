"""Reader for datasets in the PASCAL VOC layout.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torchvision import tv_tensors

from wsss.data import errors
from wsss.data.decode import fit_size, load_mask, load_rgb  # noqa: F401  (the readers' API)
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


def read_info(root: str | Path) -> DatasetInfo:
    """Read class names from ``classes.txt`` (or VOC's defaults) after checking the folder."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    names_file = root / "classes.txt"
    text = read_text(names_file) if names_file.is_file() else None
    return info_from_text(str(root), text, str(names_file))


def read_text(path: Path) -> str:
    """The UTF-8 content of a dataset text file (DatasetError naming it when it is not)."""
    return decode_text(path.read_bytes(), str(path))


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


def read_split(root: str | Path, split: str) -> list[str]:
    """Ids listed in ``ImageSets/Segmentation/<split>.txt`` (first column, blank lines skipped)."""
    path = Path(root) / SPLIT_DIR / split_file(split)
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.txt")) if path.parent.is_dir() else []
        raise DatasetError(f"split file not found: {path} (available splits: "
                           f"{', '.join(available) or 'none'})")
    return split_from_text(read_text(path), str(path))


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


@dataclass
class VOCDataset(torch.utils.data.Dataset):
    """Images, optional masks and image-level labels of one split.

    ``dataset[i]`` is a dict: ``id`` (str), ``image`` (tv_tensors.Image uint8 [3, H, W], or what
    ``transform`` makes of it), ``mask`` (tv_tensors.Mask int64 [H, W]; all 255 when the id has
    no mask), ``labels`` (float multi-hot over foreground classes [num_fg]) and ``class_ids``
    (list of dataset class indices present). Bad files raise ``DatasetError`` naming the file.

    Args:
        root: dataset folder.
        split: name of a split file, or None together with ``ids``.
        ids: explicit ids (overrides the split file).
        transform: joint transform taking and returning ``(image, mask)``.
        max_image_side: images larger than this are downscaled on load (memory bound).
    """

    root: str | Path
    split: str | None = "train"
    ids: Sequence[str] | None = None
    transform: Callable[[Any, Any], tuple[Any, Any]] | None = None
    max_image_side: int = 1024
    info: DatasetInfo = field(init=False)
    labels_file: dict[str, list[int]] = field(init=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.info = read_info(self.root)
        if self.ids is None:
            if self.split is None:
                raise ValueError("give a split or explicit ids")
            self.ids = read_split(self.root, self.split)
        self.ids = list(self.ids)
        self.labels_file = _read_labels_file(self.root / "labels.json", self.info)

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, sample_id: str) -> Path:
        """The image file of ``sample_id`` (any of .jpg/.jpeg/.png)."""
        base = self.root / IMAGE_DIR
        for suffix in IMAGE_SUFFIXES:
            path = base / f"{sample_id}{suffix}"
            if path.is_file():
                return path
        raise DatasetError(f"image not found for id '{sample_id}': {base / sample_id}.jpg",
                           errors.IMAGE_MISSING, f"{base / sample_id}.jpg")

    def mask_path(self, sample_id: str) -> Path | None:
        path = self.root / MASK_DIR / f"{sample_id}.png"
        return path if path.is_file() else None

    def load_image(self, sample_id: str) -> np.ndarray:
        """RGB uint8 array [H, W, 3], downscaled to ``max_image_side``."""
        return load_rgb(self.image_path(sample_id), self.max_image_side)

    def load_mask(self, sample_id: str, size: tuple[int, int]) -> np.ndarray | None:
        """Mask uint8 [H, W] checked against the image ``size`` (H, W) and the class range."""
        path = self.mask_path(sample_id)
        if path is None:
            return None
        return load_mask(path, size, self.info.num_classes, self.max_image_side)

    def class_ids(self, sample_id: str, mask: np.ndarray | None) -> list[int]:
        """Dataset class indices present: from the mask when there is one, else labels.json."""
        return image_class_ids(sample_id, mask, self.labels_file, str(self.root))

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample_id = self.ids[index]
        image = self.load_image(sample_id)
        mask = self.load_mask(sample_id, image.shape[:2])
        class_ids = self.class_ids(sample_id, mask)
        if mask is None:
            mask = np.full(image.shape[:2], IGNORE_INDEX, dtype=np.uint8)
        image_t = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1))
        mask_t = tv_tensors.Mask(torch.from_numpy(mask.astype(np.int64)))
        if self.transform is not None:
            image_t, mask_t = self.transform(image_t, mask_t)
        return {"id": sample_id, "image": image_t, "mask": mask_t,
                "labels": self.info.multi_hot(class_ids), "class_ids": class_ids}

    def scan(self) -> SplitScan:
        """Read every sample once, without raising: the readable ids and the problems of the
        others (see ``SplitScan``)."""
        good, bad = [], []
        for sample_id in self.ids:
            try:
                image = self.load_image(sample_id)
                self.class_ids(sample_id, self.load_mask(sample_id, image.shape[:2]))
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
        if any(Path(err.path).parent == Path(self.root) / MASK_DIR
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


def _read_labels_file(path: Path, info: DatasetInfo) -> dict[str, list[int]]:
    if not path.is_file():
        return {}
    return labels_from_text(read_text(path), str(path), info)


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
