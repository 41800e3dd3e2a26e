"""End to end: CAM classifier -> maps -> pseudo-masks without / with dense CRF -> DeepLab.

For each dataset (a generated synthetic set, and a VOC-layout dataset such as MSRC-21):

1. train a CAM classifier (ResNet-18, random init) with Ray Train (``run_train_classifier``);
2. extract maps of the ``train`` split (``run_cams``);
3. write pseudo-masks without the CRF, with the CRF at its usual defaults and with the CRF
   as configured (``run_refine``; ``--synthetic-set`` / ``--data-set`` give per-dataset CRF
   parameters) and score them against the ``train`` ground truth (used for scoring only);
4. train DeepLabV3-ResNet-18 on the configured CRF masks with Ray Train; score it on ``val``.

The table goes to ``benchmarks/results/segmentation.md``. Stages resume from ``--work``.

Example::

    python benchmarks/segmentation.py --cls-epochs 8 --seg-epochs 6
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from crf import DEFAULT_DATA, machine_lines, publish  # benchmarks/crf.py
from wsss.config import ExperimentConfig, RefineConfig, load_config
from wsss.data.voc import read_split

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "segmentation.md"


@dataclass
class Row:
    """One dataset's results (fractions in [0, 1]) and stage times in seconds."""

    name: str
    train_images: int
    val_images: int
    crf: str = ""
    cls_val_map: float = float("nan")
    mask_miou: dict[str, float] = field(default_factory=dict)
    seg_history: list[float] = field(default_factory=list)
    seg_history_no_crf: list[float] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="VOC-layout dataset (default: MSRC-21 when present)")
    parser.add_argument("--skip-data", action="store_true", help="only the synthetic set")
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--synthetic-n", type=int, default=300)
    parser.add_argument("--synthetic-size", type=int, default=112)
    parser.add_argument("--cls-epochs", type=int, default=8)
    parser.add_argument("--seg-epochs", type=int, default=6)
    parser.add_argument("--data-crop", type=int, default=160,
                        help="classifier / segmenter crop for --data (synthetic: its size)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="config override for every dataset")
    parser.add_argument("--synthetic-set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for the synthetic set only (e.g. its CRF)")
    parser.add_argument("--data-set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for --data only")
    parser.add_argument("--no-segmenter", action="store_true", help="stop after the masks")
    parser.add_argument("--segmenter-without-crf", action="store_true",
                        help="also train a segmenter on the masks without CRF (comparison)")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-segmentation"))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def make_config(root: Path, crop: int, args: argparse.Namespace,
                extra: list[str]) -> ExperimentConfig:
    """The config of one dataset: ResNet-18 CAM classifier and DeepLab segmenter."""
    uri = f"sqlite:///{(args.work / 'mlflow.db').resolve()}"
    return load_config(None, [
        f"data.root={root}", f"data.crop_size={crop}", "model.backbone=resnet18",
        "method.name=cam", f"train.epochs={args.cls_epochs}", "train.batch_size=16",
        "train.lr=0.05", "train.num_workers=2", "segmenter.arch=deeplabv3_resnet18",
        f"segmenter.epochs={args.seg_epochs}", "segmenter.batch_size=8", "segmenter.lr=0.01",
        f"segmenter.crop_size={crop}", "segmenter.num_workers=2", f"tracking.uri={uri}",
        "tracking.experiment=bench-segmentation", *args.overrides, *extra])


def crf_text(ref: RefineConfig) -> str:
    return (f"gaussian {ref.crf_gaussian_sxy:g}/{ref.crf_gaussian_compat:g}, bilateral "
            f"{ref.crf_bilateral_sxy:g}/{ref.crf_bilateral_srgb:g}/"
            f"{ref.crf_bilateral_compat:g}, {ref.crf_iterations} it."
            + (f", label unary {ref.crf_label_confidence:g}" if ref.crf_unary == "labels" else ""))


def refine_variants(ref: RefineConfig) -> dict[str, RefineConfig]:
    """No CRF, the CRF with the usual defaults, and the configured CRF (when different)."""
    crf_fields = {f.name: getattr(RefineConfig(), f.name) for f in dataclasses.fields(ref)
                  if f.name.startswith("crf")}
    variants = {"no CRF": dataclasses.replace(ref, crf=False),
                "CRF, defaults": dataclasses.replace(ref, **crf_fields)}
    if variants["CRF, defaults"] != ref:
        variants["CRF, this run"] = ref
    return variants


def _timed(row: Row, stage: str, fn, *a, **kw):
    """Run a stage, recording its time (a stage that found all its outputs is marked)."""
    start = time.perf_counter()
    out = fn(*a, **kw)
    if getattr(out, "reused", 0) and not getattr(out, "done", 1):
        stage += " (reused)"
    row.seconds[stage] = time.perf_counter() - start
    print(f"[{row.name}] {stage}: {row.seconds[stage]:.0f}s", file=sys.stderr, flush=True)
    return out


def _classifier(row: Row, cfg: ExperimentConfig, work: Path) -> Path:
    """Train (or reuse) the CAM classifier; returns its checkpoint."""
    from wsss.stages import run_train_classifier

    cache = work / "classifier.json"
    if cache.is_file():
        saved = json.loads(cache.read_text())
        row.cls_val_map = saved["val_mAP"]
        row.seconds["classifier (earlier invocation)"] = saved["seconds"]
        return Path(saved["checkpoint"])
    cls = _timed(row, "classifier", run_train_classifier, cfg, work / "cls", f"{row.name}-cls")
    row.cls_val_map = float(cls.metrics.get("val_mAP", float("nan")))
    cache.write_text(json.dumps({"val_mAP": row.cls_val_map, "checkpoint": str(cls.checkpoint),
                                 "seconds": row.seconds["classifier"]}))
    return cls.checkpoint


