"""The ``wsss`` command: one subcommand per pipeline stage.

    wsss data synth --out data/synth --n 300 --seed 0
    wsss data convert-masks --data data/voc
    wsss train-cls --data data/synth --method cam --epochs 8
    wsss cam --checkpoint CKPT --data data/synth --split train --out cams/
    wsss eval --cams cams/ --data data/synth --split train
    wsss refine --cams cams/ --data data/synth --split train --out masks/
    wsss train-affinity --cams cams/ --checkpoint CKPT --data data/synth
    wsss refine --cams cams/ --affinity AFF_CKPT --data data/synth --out masks-rw/
    wsss pseudo-label --checkpoint CKPT --data data/synth --split train --out masks/
    wsss train-seg --pseudo-masks masks/ --data data/synth
    wsss predict --checkpoint SEG_CKPT --data data/synth --split val --out pred/
    wsss eval --masks pred/ --data data/synth --split val
    wsss compare --experiment sweep-erasing
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Sequence

from wsss import names
from wsss.cli_data import add_data_commands
from wsss.commands import command_line
from wsss.config import (BACKBONES, BG_MODES, SEGMENTER_ARCHS, SEGMENTER_MODES, ExperimentConfig,
                         load_config, override)
from wsss.core.map_kinds import MAP_KINDS
from wsss.data.voc import MASK_DIR
from wsss.errors import WsssError
from wsss.helptext import ArgumentParser
from wsss.methods import METHODS
from wsss.pipeline.maps import run_cams
from wsss.pipeline.masks import run_eval, run_eval_masks, run_refine
from wsss.pipeline.predict import run_predict
from wsss.pipeline.pseudo_label import PipelineOptions, run_pseudo_label
from wsss.pipeline.train_aff import run_train_affinity
from wsss.pipeline.train_cls import run_train_classifier
from wsss.pipeline.train_seg import run_train_segmenter
from wsss.ray_utils import VERBOSE_ENV, init_ray
from wsss.storage import absolute_options, check_writable
from wsss.tracking import check_tracking_uri, resolve_tracking_uri
from wsss.train.classifier import scan_training_data
from wsss.train.segmenter import scan_segmenter_data
from wsss.tune.compare import compare
from wsss.tune.view import runs_view, stored_view_key


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (sections: data, model, method, train, "
                                    "cams, refine, affinity, segmenter, tracking; recipes in "
                                    "configs/); options given on the command line win")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted config override, e.g. train.lr=0.05 (repeatable)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI "
                                          "or sqlite:///mlflow.db in the working directory)")
    p.add_argument("--experiment", help="MLflow experiment name (default: wsss)")
    p.add_argument("--verbose", action="store_true",
                   help="show Ray's own progress lines (Ray Train reports and checkpoints); "
                        "quiet by default")


def _add_training(p: argparse.ArgumentParser, out_default: str) -> None:
    """Options every Ray Train command takes."""
    p.add_argument("--epochs", type=int)
    p.add_argument("--workers", type=int, help="Ray Train workers (default 2)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--crop-size", type=int)
    p.add_argument("--out", default=out_default, help="folder for checkpoints")
    p.add_argument("--run-name", help="run name (re-using one resumes its Ray Train run)")
    p.add_argument("--address", help="Ray cluster address (default: start Ray locally)")


def _config(args: argparse.Namespace, extra: list[str]) -> ExperimentConfig:
    overrides = list(extra) + _opts([("tracking.uri", args.tracking_uri or None),
                                     ("tracking.experiment", args.experiment or None)])
    return load_config(args.config, overrides + list(args.overrides))


def _add_split(p: argparse.ArgumentParser, split: str) -> None:
    """``--data`` and ``--split`` of a command that reads one split of a dataset."""
    p.add_argument("--data", help="dataset folder or URI (VOC layout; s3://, gs://, file://; "
                                  "default: the config's data.root)")
    p.add_argument("--split", help=f"split file ImageSets/Segmentation/<split>.txt (default: "
                                   f"the config's data.{split}_split)")
    p.set_defaults(split_role=split)


def _data_config(args: argparse.Namespace, extra: list[str]) -> ExperimentConfig:
    """The config of a command that reads one split: ``--data`` / ``--split`` set
    ``data.root`` and ``data.<train|val>_split``; the command reads both from the config."""
    key = f"data.{args.split_role}_split"
    return _config(args, _opts([("data.root", args.data), (key, args.split)]) + extra)


def _split(cfg: ExperimentConfig, args: argparse.Namespace) -> str:
    return getattr(cfg.data, f"{args.split_role}_split")


def _opts(pairs: list[tuple[str, object]]) -> list[str]:
    """``key=value`` overrides for the options the user gave (None = not given); text stays
    exactly that text (``wsss.config.override``)."""
    return [override(key, value) for key, value in pairs if value is not None]


def _add_cam_options(p: argparse.ArgumentParser) -> None:
    """Map-extraction options (``cam`` and ``pseudo-label``)."""
    p.add_argument("--kind", choices=("auto", *MAP_KINDS.names()),
                   help="map kind (wsss.core.map_kinds); default: the method's own (auto)")
    p.add_argument("--layer", help="the layer a gradient kind weights (layer1..layer4)")
    p.add_argument("--scales", type=float, nargs="+", help="test-time scales, e.g. 0.5 1 1.5 2")
    p.add_argument("--flip", action="store_true", help="also average the flipped image")
    p.add_argument("--batch-size", type=int)


def _cam_overrides(args: argparse.Namespace) -> list[str]:
    extra = _opts([("cams.kind", args.kind), ("cams.layer", args.layer),
                   ("cams.batch_size", args.batch_size)])
    if args.scales:
        extra.append(f"cams.scales=[{', '.join(map(str, args.scales))}]")
    if args.flip:
        extra.append("cams.flip=true")
    return extra


def _add_overwrite(p: argparse.ArgumentParser, what: str) -> None:
    """``--overwrite`` of a command whose output folder records its job (manifest.json)."""
    p.add_argument("--overwrite", action="store_true",
                   help=f"recompute every one of the {what} in --out; without it a re-run of "
                        f"the same job resumes (ids already written are kept) and a run of "
                        f"another job (checkpoint, data or settings) into the folder stops "
                        f"with exit 2")


def _add_refine_options(p: argparse.ArgumentParser) -> None:
    """Maps -> masks options (``refine`` and ``pseudo-label``); CRF kernels via --set."""
    p.add_argument("--no-crf", action="store_true", help="skip the dense CRF")
    p.add_argument("--bg-mode", choices=BG_MODES)
    p.add_argument("--bg-threshold", type=float)
    p.add_argument("--bg-power", type=float, help="alpha of bg = (1 - max map)^alpha")
    p.add_argument("--fg-confidence", type=float, help="foreground below this map value -> 255")
    p.add_argument("--bg-confidence", type=float, help="background above this map value -> 255")
    p.add_argument("--affinity", metavar="AFF_CKPT", help="propagate the maps by a random walk "
                   "on this affinity network's affinities first (path or URI; `wsss "
                   "train-affinity`; "
                   "knobs refine.rw_beta, refine.rw_iterations via --set)")


def _refine_overrides(args: argparse.Namespace) -> list[str]:
    extra = _opts([("refine.bg_mode", args.bg_mode), ("refine.bg_threshold", args.bg_threshold),
                   ("refine.bg_power", args.bg_power), ("refine.fg_confidence", args.fg_confidence),
                   ("refine.bg_confidence", args.bg_confidence),
                   ("refine.affinity", args.affinity)])
    if args.no_crf:
        extra.append("refine.crf=false")
    return extra


def cmd_train_cls(args: argparse.Namespace) -> int:
    extra = _opts([("data.root", args.data), ("method.name", args.method),
                   ("train.epochs", args.epochs), ("train.num_workers", args.workers),
                   ("train.batch_size", args.batch_size), ("train.lr", args.lr),
                   ("model.backbone", args.backbone), ("model.pretrained", args.pretrained),
                   ("data.crop_size", args.crop_size), ("train.seed", args.seed)])
    cfg = _config(args, extra)
    data = scan_training_data(cfg)  # every dataset problem is found before Ray starts
    init_ray(args.address)
    result = run_train_classifier(cfg, args.out, run_name=args.run_name, data=data)
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in result.metrics.items()
                        if isinstance(v, float))
    print(f"\ntrained {cfg.method.name} ({cfg.model.backbone}) for {cfg.train.epochs} epochs on "
          f"{cfg.train.num_workers} worker(s) in {result.seconds:.0f}s: {metrics}")
    _print_skipped(result.skipped)
    print(f"checkpoint: {result.checkpoint}")
    return 0


def _print_skipped(skipped: list[tuple[str, str]]) -> None:
    """The ids a training run left out, with their reasons."""
    if skipped:
        print(f"skipped {len(skipped)} bad sample(s):")
        for sample_id, reason in skipped:
            print(f"  {sample_id}: {reason}")


def cmd_cam(args: argparse.Namespace) -> int:
    cfg = _data_config(args, _cam_overrides(args))
    report = run_cams(args.checkpoint, cfg.data.root, _split(cfg, args), args.out, cfg.cams,
                      cfg.tracking, device=args.device, max_image_side=cfg.data.max_image_side,
                      overwrite=args.overwrite)
    _print_report(report, "maps")
    print(f"maps in {args.out} (report: {args.out}/report.json)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    extra = _opts([("refine.bg_threshold", args.bg_threshold)])
    cfg = _data_config(args, extra)
    data, split, side = cfg.data.root, _split(cfg, args), cfg.data.max_image_side
    if args.masks:
        scores, report = run_eval_masks(args.masks, data, split, cfg.tracking, side)
    else:
        scores, report = run_eval(args.cams, data, split, cfg.refine, args.masks_out,
                                  cfg.tracking, side)
    print(scores.table())
    _print_report(report, "scored")
    return 0


def cmd_refine(args: argparse.Namespace) -> int:
    cfg = _data_config(args, _refine_overrides(args))
    report = run_refine(args.cams, cfg.data.root, _split(cfg, args), args.out, cfg.refine,
                        cfg.tracking, max_image_side=cfg.data.max_image_side,
                        overwrite=args.overwrite)
    _print_report(report, "masks")
    print(f"pseudo-masks in {args.out} (report: {args.out}/report.json)")
    return 0


def cmd_pseudo_label(args: argparse.Namespace) -> int:
    cfg = _data_config(args, _cam_overrides(args) + _refine_overrides(args))
    options = PipelineOptions(cam_workers=args.cam_workers, gpus_per_worker=args.gpus_per_worker,
                              save_maps=args.save_maps, evaluate=args.eval,
                              max_image_side=cfg.data.max_image_side, overwrite=args.overwrite)
    init_ray(args.address)
    report = run_pseudo_label(args.checkpoint, cfg.data.root, _split(cfg, args), args.out,
                              cfg.cams, cfg.refine, cfg.tracking, options)
    if report.scores is not None:
        print(report.scores.table())
    _print_report(report, "masks")
    print(f"pseudo-masks in {args.out} (report: {args.out}/report.json)")
    return 0


def cmd_train_seg(args: argparse.Namespace) -> int:
    extra = _opts([("data.root", args.data), ("segmenter.arch", args.arch),
                   ("segmenter.epochs", args.epochs), ("segmenter.num_workers", args.workers),
                   ("segmenter.batch_size", args.batch_size), ("segmenter.lr", args.lr),
                   ("segmenter.crop_size", args.crop_size), ("segmenter.mode", args.mode),
                   ("segmenter.init_from", args.init_from)])
    cfg = _config(args, extra)
    masks = Path(cfg.data.root) / MASK_DIR if args.masks_from_ground_truth else args.pseudo_masks
    data = scan_segmenter_data(cfg, masks)  # dataset problems: before Ray starts
    init_ray(args.address)
    result = run_train_segmenter(cfg, masks, args.out, run_name=args.run_name, data=data)
    last = result.history[-1] if result.history else {}
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in last.items() if isinstance(v, float))
    print(f"\ntrained {cfg.segmenter.arch} ({cfg.segmenter.mode}) for {cfg.segmenter.epochs} "
          f"epochs in {result.seconds:.0f}s: {metrics}")
    _print_skipped(result.skipped)
    print(f"checkpoint: {result.checkpoint}")
    return 0


def cmd_train_affinity(args: argparse.Namespace) -> int:
    extra = _opts([("data.root", args.data), ("affinity.epochs", args.epochs),
                   ("affinity.num_workers", args.workers),
                   ("affinity.batch_size", args.batch_size), ("affinity.lr", args.lr),
                   ("affinity.crop_size", args.crop_size)])
    cfg = _config(args, extra)
    init_ray(args.address)
    result = run_train_affinity(cfg, args.cams, args.checkpoint, args.out,
                                run_name=args.run_name)
    last = result.history[-1] if result.history else {}
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in last.items() if isinstance(v, float))
    print(f"\ntrained the affinity network ({cfg.affinity.head} head) for "
          f"{cfg.affinity.epochs} epochs in {result.seconds:.0f}s: {metrics}")
    _print_skipped(result.skipped)
    walk = ("--data", cfg.data.root, "--affinity", result.checkpoint)
    print(f"checkpoint: {result.checkpoint}\nnext: the random walk's pseudo-masks:\n  "
          + command_line("wsss", "refine", "--cams", args.cams, *walk, "--out",
                         f"{Path(result.checkpoint).parent}/masks")
          + f"\n(or {command_line('wsss', 'pseudo-label')} ... --affinity "
          f"{shlex.quote(str(result.checkpoint))})")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    cfg = _data_config(args, [])
    split = _split(cfg, args)
    report = run_predict(args.checkpoint, cfg.data.root, split, args.out, cfg.tracking,
                         device=args.device, max_image_side=cfg.data.max_image_side,
                         crf=cfg.refine if args.crf else None, overwrite=args.overwrite)
    _print_report(report, "predicted")
    print(f"masks in {args.out}; score them with:\n  "
          + command_line("wsss", "eval", "--masks", args.out, "--data", cfg.data.root,
                         "--split", split))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    uri = resolve_tracking_uri(args.tracking_uri)
    out = args.out or f"runs/compare/{args.experiment}"  # a folder name: see check_names
    try:
        table, paths, experiment_id, parent = compare(uri, args.experiment, out)
    except LookupError as err:
        print(f"wsss compare: error: {err}", file=sys.stderr)
        return 2
    print(table)
    print("wrote " + ", ".join(str(p) for p in paths))
    print("browse:\n" + runs_view(uri, experiment_id,
                                   stored_view_key(uri, experiment_id, parent)))
    return 0


# The option naming each command's output folder (checked before any compute).
OUTPUT_OPTIONS = {"train-cls": "out", "cam": "out", "refine": "out", "pseudo-label": "out",
                  "train-seg": "out", "predict": "out", "eval": "masks_out"}


# The rule each name-giving option must follow, and where its value goes, by option.
NAME_OPTIONS = {"run_name": (names.folder_name_problem, "a run name is the folder OUT/<run "
                                                        "name> and the Ray Train run's folder"),
                "experiment": (names.experiment_name_problem, "the MLflow experiment"),
                "split": (names.path_component_problem, "a split is the file "
                                                        "ImageSets/Segmentation/<split>.txt")}


def check_names(args: argparse.Namespace) -> None:
    """InvalidNameError naming the option and the rule for a name that cannot go where it
    goes: ``--run-name`` (the folder ``OUT/<name>``), ``--experiment``, ``--split`` (the file
    ``<split>.txt``); ``wsss compare`` without ``--out`` makes a folder of the experiment."""
    for option, (rule, purpose) in NAME_OPTIONS.items():
        value = getattr(args, option, None)
        if value is not None:
            names.check_name(value, f"--{option.replace('_', '-')}", rule, purpose)
    if args.command == "compare" and not args.out:
        names.check_name(args.experiment, "--experiment", names.folder_name_problem,
                         "without --out it names the folder runs/compare/<experiment>")


def preflight(args: argparse.Namespace) -> None:
    """Fail before any compute: names must fit where they go, the output folder must be
    writable (with free space) and an MLflow tracking server must answer."""
    check_names(args)
    if hasattr(args, "tracking_uri"):
        uri = args.tracking_uri
        if uri is None and hasattr(args, "config"):
            uri = _config(args, []).tracking.uri
        check_tracking_uri(uri)
    out = getattr(args, OUTPUT_OPTIONS.get(args.command, ""), None)
    if out:
        check_writable(out, f"--{OUTPUT_OPTIONS[args.command].replace('_', '-')} folder")


def _print_report(report, what: str) -> None:
    print(report.summary(what))
    for sample_id, reason in report.failed:
        print(f"  skipped {sample_id}: {reason}")
    for entry in report.extra.get("not_scored", []):
        print(f"  not scored {entry['id']}: {entry['reason']}")


# The module doc's example commands, one a line: `wsss --help` lists them all, and each
# subcommand's --help those of its own.
EXAMPLES = tuple(line.strip() for line in (__doc__ or "").splitlines()
                 if line.startswith("    wsss "))


def examples(command: str = "") -> str | None:
    """The ``examples:`` block of ``wsss [COMMAND] --help`` (None: no example of it)."""
    prefix = " ".join(["wsss", *command.split()]) + " "
    lines = [line for line in EXAMPLES if line.startswith(prefix)]
    return "examples:\n" + "\n".join(f"  {line}" for line in lines) if lines else None


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """``parser``'s subcommand parsers by name ({} when it has none)."""
    return next((action.choices for action in parser._actions
                 if isinstance(action, argparse._SubParsersAction)), {})


