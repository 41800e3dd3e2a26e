"""The per-batch work of every image step: decode, maps, masks, write and score. Ray-free.

A batch is a dict of equal-length numpy columns (Ray Data's ``numpy`` batch format). Each step
takes a batch and returns one; an executor (``wsss.pipeline.executors``) chains them, in this
process or as Ray Data stages, so both run exactly this code. A row whose ``error`` is set
skips the remaining work and reaches the driver as a failure with that reason: bad images are
reported, never silently dropped.

    refs ---decode---> id, image, gt, labels, error, gt_error
         ---MapStep / load_saved_maps / PredictStep---> + maps, class_ids (or mask)
         ---RandomWalkStep (with refine.affinity)---> + walked
         ---make_masks---> + mask
         ---write_outputs---> small rows: id, status, reason, nodes, seconds, counts
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import ray
import torch
from PIL import Image

from wsss.config import CamConfig, RefineConfig
from wsss.core.maps import localization_maps, maps_npz_bytes, read_maps
from wsss.core.masks import make_pseudo_mask
from wsss.core.native_crf import NativeCrash
from wsss.core.precision import check_precision, to_memory_format
from wsss.core.scoring import Scorer
from wsss.data.decode import load_mask, upright_size
from wsss.data.errors import DatasetError
from wsss.data.palette import mask_png_bytes
from wsss.data.reader import DatasetReader, Sample, SampleRef
from wsss.data.transforms import normalize
from wsss.faults import fault_point
from wsss.methods import Method, get_method
from wsss.pipeline.columns import objects, same_size_groups
from wsss.pipeline.walk import RandomWalkStep
from wsss.storage import Location
from wsss.train.checkpoint import (Checkpoint, check_classes, classifier_from_state,
                                   classifier_method, trained_image_scale)

# one image's failure: a bad input, or its dense CRF crashed in the worker process
INPUT_ERRORS = (DatasetError, FileNotFoundError, ValueError, OSError, NativeCrash)


@dataclass(frozen=True)
class Job:
    """Everything the steps need, shipped to every task and actor (small, picklable).

    Attributes:
        reader: the dataset.
        method_name, method_params: the method that made (or makes) the maps; it decides how
            maps become masks.
        cam: map settings (scales, flip, kind, batch size).
        refine: how maps become masks (background score, CRF, confidence marking).
        out: where ``<id>.png`` masks go (None: masks are only scored).
        maps: where ``<id>.npz`` maps are read from (``load_saved_maps``) or written to
            (``write_outputs``); None: maps are neither read nor kept.
        evaluate: score each mask against its ground truth (``counts`` column).
    """

    reader: DatasetReader
    method_name: str = "cam"
    method_params: dict[str, Any] = field(default_factory=dict)
    cam: CamConfig = field(default_factory=CamConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    out: Location | None = None
    maps: Location | None = None
    evaluate: bool = False

    def method(self) -> Method:
        """The maps' method, built from its name and parameters."""
        return get_method(self.method_name)(0, self.method_params)


@dataclass(frozen=True)
class Step:
    """One stage of a pipeline.

    Attributes:
        fn: ``fn(batch, **kwargs) -> batch``, or, with ``model``, a class built once per
            worker as ``fn(**kwargs)`` whose instances are called on batches.
        kwargs: keyword arguments of ``fn`` (or of its constructor).
        model: the step holds a model: an actor pool under Ray Data, on the plan's device.
    """

    fn: Callable[..., Any]
    kwargs: dict[str, Any] = field(default_factory=dict)
    model: bool = False


def ref_columns(refs: Sequence[SampleRef]) -> dict[str, np.ndarray]:
    """The executors' input batch: columns ``id``, ``image_file``, ``mask_file``."""
    return {"id": np.asarray([r.id for r in refs], dtype=object),
            "image_file": np.asarray([r.image_file for r in refs], dtype=object),
            "mask_file": np.asarray([r.mask_file for r in refs], dtype=object)}


def ref_rows(refs: Sequence[SampleRef]) -> list[dict[str, str]]:
    """``refs`` as rows for ``ray.data.from_items`` (the columns of :func:`ref_columns`)."""
    return [{"id": r.id, "image_file": r.image_file, "mask_file": r.mask_file} for r in refs]


