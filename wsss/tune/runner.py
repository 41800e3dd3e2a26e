"""The sweep driver every script in ``sweeps/`` shares: arguments, data, the Tuner, MLflow.

``OptunaSearch`` (TPE, seeded; define-by-run space) behind a ``ConcurrencyLimiter`` proposes
trials, ``ASHAScheduler`` stops poor ones on the per-epoch objective (pseudo-mask mIoU less
a penalty on degenerate masks, ``--degenerate-penalty``), Tune's ``FailureConfig``
retries a crashed trial (its Ray Train runs resume from their last checkpoints) and ``--resume``
restores an interrupted sweep (finished trials are not run again).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from ray import tune

from wsss.config import ExperimentConfig, load_config, override
from wsss.data.errors import DatasetError
from wsss.data.reader import DatasetReader
from wsss.data.synthetic import generate_dataset
from wsss.helptext import ArgumentParser
from wsss.knobs import Knob
from wsss.methods import get_method
from wsss.ray_utils import VERBOSE_ENV
from wsss.storage import absolute_options, is_uri
from wsss.train.mask_eval import select_eval_ids
from wsss.tune.report import DEGENERATE_PENALTY
from wsss.tune.samples import checkpoint_samples
from wsss.tune.spaces import LR, Space, apply_trial, method_knobs
from wsss.tune.trial import TIME_ATTR, train_trial

CRASH_ENV = "WSSS_SWEEP_CRASH_MARKER"  # tests: crash the sweep's first report once
SAMPLE_IMAGES = 4  # images in each trial's pictures


@dataclasses.dataclass
class Sweep:
    """A sweep: its knobs and how a trial runs (Ray Train by default)."""

    name: str
    knobs: Sequence[Knob] = ()
    constants: dict[str, Any] = dataclasses.field(default_factory=dict)
    methods: Sequence[str] | None = None
    smoke_knobs: Sequence[Knob] = ()  # replace knobs of the same key in --smoke-test
    path_options: Sequence[str] = ()  # this sweep's own options that name local files
    trainable: Callable[..., None] = train_trial
    time_attr: str = TIME_ATTR
    # The trial function itself: training trials only wait on Ray Train workers, which ask for
    # their own CPUs/GPUs (a bundle may not be empty, so they hold a little memory instead).
    trial_resources: dict[str, float] = dataclasses.field(
        default_factory=lambda: {"cpu": 0, "memory": 256 * 2**20})

    def resources(self, args: argparse.Namespace) -> dict[str, float] | tune.PlacementGroupFactory:
        """What Tune reserves for one trial (``tune.with_resources``)."""
        return self.trial_resources

    def space(self, smoke: bool, base: ExperimentConfig) -> Space:
        """The search space on ``base`` (relative knobs take their ranges from it)."""
        return Space(self.knobs, self.constants, self.methods,
                     overrides=self.smoke_knobs if smoke else (), base=base)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Options of this sweep only (none by default)."""

    def prepare(self, args: argparse.Namespace, cfg: ExperimentConfig,
                workdir: Path) -> dict[str, Any]:
        """Work shared by all trials before the sweep starts (extra context for trials)."""
        return {}

    def samples(self, ctx: Any, cfg: ExperimentConfig, row: dict[str, Any],
                out_dir: Path) -> list[Path]:
        """CAM overlays and pseudo-masks of the trial's last checkpoint (none without one)."""
        if not row.get("checkpoint_path"):
            return []
        return checkpoint_samples(row["checkpoint_path"], cfg.data.root,
                                  ctx.eval_ids[:SAMPLE_IMAGES], cfg.refine, out_dir)

    def full_length(self, cfg: ExperimentConfig, trial_config: dict[str, Any]) -> int:
        """Time-attribute units a trial runs when nothing stops it (rounds x epochs)."""
        trial_cfg = apply_trial(cfg, trial_config)
        method = get_method(trial_cfg.method.name)(1, trial_cfg.method.params)
        return method.num_rounds * trial_cfg.train.epochs

    def max_t(self, cfg: ExperimentConfig) -> int:
        """Largest time attribute any trial reaches (ASHA's ``max_t``): most rounds x epochs."""
        methods = self.methods or [self.constants.get("method.name", cfg.method.name)]
        knobs = [*self.knobs, *(k for m in methods for k in method_knobs(m))]
        steps = [k.high for k in knobs if k.key == "method.params.steps"]
        return int(max(steps or [1])) * cfg.train.epochs


