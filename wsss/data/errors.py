"""The dataset error and the kinds of per-sample problems a split scan counts.

Every message names the file and the problem. A per-sample error also carries its ``kind``: a
phrase in the plural, the same for every file with that problem (the message itself differs by
file name), so a scan of a whole split can say "320 of 320 masks are RGB colour images ...".
"""

from __future__ import annotations

from typing import Any

from wsss.errors import WsssError

# Kinds of per-sample problems (the subject is plural: "<n> of <total> <kind>").
IMAGE_MISSING = "ids have no image file"
IMAGE_UNREADABLE = "images cannot be decoded"
MASK_UNREADABLE = "masks cannot be decoded"
MASK_SIZE = "masks differ in size from their images"
MASK_TRANSPOSED = ("masks have the transposed size of their images (likely an EXIF "
                   "orientation tag on one of the pair, which the other lacks)")
NO_LABELS = "ids have no labels (no mask and no labels.json entry)"
NO_PSEUDO_MASK = "ids have no pseudo-mask"
MASK_VOC_COLOURS = ("masks are RGB images in the PASCAL VOC colour map; expected palette or "
                    "grayscale class indices")


def mask_mode_kind(mode: str) -> str:
    """The kind of a mask stored in PIL mode ``mode`` (neither palette nor grayscale)."""
    if mode in ("RGB", "RGBA"):
        return f"masks are {mode} colour images; expected palette or grayscale class indices"
    return f"masks have mode {mode}; expected palette (P) or grayscale (L) class indices"


def mask_values_kind(num_classes: int) -> str:
    """The kind of a mask holding class values outside ``0..num_classes-1`` (and not 255)."""
    return f"masks have label values outside 0..{num_classes - 1} (255 = ignore)"


class DatasetError(WsssError, ValueError):
    """A dataset file is missing or invalid; the message names the file and the problem.

    Args:
        message: the full text shown to the user.
        kind: for a problem of one sample, its kind (one of this module's phrases), which a
            split scan counts; None for a problem of the dataset as a whole.
        path: the file concerned (a sample of its kind in a scan's summary).
        detail: what is particular to this file (e.g. the decoder's reason), shown after it.
    """

    def __init__(self, message: str, kind: str | None = None, path: str | None = None,
                 detail: str | None = None) -> None:
        super().__init__(message)
        self.kind, self.path, self.detail = kind, path, detail

    def __reduce__(self) -> tuple[Any, ...]:
        """Keep kind, path and detail when pickled (Ray ships errors between processes)."""
        return type(self), (str(self), self.kind, self.path, self.detail)