def samples(batch: dict[str, np.ndarray]) -> list[Sample | None]:
    """The decoded samples of a batch (None for failed rows)."""
    return [None if error else Sample(str(i), image, gt if gt.size else None, [])
            for i, image, gt, error in zip(batch["id"], batch["image"], batch["gt"],
                                           batch["error"])]


# -- decode -----------------------------------------------------------------------------------
def decode(batch: dict[str, np.ndarray], job: Job) -> dict[str, np.ndarray]:
    """Columns ``id``, ``image_file``, ``mask_file`` -> ``id``, ``image`` uint8 [H, W, 3],
    ``gt`` uint8 [H, W] ([0, 0] without one), ``labels`` float32 [num_fg], ``error`` and
    ``gt_error``.

    An image that cannot be read fails its row (``error``). Ground truth that cannot be read
    (or an id without any labels) only sets ``gt_error``: the steps that need the labels
    (maps) or the ground truth (scoring) fail or pass over the row; masks made from saved
    maps need neither.
    """
    reader = job.reader
    images, gts, labels, errors, gt_errors = [], [], [], [], []
    for ref in zip(batch["id"], batch["image_file"], batch["mask_file"]):
        ref = SampleRef(*(str(v) for v in ref))
        image, gt, class_ids, error, gt_error = np.zeros((1, 1, 3), np.uint8), None, [], "", ""
        try:
            image = reader.read_image(ref)
        except INPUT_ERRORS as err:
            error = str(err)
        else:
            try:
                gt = reader.read_gt(ref, image.shape[:2])
                class_ids = reader.class_ids(ref.id, gt)
            except INPUT_ERRORS as err:
                gt, gt_error = None, str(err)
        images.append(image)
        gts.append(np.zeros((0, 0), np.uint8) if gt is None else gt)
        labels.append(reader.info.multi_hot(class_ids).numpy())
        errors.append(error)
        gt_errors.append(gt_error)
    return {"id": np.asarray(batch["id"]), "image": objects(images), "gt": objects(gts),
            "labels": np.stack(labels).astype(np.float32),
            "error": np.asarray(errors, dtype=object),
            "gt_error": np.asarray(gt_errors, dtype=object)}