def training_sweep(name: str, method: str, knobs: Sequence[Knob] = (),
                   smoke_knobs: Sequence[Knob] = ()) -> Sweep:
    """A sweep that trains ``method`` with the given knobs plus the learning rate."""
    return Sweep(name, knobs=(*(knobs or method_knobs(method)), LR),
                 constants={"method.name": method}, smoke_knobs=smoke_knobs)


# Trials of a sweep, and how many run at once: by default, and in a --smoke-test (a check of a
# setup that should take a couple of minutes on a 2-core machine).
TRIALS, CONCURRENT, SMOKE_TRIALS, SMOKE_CONCURRENT = 12, 1, 3, 2


def build_parser(sweep: Sweep, description: str | None) -> argparse.ArgumentParser:
    """The options every sweep script takes; ``--help`` shows ``description`` (the script's
    doc, its example commands one a line) as written and each option's default."""
    p = ArgumentParser(description=description)
    p.add_argument("--data", help="VOC-layout dataset: a folder, or a URI every node reads "
                                  "such as s3://BUCKET/VOC2012 (default: a generated "
                                  "synthetic set)")
    p.add_argument("--num-samples", type=int,
                   help=f"trials to run (default {TRIALS}; smoke {SMOKE_TRIALS})")
    p.add_argument("--max-concurrent", type=int,
                   help=f"trials running at once (default {CONCURRENT}; smoke {SMOKE_CONCURRENT})")
    p.add_argument("--gpus-per-trial", type=float, default=0.0,
                   help="GPUs per trial, shared by its Ray Train workers (0: CPU only)")
    p.add_argument("--workers-per-trial", type=int, default=1,
                   help="Ray Train workers per trial")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                   help="Ray cluster to join (default: $RAY_ADDRESS, which is `auto` on the "
                        "nodes of cluster/, else start Ray locally)")
    p.add_argument("--storage-path", default=os.environ.get("WSSS_STORAGE_PATH") or None,
                   help="Ray storage, local folder or s3://... (default: $WSSS_STORAGE_PATH, "
                        "set on cluster nodes, else WORKDIR/ray)")
    p.add_argument("--experiment", default=f"sweep-{sweep.name}",
                   help="MLflow experiment and Tune run name")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep")
    p.add_argument("--verbose", action="store_true",
                   help="show Ray Train's and Tune's own progress lines (every worker's "
                        "report and checkpoint, every trial's result); quiet by default")
    p.add_argument("--smoke-test", action="store_true",
                   help="small trials to check a setup: 1 epoch per round (unless --epochs), "
                        "64 px crops, narrower ranges where the sweep sets them (erasing and "
                        "methods: 1..2 steps; crf: 1..3 iterations), ASHA keeping half the "
                        "trials at each rung (else a third), without --data a synthetic set of "
                        f"24 images of 64 px, and {SMOKE_TRIALS} trials, {SMOKE_CONCURRENT} at "
                        "once (unless --num-samples / --max-concurrent)")
    p.add_argument("--epochs", type=int, help="epochs per round (default 4; smoke 1)")
    p.add_argument("--eval-images", type=int, default=48,
                   help="training images whose pseudo-masks are scored for the objective")
    p.add_argument("--degenerate-penalty", type=float, default=DEGENERATE_PENALTY,
                   metavar="P",
                   help="what the sweep ranks (Optuna, ASHA, the best trial): objective = "
                        "pseudo_miou - P x degenerate_share, the share of scored pseudo-masks "
                        "that are flooded (one class, or no background where the ground truth "
                        "has some); 0 ranks by pseudo_miou alone, which stays the true mIoU "
                        "in every table")
    p.add_argument("--seed", type=int, default=0, help="sampler and training seed")
    p.add_argument("--tracking-uri", help="MLflow URI (default: $MLFLOW_TRACKING_URI, set on "
                                          "cluster nodes, else sqlite:///mlflow.db in the "
                                          "working directory)")
    p.add_argument("--workdir", default="runs/sweeps", help="local folder for data and models")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="base config override, e.g. data.crop_size=96 (repeatable)")
    p.add_argument("--search", choices=("tpe", "random"), default="tpe",
                   help="Optuna sampler: TPE (seeded) or random search (a baseline)")
    p.add_argument("--scheduler", choices=("asha", "fifo"), default="asha",
                   help="asha stops poor trials early; fifo runs every trial in full")
    sweep.add_arguments(p)
    return p


