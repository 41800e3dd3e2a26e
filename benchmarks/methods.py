"""Pseudo-mask quality of every registered method: same data, backbone, epochs and seeds.

For each method: train the classifier (Ray Train), extract CAM maps on the train split, turn them
into pseudo-masks and score them against ground truth (used only for scoring). Writes a markdown
table and a bar plot to benchmarks/results/.

    python benchmarks/methods.py --data synth --epochs 8            # generated set
    python benchmarks/methods.py --data msrc21 --crop-size 160
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from wsss.config import load_config  # noqa: E402
from wsss.methods import METHODS  # noqa: E402
from wsss.pipeline.maps import run_cams
from wsss.pipeline.masks import run_eval
from wsss.pipeline.train_cls import run_train_classifier

RESULTS = Path(__file__).parent / "results"
MSRC = Path(__file__).resolve().parents[1].parent / "shared/data/msrc21"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default="synth",
                   help="'synth' (generated here), 'msrc21' (../shared/data/msrc21) or a "
                        "VOC-layout folder (default: synth)")
    p.add_argument("--methods", nargs="+", default=sorted(METHODS),
                   help="method names, each optionally with knobs: NAME:KEY=VALUE[;KEY=VALUE], "
                        "e.g. 'mdc:dilations=[1,2,3]' (default: every registered method)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--crop-size", type=int, default=112)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, help="learning rate (default: the recipe's, which "
                   "follows the weights: wsss.config.FINE_TUNING)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=300, help="synthetic images")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="extra config override applied to every method, e.g. train.lr=0.1")
    p.add_argument("--workdir", type=Path, default=Path("outputs/bench_methods"))
    p.add_argument("--tag", default=None, help="results file suffix (default: dataset name)")
    p.add_argument("--smoke-test", action="store_true", help="2 methods, 1 epoch, 24 images")
    return p.parse_args(argv)


def dataset_root(args: argparse.Namespace) -> Path:
    if args.data == "msrc21":
        return MSRC
    if args.data != "synth":
        return Path(args.data)
    from wsss.data.synthetic import generate_dataset

    root = args.workdir / "synth"
    generate_dataset(root, n=args.n, seed=args.seed, image_size=args.crop_size)
    return root


def recipe_overrides(args: argparse.Namespace) -> list[str]:
    """The optimiser overrides of every method's run: ``--lr`` (when given) and ``--set``."""
    return [*([f"train.lr={args.lr}"] if args.lr else []), *args.overrides]


def bench_method(spec: str, root: Path, args: argparse.Namespace) -> dict:
    """Train, map and score one method spec (``NAME[:KEY=VALUE;...]``); returns its table row."""
    name, knobs = parse_spec(spec)
    overrides = [f"data.root={root}", f"method.name={name}", f"train.epochs={args.epochs}",
                 f"data.crop_size={args.crop_size}", f"train.batch_size={args.batch_size}",
                 f"train.num_workers={args.workers}", f"train.seed={args.seed}",
                 "tracking.experiment=bench-methods", *recipe_overrides(args)]
    cfg = load_config(None, overrides + knobs)
    start = time.perf_counter()
    label = re.sub(r"[^A-Za-z0-9_.=-]+", "_", spec)
    result = run_train_classifier(cfg, args.workdir / "runs", run_name=f"{label}-{root.name}")
    cams = args.workdir / "cams" / f"{label}-{root.name}"
    run_cams(result.checkpoint, root, cfg.data.train_split, cams, cfg.cams, cfg.tracking)
    scores, _ = run_eval(cams, root, cfg.data.train_split, cfg.refine, tracking_cfg=cfg.tracking)
    row = {"method": spec, "miou": scores.miou, "precision": _fg(scores, "precision"),
           "recall": _fg(scores, "recall"), "val_mAP": result.metrics.get("val_mAP", float("nan")),
           "minutes": (time.perf_counter() - start) / 60}
    print(json.dumps(row), flush=True)
    return row


def parse_spec(spec: str) -> tuple[str, list[str]]:
    """``"mdc:dilations=[1,2,3];x=1"`` -> ``("mdc", ["method.params.dilations=[1,2,3]", ...])``."""
    name, _, knobs = spec.partition(":")
    return name, [f"method.params.{kv}" for kv in knobs.split(";") if kv]


def _fg(scores, what: str) -> float:
    """Foreground precision/recall with a background class, else the class-macro average."""
    value = getattr(scores, f"fg_{what}")
    return value if value is not None else getattr(scores, f"macro_{what}")


def write_results(rows: list[dict], root: Path, args: argparse.Namespace, argv: list[str]) -> Path:
    tag = args.tag or root.name
    RESULTS.mkdir(parents=True, exist_ok=True)
    base = next((r for r in rows if r["method"] == "cam"), None)
    train = load_config(None, recipe_overrides(args)).train
    lines = [f"# Pseudo-mask quality per method: {root.name}", "",
             f"Train split, {args.epochs} epochs, crop {args.crop_size}, {train.optimizer} "
             f"{train.schedule} lr {train.lr:g}, weight decay {train.weight_decay:g}, batch "
             f"{args.batch_size}, {args.workers} Ray Train workers, resnet18 from scratch, seed "
             f"{args.seed}. Precision/recall: foreground (datasets with background) or the "
             f"class-macro average (no background class).", "",
             "| method | mIoU | precision | recall | recall - CAM | val mAP | minutes |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        delta = f"{r['recall'] - base['recall']:+.3f}" if base else "-"
        lines.append(f"| {r['method']} | {r['miou']:.3f} | {r['precision']:.3f} | "
                     f"{r['recall']:.3f} | {delta} | {r['val_mAP']:.3f} | {r['minutes']:.1f} |")
    lines += ["", "Command:", "", f"    python benchmarks/methods.py {' '.join(argv)}", "",
              f"Machine: {platform.processor() or platform.machine()}, "
              f"{_nproc()} CPUs, Python {platform.python_version()}", ""]
    path = RESULTS / f"methods_{tag}.md"
    path.write_text("\n".join(lines))
    plot(rows, RESULTS / f"methods_{tag}.png", root.name)
    return path


def plot(rows: list[dict], path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(1.2 * len(rows) + 2, 3.5))
    width, xs = 0.27, range(len(rows))
    for i, key in enumerate(("miou", "precision", "recall")):
        ax.bar([x + (i - 1) * width for x in xs], [r[key] for r in rows], width, label=key)
    ax.set_xticks(list(xs), [r["method"] for r in rows], rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_title(f"pseudo-masks per method ({title})")
    ax.legend(ncol=3, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _nproc() -> str:
    return subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.smoke_test:
        args.methods, args.epochs, args.n = ["cam", "hide_and_seek"], 1, 24
        args.workdir, args.tag = args.workdir / "smoke", "smoke"
    root = dataset_root(args)
    rows = [bench_method(name, root, args) for name in args.methods]
    print(f"results: {write_results(rows, root, args, argv)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
