"""Saved maps -> refined pseudo-masks -> mIoU, through Ray Data: the pseudo-labelling
pipeline's refine stage without its map stage, for searching refinement settings.

    ids -> decode image + ground truth, read ``MAPS/<id>.npz``, refine (background score,
    CRF), score against ground truth: one CPU task per block -> per-block confusion matrices

Blocks come back in id order and the running scores are handed out after each chunk of ids,
so a sweep can report them as its time attribute and ASHA can stop poor settings early. Run
inside a Tune trial, the tasks go to the trial's own placement group (reserve CPU bundles for
them): the trial never competes with other trials for CPUs it did not reserve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from wsss.config import RefineConfig
from wsss.pseudo_label_tasks import (Job, block_confusion, decode_batch, load_saved_maps,
                                     refine_and_write)
from wsss.storage import Location


@dataclass
class ChunkScores:
    """Scores of every id handed out so far (``wsss.metrics.Scores``) and the failures."""

    images: int
    scores: Any
    failed: list[tuple[str, str]] = field(default_factory=list)


def rescore_maps(maps: str | Path, data: str | Path, split: str, ids: Sequence[str],
                 refine_cfg: RefineConfig, method_name: str,
                 method_params: dict[str, Any] | None = None, chunks: int = 1,
                 batch_size: int = 8, max_image_side: int = 1024) -> Iterator[ChunkScores]:
    """Refine the saved maps of ``ids`` (in ``split``) with ``refine_cfg`` as ``method_name``
    turns maps into masks; yield the running scores after each of ``chunks`` equal chunks.

    Ray must be initialised. Ids whose image or maps cannot be read are listed in ``failed``.
    Raises ConfigError before any work when ``refine_cfg`` is out of range for
    ``max_image_side`` (``RefineConfig.validate_for``).
    """
    import ray

    from wsss.metrics import ConfusionMatrix
    from wsss.pseudo_label import read_rows

    refine_cfg.validate_for(max_image_side)
    data_loc, maps_loc = Location.parse(data), Location.parse(maps)
    info, labels, rows = read_rows(data_loc, split, ids)
    job = Job(data_loc, None, info, method_name, dict(method_params or {}), refine=refine_cfg,
              labels_file=labels, max_image_side=max_image_side, evaluate=True)
    ds = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / batch_size)))
    group = ray.util.get_current_placement_group()
    ds = ds.map_batches(_refine_saved, fn_kwargs={"job": job, "maps": maps_loc},
                        batch_size=batch_size, num_cpus=1, **_placement_group_args(group))
    ds.context.execution_options.preserve_order = True
    if group is not None:  # plan for the group's CPUs, not the whole cluster's
        cpus = sum(bundle.get("CPU", 0) for bundle in group.bundle_specs)
        ds.context.execution_options.resource_limits = ray.data.ExecutionResources(cpu=cpus)
    confusion = ConfusionMatrix(info.num_classes)
    background = 0 if info.has_background else None
    bounds = [math.ceil(len(rows) * (k + 1) / chunks) for k in range(chunks)]
    done, failed = 0, []
    for block in ds.iter_batches(batch_size=None, batch_format="numpy"):
        done += len(block["id"])
        failed += [(str(i), str(r)) for i, s, r in
                   zip(block["id"], block["status"], block["reason"]) if s != "done"]
        confusion.merge(block_confusion(block["confusion"], info.num_classes))
        while bounds and done >= bounds[0]:
            bounds.pop(0)
            yield ChunkScores(done, confusion.compute(list(info.class_names), background),
                              list(failed))


def _refine_saved(batch: dict[str, np.ndarray], job: Job, maps: Location) -> dict[str, Any]:
    """One block: decode, read its maps, refine and score (``refine_and_write`` columns)."""
    return refine_and_write(load_saved_maps(decode_batch(batch, job), job, maps), job)


def _placement_group_args(group: Any) -> dict[str, Any]:
    """Keep the tasks in the caller's placement group (a Tune trial's), if it has one.

    Ray Data schedules tasks with its own strategy (SPREAD), which would take them out of the
    group: they would wait for CPUs outside it, which other trials may hold.
    """
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    if group is None:
        return {}
    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(
        group, placement_group_capture_child_tasks=True)}
