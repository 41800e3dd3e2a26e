"""Convert a dataset's RGB masks drawn in the PASCAL VOC colour map to palette PNGs.

Annotation tools and some dataset exports save ``SegmentationClass/<id>.png`` as RGB colour
pictures (class i in the VOC devkit's colour, void in (224, 224, 192)) instead of palette PNGs
of class indices. ``convert_masks`` turns them into the palette PNGs the readers expect
(``wsss.data.palette.save_mask_png``: index = class, VOC palette, 255 = ignore):

* all RGB masks are checked first; a colour outside the map of the dataset's classes is an
  error naming the files and colours, and then nothing is changed;
* each original is copied to ``<root>/SegmentationClassRGB/<id>.png`` before its mask is
  replaced, both written atomically (temporary file + rename), so an interruption loses
  nothing and a re-run finishes the job;
* palette and grayscale masks are left as they are, so a second run changes nothing.

A mask's EXIF orientation, if any, is applied before converting (``load_mask`` reads masks
upright; the palette PNG carries no orientation tag).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps

from wsss.data.decode import DECODE_ERRORS, rgb_mask_indices
from wsss.data.errors import DatasetError
from wsss.data.palette import save_mask_png
from wsss.data.reader import read_info
from wsss.data.voc import MASK_DIR, DatasetInfo
from wsss.storage import write_atomic

BACKUP_DIR = "SegmentationClassRGB"
SHOWN_PROBLEMS = 10


@dataclass
class ConversionReport:
    """What ``convert_masks`` did (file names inside the masks folder)."""

    mask_dir: Path
    backup_dir: Path
    converted: list[str] = field(default_factory=list)
    unchanged: int = 0  # palette or grayscale masks already
    left_alone: list[tuple[str, str]] = field(default_factory=list)  # (file, why)

    def summary(self) -> str:
        text = (f"converted {len(self.converted)} RGB mask(s) in {self.mask_dir} to palette "
                f"PNGs")
        if self.converted:
            text += f" (originals in {self.backup_dir})"
        text += f"; {self.unchanged} already palette or grayscale"
        for name, why in self.left_alone:
            text += f"\n  left alone {name}: {why}"
        return text


def convert_masks(root: str | Path) -> ConversionReport:
    """Convert every RGB(A) mask of ``<root>/SegmentationClass`` in the VOC colour map of the
    dataset's classes (``classes.txt``) to a palette PNG of class indices uint8 [H, W].

    Masks neither palette/grayscale nor RGB(A), and files that cannot be decoded, are left
    alone and listed (the training scan reports them).

    Raises:
        DatasetError: the dataset or its masks folder is missing, or some RGB mask holds a
            colour outside the VOC map of classes 0..K-1 and 255, or transparent pixels (the
            files and colours are named; no file is changed).
    """
    root = Path(root)
    info = read_info(root)
    mask_dir = root / MASK_DIR
    if not mask_dir.is_dir():
        raise DatasetError(f"masks folder not found: {mask_dir}")
    report = ConversionReport(mask_dir, root / BACKUP_DIR)
    todo, problems = [], []
    for path in sorted(mask_dir.glob("*.png")):
        try:
            with Image.open(path) as im:
                if im.mode in ("P", "L"):
                    report.unchanged += 1
                elif im.mode not in ("RGB", "RGBA"):
                    report.left_alone.append((path.name, f"mode {im.mode} is not RGB"))
                else:
                    found = rgb_mask_indices(ImageOps.exif_transpose(im), info.num_classes)[1]
                    if found:
                        problems.append(f"{path}: {'; '.join(found)}")
                    else:
                        todo.append(path)
        except DECODE_ERRORS as err:
            report.left_alone.append((path.name, f"cannot be decoded: {err}"))
    if problems:
        raise DatasetError(_problems_message(problems, len(todo) + len(problems), info))
    for path in todo:
        _convert_one(path, report, info.num_classes)
    return report


def _convert_one(path: Path, report: ConversionReport, num_classes: int) -> None:
    """Back up ``path`` and replace it with its palette PNG (both atomically)."""
    original = path.read_bytes()
    with Image.open(io.BytesIO(original)) as im:
        indices, problems = rgb_mask_indices(ImageOps.exif_transpose(im), num_classes)
    if problems:  # changed since the check: leave it for the next run to report
        report.left_alone.append((path.name, "; ".join(problems)))
        return
    write_atomic(report.backup_dir / path.name, original)
    save_mask_png(path, indices)
    report.converted.append(path.name)


def _problems_message(problems: list[str], rgb_masks: int, info: DatasetInfo) -> str:
    shown = "\n  ".join(problems[:SHOWN_PROBLEMS])
    more = (f"\n  and {len(problems) - SHOWN_PROBLEMS} more"
            if len(problems) > SHOWN_PROBLEMS else "")
    return (f"{len(problems)} of {rgb_masks} RGB masks cannot be converted: their colours are "
            f"not all in the PASCAL VOC colour map of the {info.num_classes} classes of "
            f"{info.root} (nothing was changed):\n  {shown}{more}")
