"""The random-walk step: maps propagated along learnt pixel affinities (AffinityNet, Ahn &
Kwak, CVPR 2018, Sec. 3.4).

A model step: the affinity network (``refine.affinity``) loads once per instance (one per Ray
Data actor, or inside the map step's actor in ``wsss pseudo-label``). For each image it computes
the features at stride 8 at the network's trained ``image_scale``, the affinities of the pixel
pairs within the checkpoint's radius, and adds the ``walked`` column:
``wsss.core.affinity.propagate`` of the maps (``refine.rw_beta``, ``refine.rw_iterations``).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from wsss.config import RefineConfig
from wsss.core.affinity import pair_offsets, walk_maps
from wsss.data.transforms import normalize
from wsss.pipeline.columns import objects, same_size_groups
from wsss.train.affinity import load_affinity


class RandomWalkStep:
    """Adds the column ``walked``: the ``maps`` column (float16 [K, H, W] of the K present
    classes, at the image's size) propagated by the random walk on the affinity network's
    affinities, float16 [K, H, W] in [0, 1]. ``maps`` stays the classifier's maps (what
    ``write_outputs`` saves); ``make_masks`` takes ``walked`` when the batch has it.

    Images of equal size share one forward pass. A row whose walk fails gets the reason in
    ``error``; ``walk_seconds`` holds the batch's time spread over its rows.

    Args:
        refine: ``affinity`` (the checkpoint; required), ``rw_beta``, ``rw_iterations``.
        device: torch device of the network and the walk.
        threads: torch threads of this process (None: leave as is).

    Raises:
        ValueError: ``refine.affinity`` is not set; CheckpointError: it is not an affinity
            network checkpoint.
    """

    def __init__(self, refine: RefineConfig, device: str = "cpu", threads: int | None = None):
        if not refine.affinity:
            raise ValueError("the random walk needs refine.affinity (a `wsss train-affinity` "
                             "checkpoint)")
        if threads is not None:
            torch.set_num_threads(threads)
        self.refine, self.device = refine, device
        self.model, state = load_affinity(refine.affinity, device)
        self.image_scale = float(state["image_scale"])
        self.offsets = pair_offsets(int(state["radius"])).to(device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        errors = list(batch["error"])
        walked = list(batch["maps"])  # failed rows keep their placeholder
        for rows in same_size_groups(batch["image"], errors):
            try:
                for row, row_walked in zip(rows, self._walk(batch, rows)):
                    walked[row] = row_walked
            except (RuntimeError, ValueError) as err:
                for row in rows:
                    errors[row] = f"random walk failed: {err}"
        seconds = time.perf_counter() - start
        return {**batch, "error": np.asarray(errors, dtype=object), "walked": objects(walked),
                "walk_seconds": np.full(len(errors), seconds / max(len(errors), 1))}

    def _walk(self, batch: dict[str, Any], rows: list[int]) -> list[np.ndarray]:
        images = torch.from_numpy(np.stack([batch["image"][r] for r in rows]))
        images = normalize(images.permute(0, 3, 1, 2).to(self.device))
        maps = [torch.from_numpy(np.asarray(batch["maps"][r], dtype=np.float32)) for r in rows]
        walked = walk_maps(self.model, images, maps, self.offsets, self.refine.rw_beta,
                           self.refine.rw_iterations, self.image_scale)
        return [w.cpu().numpy().astype(np.float16) for w in walked]
