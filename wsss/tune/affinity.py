"""The random-walk sweeps, on the maps of one fixed classifier.

Before either sweep, as for the CRF sweep, the Ray Data pseudo-labelling pipeline extracts the
maps of the scored images once.

- ``AffinitySweep``: the walk's knobs (AffinityNet's beta and t) and the background threshold
  on one fixed affinity network (``--affinity``, else trained once on seeds of those maps,
  ``wsss train-affinity``). Every trial re-runs the mask steps (random walk, background, CRF) on
  the saved maps through Ray Data, chunk by chunk, so ASHA can stop poor settings early.
- ``SeedSweep``: the seeds' thresholds and the pair radius too, which change what the network
  learns: every trial writes its own seeds of the scored images, trains its own affinity
  network on them with Ray Train (``--epochs`` epochs) and reports, after every epoch, the
  pseudo-mask mIoU of those images' maps walked on it (``walk_mask_scores``), so ASHA stops
  poor seeds after an epoch.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from ray import tune

from wsss.config import ExperimentConfig
from wsss.knobs import Knob
from wsss.pipeline.train_aff import SEEDS_DIR, run_train_affinity, write_seeds
from wsss.storage import Location
from wsss.train.affinity import MaskEval, scan_affinity_data, train_affinity
from wsss.train.checkpoint import open_checkpoint
from wsss.tune.crf import CrfSweep, trial_config
from wsss.tune.runner import SAMPLE_IMAGES, Sweep
from wsss.tune.samples import saved_map_samples
from wsss.tune.spaces import apply_trial
from wsss.tune.tracking import trial_run
from wsss.tune.trial import TIME_ATTR, SweepContext, TuneForwarder, worker_resources

RANDOM_WALK_KNOBS: tuple[Knob, ...] = (
    Knob("refine.rw_beta", 1.0, 16.0, log=True),
    Knob("refine.rw_iterations", 1, 64, log=True, integer=True),
    Knob("refine.bg_threshold", 0.1, 0.6),
)
# Whether the seeds follow the dense CRF (IRNet) or the maps' thresholds alone is searched too:
# the CRF puts seed boundaries on image edges, which helps photos (MSRC-21, walk + CRF on one
# classifier's maps: 51.1 with CRF seeds, 50.1 with plain ones) and hurts objects textured with
# edges of their own (the synthetic set: 60.6 vs 63.1). benchmarks/results/
# random_walk_affinity_epochs.md and quality_random_walk_msrc21*.md; docs/quality.md.
# So is the kind of affinity: AffinityNet's feature distance or IRNet's boundary map (with
# from-scratch trunks the features won on both datasets, benchmarks/results/
# random_walk_heads.md; IRNet's gains come with pretrained trunks).
SEED_KNOBS: tuple[Knob, ...] = (
    Knob("affinity.fg_threshold", 0.2, 0.6),
    Knob("affinity.bg_threshold", 0.01, 0.15, log=True),
    Knob("affinity.radius", 3, 8, integer=True),
    Knob("affinity.seed_crf", choices=(True, False)),
    Knob("affinity.head", choices=("feature", "boundary")),
)
AFFINITY_RUN = "affinity-sweep-network"


@dataclasses.dataclass
class AffinitySweep(CrfSweep):
    """Random-walk knobs on the maps of ``--checkpoint`` and the affinities of ``--affinity``
    (each trained first when not given)."""

    path_options: tuple[str, ...] = ("checkpoint", "affinity")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--affinity", help="affinity network model.pt, path or URI "
                                               "(default: train one on seeds of the scored "
                                               "images' maps)")

    def prepare(self, args: argparse.Namespace, cfg: ExperimentConfig,
                workdir: Path) -> dict[str, Any]:
        """The CRF sweep's maps, plus the affinity network every trial's walk uses."""
        if args.affinity is not None:  # a wrong file fails before the maps are made
            open_checkpoint(args.affinity, "affinity")
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


def trial_affinity_config(cfg: ExperimentConfig, ctx: SweepContext) -> ExperimentConfig:
    """A seed trial's config: its affinity network trained for ``train.epochs`` (the sweep's
    ``--epochs``) by ``--workers-per-trial`` workers, on GPUs when ``--gpus-per-trial``."""
    section = dataclasses.replace(cfg.affinity, epochs=cfg.train.epochs,
                                  num_workers=ctx.workers_per_trial,
                                  use_gpu=ctx.gpus_per_trial > 0)
    return dataclasses.replace(cfg, affinity=section)


def seed_trial(config: dict[str, Any], ctx: SweepContext) -> None:
    """Tune function trainable: the trial's seeds of the scored images, then its affinity
    network trained on them with Ray Train, each epoch's walked pseudo-mask mIoU reported."""
    trial_id = tune.get_context().get_trial_id()
    cfg = trial_affinity_config(apply_trial(ctx.base(), config), ctx)
    run_id = trial_run(ctx, trial_id, ctx.run_name(trial_id, config), cfg)
    trial_dir = Path(ctx.workdir) / "trials" / trial_id
    out = trial_dir / "round1"  # one training round, named as the classifier sweeps' are
    ids = list(ctx.eval_ids)
    write_seeds(cfg, ctx.extra["maps_dir"], Location.parse(trial_dir / SEEDS_DIR), None, ids)
    forward = TuneForwarder(1, 0, run_id, ctx.tracking_uri, ctx.crash_marker, ctx.unsent_file,
                            ctx.degenerate_penalty)
    train_affinity(cfg, trial_dir / SEEDS_DIR, ctx.extra["checkpoint"], out,
                   f"{trial_id}-round1",
                   storage_path=f"{ctx.storage_path.rstrip('/')}/{ctx.experiment}-train",
                   data=scan_affinity_data(cfg, trial_dir / SEEDS_DIR, ids),
                   mask_eval=MaskEval(ctx.extra["maps_dir"], tuple(ids)),
                   callbacks=[forward, forward.recorder],
                   resources_per_worker=worker_resources(ctx))


@dataclasses.dataclass
class SeedSweep(CrfSweep):
    """Seed thresholds, radius and walk knobs on the maps of ``--checkpoint`` (a CAM
    classifier trained first when not given): one affinity network per trial."""

    trainable: Any = seed_trial
    time_attr: str = TIME_ATTR

    def resources(self, args: argparse.Namespace) -> dict[str, float]:
        """A training trial's: the trial function holds a little memory, its Ray Train
        workers ask for their own CPUs / GPUs."""
        return Sweep.resources(self, args)

    def full_length(self, cfg: ExperimentConfig, trial_config: dict[str, Any]) -> int:
        return cfg.train.epochs

    def max_t(self, cfg: ExperimentConfig) -> int:
        return max(cfg.train.epochs, 1)

    def samples(self, ctx: SweepContext, cfg: ExperimentConfig, row: dict[str, Any],
                out_dir: Path) -> list[Path]:
        """Maps, walked on the trial's own network, and their pseudo-masks."""
        if not row.get("checkpoint"):
            return []
        refine = dataclasses.replace(trial_config(ctx, cfg, row["knobs"]).refine,
                                     affinity=row["checkpoint"])
        return saved_map_samples(ctx.extra["maps_dir"], cfg.data.root,
                                 list(ctx.eval_ids[:SAMPLE_IMAGES]), ctx.extra["method"],
                                 ctx.extra["method_params"], refine, out_dir)
