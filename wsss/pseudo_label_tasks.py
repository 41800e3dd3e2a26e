"""The per-batch work of pseudo-labelling: decode, maps, masks. Ray-free plain functions.

``wsss.pseudo_label`` runs them as Ray Data stages (decode and refine as CPU tasks, maps in an
actor pool); the benchmark's plain loop calls them one after the other in one process.

A batch is a dict of equal-length numpy columns. Every stage passes every row on: a row whose
``error`` is not empty skips the remaining work and reaches the driver as a failure with that
reason, so bad images are reported and never silently dropped.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from wsss.config import CamConfig, RefineConfig
from wsss.data.voc import (IMAGE_DIR, MASK_DIR, DatasetError, DatasetInfo, image_class_ids,
                           load_mask, load_rgb)
from wsss.faults import fault_point
from wsss.native_crf import NativeCrash
from wsss.storage import Location

MAPS_DIR = "maps"
# one image's failure: a bad input, or its dense CRF crashed in the worker process
INPUT_ERRORS = (DatasetError, FileNotFoundError, ValueError, OSError, NativeCrash)


@dataclass(frozen=True)
class Job:
    """Everything a stage needs to know, shipped to every task and actor (small, picklable).
    Without ``out`` masks are only scored (``evaluate``), not written."""

    data: Location
    out: Location | None
    info: DatasetInfo
    method_name: str
    method_params: dict[str, Any]
    cam: CamConfig = field(default_factory=CamConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    labels_file: dict[str, list[int]] = field(default_factory=dict)
    max_image_side: int = 1024
    save_maps: bool = False
    evaluate: bool = False


def objects(values: Iterable[Any]) -> np.ndarray:
    """A 1-D object column holding ``values`` as they are (arrays of any shape stay whole)."""
    values = list(values)
    column = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        column[i] = value
    return column


def _open(location: Location, *parts: str) -> io.BytesIO:
    """The bytes of file ``parts`` as an open file named after it (for error messages)."""
    handle = io.BytesIO(location.read_bytes(*parts))
    handle.name = location.name(*parts)
    return handle


def decode_one(job: Job, sample_id: str, image_file: str,
                mask_file: str) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(RGB uint8 [H, W, 3], ground truth uint8 [H, W] or [0, 0], present class ids)."""
    if not image_file:
        raise DatasetError(f"image not found for id '{sample_id}': "
                           f"{job.data.name(IMAGE_DIR, sample_id)}.jpg")
    image = load_rgb(_open(job.data, IMAGE_DIR, image_file), job.max_image_side)
    gt = None
    if mask_file:
        gt = load_mask(_open(job.data, MASK_DIR, mask_file), image.shape[:2],
                       job.info.num_classes, job.max_image_side)
    class_ids = image_class_ids(sample_id, gt, job.labels_file, job.data.uri)
    return image, (np.zeros((0, 0), np.uint8) if gt is None else gt), class_ids


def decode_batch(batch: dict[str, np.ndarray], job: Job) -> dict[str, np.ndarray]:
    """Columns ``id``, ``image_file``, ``mask_file`` -> ``id``, ``image`` uint8 [H, W, 3],
    ``gt`` uint8 [H, W] ([0, 0] without one), ``labels`` float32 [num_fg], ``error``."""
    images, gts, labels, errors = [], [], [], []
    for sample_id, image_file, mask_file in zip(batch["id"], batch["image_file"],
                                                batch["mask_file"]):
        try:
            image, gt, class_ids = decode_one(job, str(sample_id), str(image_file),
                                               str(mask_file))
            error = ""
        except INPUT_ERRORS as err:
            image, gt = np.zeros((1, 1, 3), np.uint8), np.zeros((0, 0), np.uint8)
            class_ids, error = [], str(err)
        images.append(image)
        gts.append(gt)
        labels.append(job.info.multi_hot(class_ids).numpy())
        errors.append(error)
    return {"id": np.asarray(batch["id"]), "image": objects(images), "gt": objects(gts),
            "labels": np.stack(labels).astype(np.float32), "error": np.asarray(errors)}


