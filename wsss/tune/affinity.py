"""The random-walk sweep: the walk's knobs (AffinityNet's beta and t) and the background
threshold, scored on the maps of one fixed classifier and one fixed affinity network.

Before the sweep, as for the CRF sweep, the Ray Data pseudo-labelling pipeline extracts the maps
of the scored images once; without ``--affinity`` the affinity network is then trained on seeds
of those maps (``wsss train-affinity``). Every trial re-runs the mask steps (random walk,
background, CRF) on the saved maps through Ray Data, chunk by chunk, so ASHA can stop poor
settings early.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from wsss.config import ExperimentConfig
from wsss.knobs import Knob
from wsss.pipeline.train_aff import run_train_affinity
from wsss.tune.crf import CrfSweep

RANDOM_WALK_KNOBS: tuple[Knob, ...] = (
    Knob("refine.rw_beta", 1.0, 16.0, log=True),
    Knob("refine.rw_iterations", 1, 64, log=True, integer=True),
    Knob("refine.bg_threshold", 0.1, 0.6),
)
AFFINITY_RUN = "affinity-sweep-network"


@dataclasses.dataclass
class AffinitySweep(CrfSweep):
    """Random-walk knobs on the maps of ``--checkpoint`` and the affinities of ``--affinity``
    (each trained first when not given)."""

    path_options: tuple[str, ...] = ("checkpoint", "affinity")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--affinity", help="affinity network model.pt (default: train one "
                                               "on seeds of the scored images' maps)")

    def prepare(self, args: argparse.Namespace, cfg: ExperimentConfig,
                workdir: Path) -> dict[str, Any]:
        """The CRF sweep's maps, plus the affinity network every trial's walk uses."""
        extra = super().prepare(args, cfg, workdir)
        affinity = args.affinity
        if affinity is None:
            section = dataclasses.replace(cfg.affinity, num_workers=args.workers_per_trial,
                                          use_gpu=(args.gpus_per_trial or 0) > 0)
            trained = run_train_affinity(dataclasses.replace(cfg, affinity=section),
                                         extra["maps_dir"], extra["checkpoint"],
                                         workdir / "affinity", run_name=AFFINITY_RUN,
                                         ids=extra["ids"])
            affinity = trained.checkpoint
        return {**extra, "affinity": str(affinity)}