def command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
                  ) -> list[tuple[str, ...]]:
    """Every command path of ``parser``, all levels: (), ("data",), ("data", "synth"), ..."""
    return [prefix, *(path for name, sub in subcommands(parser).items()
                      for path in command_paths(sub, (*prefix, name)))]


def _add_examples(parser: argparse.ArgumentParser, command: str = "") -> None:
    """Give ``parser`` and its subcommands' parsers (all levels) their examples as epilog."""
    parser.epilog = examples(command)
    for name, sub in subcommands(parser).items():
        _add_examples(sub, f"{command} {name}".strip())


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="wsss", description="Weakly supervised semantic "
                            "segmentation: image-level labels -> maps -> masks.")
    sub = parser.add_subparsers(dest="command", required=True)

    add_data_commands(sub)

    p = sub.add_parser("train-cls", help="train a classifier with Ray Train")
    p.add_argument("--data", help="dataset folder (VOC layout)")
    p.add_argument("--method", choices=sorted(METHODS))
    _add_training(p, "runs/classifier")
    p.add_argument("--seed", type=int)
    p.add_argument("--backbone", choices=BACKBONES)
    p.add_argument("--pretrained", help="'imagenet' or a local ResNet state-dict file")
    _add_common(p)
    p.set_defaults(func=cmd_train_cls)

    p = sub.add_parser("cam", help="localization maps (CAM / Grad-CAM) for a split")
    p.add_argument("--checkpoint", required=True, help="classifier checkpoint (path or URI)")
    _add_split(p, "train")
    p.add_argument("--out", required=True)
    _add_overwrite(p, "maps")
    _add_cam_options(p)
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    _add_common(p)
    p.set_defaults(func=cmd_cam)

    p = sub.add_parser("eval", help="score pseudo-masks (from maps) or mask PNGs against "
                                     "ground truth")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--cams", help="folder written by `wsss cam` (masks made on the fly)")
    source.add_argument("--masks", help="folder of palette PNG masks (`wsss refine` / `predict`)")
    _add_split(p, "train")
    p.add_argument("--bg-threshold", type=float, help="background threshold (VOC-style data)")
    p.add_argument("--masks-out", help="with --cams: also write the masks as palette PNGs here")
    _add_common(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("refine", help="maps -> pseudo-masks (background score, dense CRF)")
    p.add_argument("--cams", required=True, help="folder written by `wsss cam`")
    _add_split(p, "train")
    p.add_argument("--out", required=True, help="folder for the palette PNG masks")
    _add_overwrite(p, "masks")
    _add_refine_options(p)
    _add_common(p)
    p.set_defaults(func=cmd_refine)

    p = sub.add_parser("pseudo-label", help="checkpoint + images -> pseudo-masks on a Ray "
                                            "cluster (Ray Data: decode, maps, CRF, write)")
    p.add_argument("--checkpoint", required=True, help="classifier checkpoint (path or URI)")
    _add_split(p, "train")
    p.add_argument("--out", required=True, help="folder or URI for <id>.png masks")
    p.add_argument("--address", help="Ray cluster address (default: start Ray locally)")
    p.add_argument("--cam-workers", type=int, help="map actors (default: one per GPU, or "
                                                    "half the CPUs)")
    p.add_argument("--gpus-per-worker", type=float, default=1.0,
                   help="GPUs per map actor when the cluster has GPUs (0: CPU only)")
    p.add_argument("--save-maps", action="store_true", help="also write OUT/maps/<id>.npz")
    p.add_argument("--eval", action="store_true", help="score the masks against ground truth")
    _add_overwrite(p, "masks (and maps)")
    _add_cam_options(p)
    _add_refine_options(p)
    _add_common(p)
    p.set_defaults(func=cmd_pseudo_label)

    p = sub.add_parser("train-affinity", help="seeds from maps -> affinity network for the "
                                              "random walk (Ray Train)")
    p.add_argument("--cams", required=True, help="maps of the train split (`wsss cam`)")
    p.add_argument("--checkpoint", required=True,
                   help="the classifier that made the maps: its backbone starts the network")
    p.add_argument("--data", help="dataset (default: the config's data.root)")
    _add_training(p, "runs/affinity")
    _add_common(p)
    p.set_defaults(func=cmd_train_affinity)

    p = sub.add_parser("train-seg", help="train a DeepLabV3 segmenter on pseudo-masks "
                                         "(Ray Train)")
    masks = p.add_mutually_exclusive_group(required=True)
    masks.add_argument("--pseudo-masks", help="folder written by `wsss refine`")
    masks.add_argument("--masks-from-ground-truth", action="store_true",
                       help="train on the dataset's ground-truth masks instead (SegmentationClass/):"
                            " the fully supervised reference of the same recipe")
    p.add_argument("--data", help="dataset (images; val ground truth; default: the config's "
                                   "data.root)")
    p.add_argument("--arch", choices=SEGMENTER_ARCHS)
    p.add_argument("--mode", choices=SEGMENTER_MODES, help="ce (default) or sec losses")
    p.add_argument("--init-from", metavar="CLS_CKPT",
                   help="start the trunk from this classifier's backbone (same ResNet; path "
                        "or URI)")
    _add_training(p, "runs/segmenter")
    _add_common(p)
    p.set_defaults(func=cmd_train_seg)

    p = sub.add_parser("predict", help="segmenter masks for a split")
    p.add_argument("--checkpoint", required=True, help="segmenter checkpoint (path or URI)")
    _add_split(p, "val")
    p.add_argument("--out", required=True)
    _add_overwrite(p, "masks")
    p.add_argument("--crf", action="store_true",
                   help="refine each prediction with the dense CRF of the config's refine "
                        "section (its crf_* keys; set them with --config / --set)")
    p.add_argument("--device")
    _add_common(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("compare", help="a sweep's trials sorted by objective, with plots")
    p.add_argument("--experiment", required=True, help="MLflow experiment of the sweep")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI "
                                          "or sqlite:///mlflow.db in the working directory)")
    p.add_argument("--out", help="folder for the table and plots (default: "
                                 "runs/compare/EXPERIMENT)")
    p.set_defaults(func=cmd_compare)
    _add_examples(parser)
    return parser


# Options naming local files or folders (URIs stay as given; see wsss.storage.absolute).
PATH_OPTIONS = ("config", "data", "out", "checkpoint", "cams", "pseudo_masks", "masks",
                "masks_out", "affinity", "tracking_uri")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = absolute_options(parser.parse_args(argv), PATH_OPTIONS)

    if getattr(args, "verbose", False):
        os.environ[VERBOSE_ENV] = "1"
    try:
        preflight(args)
        return args.func(args)
    except (WsssError, FileNotFoundError) as err:
        print(f"wsss {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