class CamExtractor:
    """Localization maps of a batch (``wsss.cams.localization_maps``); the model loads once.

    Images of equal size are stacked and mapped together. Output columns: those of the
    input (minus ``labels``) plus ``maps`` float16 [K, H, W] of the K present classes,
    ``class_ids`` int64 [K], ``cam_node`` and ``cam_seconds`` (this batch's time, per row).
    """

    def __init__(self, state: Any, job: Job, device: str = "cpu", threads: int | None = None):
        import torch

        from wsss.train.checkpoint import classifier_from_state, trained_image_scale

        if type(state).__name__ == "ObjectRef":
            import ray

            state = ray.get(state)
        if threads is not None:
            torch.set_num_threads(threads)
        self.job, self.device = job, device
        self.method, self.model = classifier_from_state(state, device)
        self.image_scale = trained_image_scale(state)
        self.fg = np.asarray(job.info.fg_classes, dtype=np.int64)
        self.batches = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        maps, class_ids = _no_maps(len(batch["id"]))
        errors = list(batch["error"])
        for rows in _same_size_groups(batch["image"], errors):
            try:
                for row, row_maps, row_ids in zip(rows, *self._maps(batch, rows)):
                    maps[row], class_ids[row] = row_maps, row_ids
            except (RuntimeError, ValueError) as err:
                for row in rows:
                    errors[row] = f"maps failed: {err}"
        self.batches += 1
        fault_point("map_batch", self.batches)  # tests: an actor killed with its batch done
        return mapped_columns(batch, errors, maps, class_ids, time.perf_counter() - start)

    def _maps(self, batch: dict[str, np.ndarray],
              rows: list[int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        import torch

        from wsss.cams import localization_maps
        from wsss.data.transforms import normalize

        cam = self.job.cam
        images = torch.from_numpy(np.stack([batch["image"][r] for r in rows]))
        images = normalize(images.permute(0, 3, 1, 2).to(self.device))
        labels = torch.from_numpy(np.stack([batch["labels"][r] for r in rows])).to(self.device)
        result = localization_maps(self.method, self.model, images, labels,
                                   kind=None if cam.kind == "auto" else cam.kind,
                                   layer=cam.layer, scales=cam.scales, flip=cam.flip,
                                   image_scale=self.image_scale)
        present = (labels > 0).cpu().numpy()
        result = result.cpu().numpy()
        return ([m[p].astype(np.float16) for m, p in zip(result, present)],
                [self.fg[p] for p in present])


def _same_size_groups(images: Sequence[np.ndarray], errors: Sequence[str]) -> list[list[int]]:
    """Row indices of the good images grouped by image size (first-seen order)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for row, (image, error) in enumerate(zip(images, errors)):
        if not error:
            groups.setdefault(tuple(image.shape), []).append(row)
    return list(groups.values())


def _node() -> str:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"


def load_saved_maps(batch: dict[str, np.ndarray], job: Job,
                    maps: Location) -> dict[str, np.ndarray]:
    """A decoded batch -> the columns of :class:`CamExtractor`, with the maps read from
    ``maps/<id>.npz`` (written by ``wsss cam`` or ``pseudo-label --save-maps``) instead of
    computed; a missing, unreadable or wrongly sized map file fails its row."""
    from wsss.cams import read_maps

    found, class_ids = _no_maps(len(batch["id"]))
    errors = list(batch["error"])
    for row, sample_id in enumerate(batch["id"]):
        if errors[row]:
            continue
        name = f"{sample_id}.npz"
        try:
            row_maps, row_ids = read_maps(_open(maps, name), maps.name(name))
            if row_maps.shape[1:] != batch["image"][row].shape[:2]:
                raise ValueError(f"map file {maps.name(name)}: maps {row_maps.shape[1:]} do not "
                                 f"match the image {batch['image'][row].shape[:2]}")
            found[row], class_ids[row] = row_maps, np.asarray(row_ids, np.int64)
        except INPUT_ERRORS as err:
            errors[row] = str(err)
    return mapped_columns(batch, errors, found, class_ids, 0.0)


def _no_maps(size: int) -> tuple[list[Any], list[Any]]:
    """Placeholder maps [0, 1, 1] and class ids [0] of ``size`` rows (failed rows keep them)."""
    return [np.zeros((0, 1, 1), np.float16)] * size, [np.zeros(0, np.int64)] * size


def mapped_columns(batch: dict[str, np.ndarray], errors: list[str], maps: list[Any],
                   class_ids: list[Any], seconds: float) -> dict[str, np.ndarray]:
    """The output columns of the map stage (see :class:`CamExtractor`) for a decoded batch,
    its rows' errors, maps and class ids; ``seconds``: the batch's time, spread over its rows."""
    size = len(batch["id"])
    return {**{key: batch[key] for key in ("id", "image", "gt")},
            "error": np.asarray(errors, dtype=str), "maps": objects(maps),
            "class_ids": objects(class_ids), "cam_node": np.asarray([_node()] * size),
            "cam_seconds": np.full(size, seconds / max(size, 1))}


def refine_and_write(batch: dict[str, np.ndarray], job: Job) -> dict[str, np.ndarray]:
    """Masks of a mapped batch written to ``job.out`` as ``<id>.png`` (and maps when asked).

    Returns one small row per image: ``id``, ``status`` (``done`` / ``failed``), ``reason``,
    the nodes and seconds of both stages, and ``confusion`` int64 [C * C + C] (counts and
    missed pixels of ``wsss.metrics.ConfusionMatrix``; [0] without ``job.evaluate``).
    """
    from wsss.methods import get_method

    start = time.perf_counter()
    method = get_method(job.method_name)(0, job.method_params)
    statuses, reasons, confusions = [], [], []
    for row in range(len(batch["id"])):
        reason = str(batch["error"][row])
        confusion = np.zeros(0, np.int64)
        if not reason:
            try:
                confusion = _refine_one(job, method, batch, row)
            except INPUT_ERRORS as err:
                reason = str(err)
        statuses.append("failed" if reason else "done")
        reasons.append(reason)
        confusions.append(confusion)
    size = len(statuses)
    seconds = time.perf_counter() - start
    return {"id": np.asarray(batch["id"]), "status": np.asarray(statuses),
            "reason": np.asarray(reasons), "cam_node": np.asarray(batch["cam_node"]),
            "cam_seconds": np.asarray(batch["cam_seconds"]),
            "refine_node": np.asarray([_node()] * size),
            "refine_seconds": np.full(size, seconds / max(size, 1)),
            "confusion": objects(confusions)}


def _refine_one(job: Job, method: Any, batch: dict[str, np.ndarray], row: int) -> np.ndarray:
    """Write one image's mask (and maps); returns its confusion counts (see above)."""
    from wsss.cams import maps_npz_bytes
    from wsss.metrics import ConfusionMatrix
    from wsss.saliency import saliency_for
    from wsss.viz import mask_png_bytes

    sample_id = str(batch["id"][row])
    image = np.array(batch["image"][row])  # writable: zero-copy batches are read-only
    maps16, class_ids = batch["maps"][row], [int(c) for c in batch["class_ids"][row]]
    maps = np.asarray(maps16, dtype=np.float32)
    root = job.data.root if job.data.is_local else job.data.uri
    mask = method.pseudo_mask(image, maps, class_ids, job.info.has_background, job.refine,
                              lambda source: saliency_for(root, sample_id, image, source))
    if job.out is not None:
        if job.save_maps:
            job.out.write_bytes(maps_npz_bytes(maps16, class_ids), MAPS_DIR, f"{sample_id}.npz")
        job.out.write_bytes(mask_png_bytes(mask), f"{sample_id}.png")
    gt = batch["gt"][row]
    if not job.evaluate:
        return np.zeros(0, np.int64)
    confusion = ConfusionMatrix(job.info.num_classes)
    if gt.size:
        confusion.update(mask, gt)
    return np.concatenate([confusion.matrix.reshape(-1), confusion.missed])


def block_confusion(counts: Iterable[np.ndarray], num_classes: int) -> Any:
    """The ``ConfusionMatrix`` of one output block: the sum of its ``confusion`` rows (see
    :func:`refine_and_write`); the driver merges the blocks' matrices."""
    from wsss.metrics import ConfusionMatrix

    block = ConfusionMatrix(num_classes)
    cells = num_classes * num_classes
    for row in counts:
        row = np.asarray(row)
        if row.size:
            block.matrix += row[:cells].reshape(num_classes, num_classes)
            block.missed += row[cells:]
    return block