def run_dataset(name: str, root: Path, crop: int, args: argparse.Namespace,
                extra: list[str]) -> Row:
    """All stages on one dataset; stages resume from ``args.work / name``."""
    from wsss.stages import run_cams
    from wsss.stages_segmentation import run_refine

    cfg = make_config(root, crop, args, extra)
    work = args.work / name
    work.mkdir(parents=True, exist_ok=True)
    row = Row(name, len(read_split(root, "train")), len(read_split(root, "val")),
              crf_text(cfg.refine))
    checkpoint = _classifier(row, cfg, work)
    _timed(row, "maps", run_cams, checkpoint, root, "train", work / "cams", cfg.cams,
           cfg.tracking, max_image_side=cfg.data.max_image_side)
    for label, ref in refine_variants(cfg.refine).items():
        report = _timed(row, f"masks ({label})", run_refine, work / "cams", root, "train",
                        work / f"masks-{_key(ref)}", ref, cfg.tracking,
                        cfg.data.max_image_side)
        row.mask_miou[label] = report.extra["miou"]
    if not args.no_segmenter:
        row.seg_history = _segmenter(row, cfg, work, cfg.refine, "segmenter")
    if args.segmenter_without_crf:
        plain = refine_variants(cfg.refine)["no CRF"]
        row.seg_history_no_crf = _segmenter(row, cfg, work, plain, "segmenter (no CRF)")
    return row


def _segmenter(row: Row, cfg: ExperimentConfig, work: Path, ref: RefineConfig,
               stage: str) -> list[float]:
    """Train (or reuse) the segmenter on the masks of ``ref``; its val mIoU per epoch."""
    from wsss.stages_segmentation import run_train_segmenter
    from wsss.train.checkpoint import read_state
    from wsss.train.segmenter import FORMAT

    seg_name = f"{row.name}-seg-{_key(ref)}-{_key(cfg.segmenter)}"
    final = work / "seg" / seg_name / "model.pt"
    if final.is_file():
        history = read_state(final, FORMAT, "segmenter")["history"]
    else:
        history = _timed(row, stage, run_train_segmenter, cfg, work / f"masks-{_key(ref)}",
                         work / "seg", seg_name).history
    return [h["val_miou"] for h in history]


def _key(section: object) -> str:
    """Short stable hash of a config section (names the folders of its outputs)."""
    text = json.dumps(dataclasses.asdict(section), sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def render(rows: list[Row], args: argparse.Namespace, command: str, load: tuple) -> str:
    seg = make_config(Path("."), 32, args, []).segmenter
    lines = [
        "# End to end: CAM -> dense CRF -> DeepLabV3 (CPU, random init)", "",
        f"CAM classifier ResNet-18 ({args.cls_epochs} epochs, Ray Train, 2 workers); maps of "
        "`train` at scale 1; pseudo-masks (background threshold 0.25 on datasets with one) "
        f"scored against `train` ground truth; {seg.arch} ({args.seg_epochs} epochs, 2 "
        "workers, CE) trained on the CRF masks (the \"this run\" CRF where given, else the "
        "defaults) and scored on `val`. "
        "mIoU in %.", "",
        "| dataset | train / val | cls. val mAP | masks, no CRF | masks, CRF defaults "
        "| masks, CRF this run | CRF this run | segmenter val mIoU, last / best epoch "
        "| same, trained on the masks without CRF |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        mious = [r.mask_miou.get(k) for k in ("no CRF", "CRF, defaults", "CRF, this run")]
        cells = " | ".join("-" if v is None else f"{100 * v:.1f}" for v in mious)
        seg = " | ".join(f"{100 * h[-1]:.1f} / {100 * max(h):.1f}" if h else "-"
                         for h in (r.seg_history, r.seg_history_no_crf))
        lines.append(f"| {r.name} | {r.train_images} / {r.val_images} | "
                     f"{100 * r.cls_val_map:.1f} | {cells} | {r.crf} | {seg} |")
    lines += ["", "Stage times (s): " + "; ".join(
        f"{r.name}: " + ", ".join(f"{k} {v:.0f}" for k, v in r.seconds.items()) for r in rows),
        ""]
    return "\n".join(lines + machine_lines(command, load)) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    load_start = os.getloadavg()
    from wsss.ray_utils import init_ray

    init_ray()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    if not args.skip_synthetic:
        from wsss.data.synthetic import generate_dataset

        synth = args.work / "synthetic" / "data"
        if not (synth / "classes.txt").is_file():
            generate_dataset(synth, n=args.synthetic_n, seed=0, image_size=args.synthetic_size)
        rows.append(run_dataset("synthetic", synth.resolve(), args.synthetic_size, args,
                                args.synthetic_set))
    if not args.skip_data:
        if (args.data / "ImageSets").is_dir():
            rows.append(run_dataset(args.data.name, args.data.resolve(), args.data_crop, args,
                                    args.data_set))
        else:
            print(f"{args.data}: no VOC-layout dataset there (no ImageSets/); skipped",
                  file=sys.stderr)
    publish(render(rows, args, command, (load_start, os.getloadavg())), args.out)


if __name__ == "__main__":
    main()