# Options of every sweep that name local files or folders (URIs stay as given).
PATH_OPTIONS = ("data", "storage_path", "workdir", "tracking_uri")


def parse_options(sweep: Sweep, argv: Sequence[str] | None = None,
                  description: str | None = None) -> argparse.Namespace:
    """The sweep's options, with every local path made absolute against the working directory
    (``wsss.storage.absolute``): Ray storage, Ray workers and a later ``--resume`` from the
    same folder all see the same files. argparse exits with status 2 on a bad option."""
    parser = build_parser(sweep, description)
    args = parser.parse_args(argv)
    if not 0 <= args.degenerate_penalty < float("inf"):
        parser.error(f"--degenerate-penalty must be a number >= 0, not {args.degenerate_penalty}")
    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"
    if args.num_samples is None:
        args.num_samples = SMOKE_TRIALS if args.smoke_test else TRIALS
    if args.max_concurrent is None:
        args.max_concurrent = SMOKE_CONCURRENT if args.smoke_test else CONCURRENT
    return absolute_options(args, (*PATH_OPTIONS, *sweep.path_options))


def base_config(args: argparse.Namespace, data_root: str | Path) -> ExperimentConfig:
    """Defaults for every trial; ``--smoke-test`` makes them tiny."""
    epochs = args.epochs or (1 if args.smoke_test else 4)
    overrides = [override("data.root", str(data_root)), f"train.seed={args.seed}",
                 "train.batch_size=8", f"train.epochs={epochs}",
                 f"data.crop_size={64 if args.smoke_test else 96}",
                 override("tracking.experiment", args.experiment)]
    if args.tracking_uri:
        overrides.append(override("tracking.uri", args.tracking_uri))
    return load_config(None, overrides + list(args.overrides))


def dataset_root(args: argparse.Namespace, workdir: Path) -> str | Path:
    """``--data`` (a URI such as ``s3://bucket/VOC2012`` kept as given: every node reads it
    there), or a synthetic set generated once under the work folder."""
    if args.data:
        return args.data if is_uri(args.data) else Path(args.data)
    n, size = (24, 64) if args.smoke_test else (120, 96)
    root = workdir / f"data/synth-{n}-{size}"
    if not (root / "classes.txt").is_file():
        generate_dataset(root, n=n, seed=0, image_size=size)
    return root


def select_train_eval_ids(cfg: ExperimentConfig, count: int, seed: int) -> list[str]:
    """The fixed training images (with ground truth) whose pseudo-masks every trial scores."""
    refs = DatasetReader.open(cfg.data.root).index(cfg.data.train_split)
    scored = [ref.id for ref in refs if ref.mask_file]
    if not scored:
        raise DatasetError(f"{cfg.data.root}: no training image of split "
                           f"'{cfg.data.train_split}' has a ground-truth mask to score")
    return select_eval_ids(scored, count, seed)