# -- maps -------------------------------------------------------------------------------------
class MapStep:
    """Localization maps of a decoded batch (``wsss.core.maps.localization_maps``); the model
    loads once per instance (one per Ray Data actor).

    Images of equal size are stacked and mapped together. Adds the columns ``maps`` float16
    [K, H, W] of the K present classes, ``class_ids`` int64 [K], ``cam_node`` and
    ``cam_seconds`` (the batch's time, spread over its rows); with ``job.refine.affinity``
    also ``walked`` (``wsss.pipeline.walk.RandomWalkStep``, in the same actor).

    Args:
        state: the classifier checkpoint (its model built once per process), or its dict (or
            a Ray object reference to it: a Ray Data actor builds its own model).
        job: the job (map settings and dataset classes).
        device: torch device of the model.
        threads: torch threads of this process (None: leave as is).

    Raises:
        ConfigError: ``cams.precision`` that ``device`` cannot do (fp16 on CPU).
    """

    def __init__(self, state: Any, job: Job, device: str = "cpu", threads: int | None = None):
        check_precision(device, job.cam.precision, "cams.precision")
        if type(state).__name__ == "ObjectRef":
            state = ray.get(state)
        if threads is not None:
            torch.set_num_threads(threads)
        self.job, self.device = job, device
        if isinstance(state, Checkpoint):
            self.method, self.model = classifier_method(state.state), state.model(device)
            state = state.state
        else:
            self.method, self.model = classifier_from_state(state, device)
        self.model = to_memory_format(self.model, job.cam.channels_last)
        self.image_scale = trained_image_scale(state)
        self.fg = np.asarray(job.reader.info.fg_classes, dtype=np.int64)
        self.walk = RandomWalkStep(job.refine, device) if job.refine.affinity else None
        self.batches = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        maps, class_ids = _no_maps(len(batch["id"]))
        errors = [e or g for e, g in zip(batch["error"], batch["gt_error"])]  # labels needed
        for rows in same_size_groups(batch["image"], errors):
            try:
                for row, row_maps, row_ids in zip(rows, *self._maps(batch, rows)):
                    maps[row], class_ids[row] = row_maps, row_ids
            except (RuntimeError, ValueError) as err:
                for row in rows:
                    errors[row] = f"maps failed: {err}"
        self.batches += 1
        fault_point("map_batch", self.batches)  # tests: an actor killed with its batch done
        out = with_maps(batch, errors, maps, class_ids, time.perf_counter() - start)
        return out if self.walk is None else self.walk(out)

    def _maps(self, batch: dict[str, np.ndarray],
              rows: list[int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        cam = self.job.cam
        images = torch.from_numpy(np.stack([batch["image"][r] for r in rows]))
        images = normalize(images.permute(0, 3, 1, 2).to(self.device))
        images = to_memory_format(images, cam.channels_last)
        labels = torch.from_numpy(np.stack([batch["labels"][r] for r in rows])).to(self.device)
        result = localization_maps(self.method, self.model, images, labels,
                                   kind=None if cam.kind == "auto" else cam.kind,
                                   layer=cam.layer, scales=cam.scales, flip=cam.flip,
                                   image_scale=self.image_scale, precision=cam.precision)
        present = (labels > 0).cpu().numpy()
        result = result.cpu().numpy()
        return ([m[p].astype(np.float16) for m, p in zip(result, present)],
                [self.fg[p] for p in present])


def load_saved_maps(batch: dict[str, np.ndarray], job: Job) -> dict[str, np.ndarray]:
    """A decoded batch -> the columns of :class:`MapStep`, the maps read from
    ``job.maps/<id>.npz`` (``wsss cam`` or ``pseudo-label --save-maps``) instead of computed;
    a missing, unreadable or wrongly sized map file fails its row. The column ``maps_read``
    tells ``write_outputs`` not to write the maps back."""
    found, class_ids = _no_maps(len(batch["id"]))
    errors = list(batch["error"])
    for row, sample_id in enumerate(batch["id"]):
        if errors[row]:
            continue
        name = f"{sample_id}.npz"
        try:
            if not job.maps.is_file(name):
                raise FileNotFoundError(f"map file not found: {job.maps.name(name)}")
            row_maps, row_ids = read_maps(io.BytesIO(job.maps.read_bytes(name)),
                                          job.maps.name(name))
            if row_maps.shape[1:] != batch["image"][row].shape[:2]:
                raise ValueError(f"map file {job.maps.name(name)}: maps {row_maps.shape[1:]} "
                                 f"do not match the image {batch['image'][row].shape[:2]}")
            found[row], class_ids[row] = row_maps, np.asarray(row_ids, np.int64)
        except INPUT_ERRORS as err:
            errors[row] = str(err)
    return {**with_maps(batch, errors, found, class_ids, 0.0),
            "maps_read": np.ones(len(errors), dtype=bool)}


def _no_maps(size: int) -> tuple[list[Any], list[Any]]:
    """Placeholder maps [0, 1, 1] and class ids [0] of ``size`` rows (failed rows keep them)."""
    return [np.zeros((0, 1, 1), np.float16)] * size, [np.zeros(0, np.int64)] * size


def with_maps(batch: dict[str, np.ndarray], errors: list[str], maps: list[Any],
              class_ids: list[Any], seconds: float) -> dict[str, np.ndarray]:
    """The output columns of a map step for a decoded batch, its rows' errors, maps and
    class ids; ``seconds``: the batch's time, spread over its rows."""
    size = len(batch["id"])
    return {**{key: batch[key] for key in ("id", "image", "gt", "gt_error")},
            "error": np.asarray(errors, dtype=object), "maps": objects(maps),
            "class_ids": objects(class_ids), "cam_node": np.asarray([node()] * size),
            "cam_seconds": np.full(size, seconds / max(size, 1))}


def node() -> str:
    """The Ray node this runs on (``local`` outside Ray)."""
    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"


# -- masks ------------------------------------------------------------------------------------
def make_masks(batch: dict[str, np.ndarray], job: Job) -> dict[str, np.ndarray]:
    """Adds ``mask`` uint8 [H, W]: each row's pseudo-mask
    (``wsss.core.masks.make_pseudo_mask`` with ``job.refine``) from its ``walked`` maps when
    the batch has them (the random walk ran), else its ``maps``; a row whose mask fails gets
    the reason in ``error``."""
    method, info, root = job.method(), job.reader.info, job.reader.root
    masks, errors = [], list(batch["error"])
    for row, sample in enumerate(samples(batch)):
        mask = np.zeros((0, 0), np.uint8)
        if sample is not None:
            maps = np.asarray(batch["walked" if "walked" in batch else "maps"][row],
                              dtype=np.float32)
            class_ids = [int(c) for c in batch["class_ids"][row]]
            try:
                mask = make_pseudo_mask(method, sample, maps, class_ids, info.has_background,
                                        job.refine, root)
            except INPUT_ERRORS as err:
                errors[row] = str(err)
        masks.append(mask)
    return {**batch, "error": np.asarray(errors, dtype=object), "mask": objects(masks)}


def read_written_masks(batch: dict[str, np.ndarray], job: Job) -> dict[str, np.ndarray]:
    """Adds ``mask``: the mask already written to ``job.out/<id>.png`` at its image's size (a
    missing or bad file fails its row)."""
    masks, errors = [], list(batch["error"])
    for row, sample_id in enumerate(batch["id"]):
        mask = np.zeros((0, 0), np.uint8)
        if not errors[row]:
            try:
                mask = _written_mask(job, str(sample_id), batch["image"][row].shape[:2])
            except INPUT_ERRORS as err:
                errors[row] = str(err)
        masks.append(mask)
    return {**batch, "error": np.asarray(errors, dtype=object), "mask": objects(masks)}


def read_masks_and_gt(batch: dict[str, np.ndarray], job: Job) -> dict[str, np.ndarray]:
    """Columns ``id``, ``image_file``, ``mask_file`` -> the columns :func:`write_outputs`
    scores: ``mask`` (``job.out/<id>.png`` at its own size), ``gt`` at the mask's size,
    ``error``, ``gt_error``. No image is decoded: scoring mask files needs none. A missing or
    bad mask or ground truth fails its row."""
    masks, gts, errors = [], [], []
    for ref in zip(batch["id"], batch["image_file"], batch["mask_file"]):
        ref = SampleRef(*(str(v) for v in ref))
        mask, gt, error = np.zeros((0, 0), np.uint8), np.zeros((0, 0), np.uint8), ""
        try:
            mask = _written_mask(job, ref.id, None)
            gt = job.reader.read_gt(ref, mask.shape)
            if gt is None:
                raise FileNotFoundError(f"no ground-truth mask for id '{ref.id}'")
        except INPUT_ERRORS as err:
            error = str(err)
        masks.append(mask)
        gts.append(gt)
        errors.append(error)
    size = len(errors)
    return {"id": np.asarray(batch["id"]), "mask": objects(masks), "gt": objects(gts),
            "error": np.asarray(errors, dtype=object),
            "gt_error": np.asarray([""] * size, dtype=object)}


def _written_mask(job: Job, sample_id: str, size: tuple[int, int] | None) -> np.ndarray:
    """The mask ``job.out/<id>.png`` uint8 [H, W], checked against ``size`` (H, W) in pixels
    (None: its own upright size)."""
    name = f"{sample_id}.png"
    if not job.out.is_file(name):
        raise FileNotFoundError(f"mask not found: {job.out.name(name)}")
    data = job.out.read_bytes(name)
    if size is None:
        with Image.open(io.BytesIO(data)) as im:
            width, height = upright_size(im)
        size = (height, width)
    handle = io.BytesIO(data)
    handle.name = job.out.name(name)
    return load_mask(handle, size, job.reader.info.num_classes, job.reader.max_image_side)


# -- outputs ----------------------------------------------------------------------------------
def write_outputs(batch: dict[str, np.ndarray], job: Job) -> dict[str, np.ndarray]:
    """Write each good row's mask to ``job.out/<id>.png`` (when ``job.out``) and its maps to
    ``job.maps/<id>.npz`` (when the batch computed maps and ``job.maps``); score the mask against
    its ground truth (``job.evaluate``). Every write is atomic.

    Returns one small row per image: ``id``, ``status`` (``done`` / ``failed``), ``reason``,
    ``cam_node``, ``cam_seconds``, ``write_node``, ``write_seconds``, ``counts`` (the
    image's ``wsss.core.scoring.Scorer.counts`` row; empty when not scored) and ``unscored``
    (why a written mask could not be scored: its ground truth is unreadable; else empty).
    """
    start = time.perf_counter()
    size = len(batch["id"])
    statuses, reasons, counts = [], [], []
    for row in range(size):
        reason, row_counts = str(batch["error"][row]), np.zeros(0, np.int64)
        if not reason:
            try:
                row_counts = _write_one(batch, row, job)
            except INPUT_ERRORS as err:
                reason = str(err)
        statuses.append("failed" if reason else "done")
        reasons.append(reason)
        counts.append(row_counts)
    seconds = time.perf_counter() - start
    return {"id": np.asarray(batch["id"]), "status": np.asarray(statuses),
            "reason": np.asarray(reasons, dtype=object),
            "cam_node": np.asarray(batch.get("cam_node", ["local"] * size)),
            "cam_seconds": np.asarray(batch.get("cam_seconds", np.zeros(size))),
            "write_node": np.asarray([node()] * size),
            "write_seconds": np.full(size, seconds / max(size, 1)), "counts": objects(counts),
            "unscored": np.asarray([g if job.evaluate and s == "done" else "" for g, s in
                                    zip(batch["gt_error"], statuses)], dtype=object)}


def _write_one(batch: dict[str, np.ndarray], row: int, job: Job) -> np.ndarray:
    """Write one row's outputs; returns its score counts (empty without ``job.evaluate``)."""
    sample_id = str(batch["id"][row])
    if "maps" in batch and "maps_read" not in batch and job.maps is not None:
        class_ids = [int(c) for c in batch["class_ids"][row]]
        job.maps.write_bytes(maps_npz_bytes(batch["maps"][row], class_ids,
                                            job.maps.name(f"{sample_id}.npz")),
                             f"{sample_id}.npz")
    if "mask" not in batch:
        return np.zeros(0, np.int64)
    mask = batch["mask"][row]
    if job.out is not None:
        job.out.write_bytes(mask_png_bytes(mask), f"{sample_id}.png")
    gt = batch["gt"][row]
    if not job.evaluate or not gt.size:
        return np.zeros(0, np.int64)
    return Scorer(job.reader.info).update(mask, gt).counts()


def require_gt(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Fails each good row without readable ground truth (for steps that only score)."""
    errors = [error or gt_error or ("" if gt.size else
                                    f"no ground-truth mask for id '{sample_id}'")
              for sample_id, gt, error, gt_error in zip(batch["id"], batch["gt"], batch["error"],
                                                        batch["gt_error"])]
    return {**batch, "error": np.asarray(errors, dtype=object)}


# -- the step lists of the pipeline ----------------------------------------------------------
def map_steps(job: Job, state: Checkpoint | dict[str, Any], source: str | Path | None = None,
              shipped: Any = None) -> list[Step]:
    """decode -> maps (the model step): the map steps of ``wsss cam`` and ``wsss
    pseudo-label``. Raises CheckpointError before any work unless ``state`` (the classifier
    checkpoint, or the checkpoint dict of file ``source``) fits the dataset's classes and
    rebuilds into its method's model. ``shipped``: what the model step is built from instead
    of ``state`` (under Ray, the state's object reference, put in the object store once)."""
    if isinstance(state, Checkpoint):
        check_classes(state.state, job.reader.info.num_fg, state.source)
        state.model()  # built once per process: the local map step reuses it
    else:
        check_classes(state, job.reader.info.num_fg, source)
        classifier_from_state(state, "cpu", source=source or "checkpoint")
    return [Step(decode, {"job": job}),
            Step(MapStep, {"state": state if shipped is None else shipped, "job": job},
                 model=True)]


def mask_steps(job: Job) -> list[Step]:
    """decode -> saved maps -> (random walk, with ``job.refine.affinity``) -> pseudo-masks ->
    written and scored (``write_outputs``)."""
    walk = ([Step(RandomWalkStep, {"refine": job.refine}, model=True)]
            if job.refine.affinity else [])
    return [Step(decode, {"job": job}), Step(load_saved_maps, {"job": job}), *walk,
            Step(make_masks, {"job": job}), Step(write_outputs, {"job": job})]
