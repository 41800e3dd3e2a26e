"""Sweep efficiency: Optuna TPE + ASHA against random search (no early stopping) at the same
number of trials, on the CRF sweep of a synthetic set (cheap: no training per trial).

For each seed both searches run the same number of trials on the maps of one classifier; the
best objective after each trial (mean over seeds) and the compute ASHA saved (image chunks scored
against the full budget) go to ``benchmarks/results/sweep_efficiency.md`` and ``.png``.

    python benchmarks/sweep_efficiency.py --trials 16 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
ARMS = {"tpe+asha": ("tpe", "asha"), "random": ("random", "fifo")}


def run_arm(sweep, arm: str, seed: int, args: argparse.Namespace, data: Path,
            checkpoint: Path, uri: str) -> dict:
    """One sweep; returns its best-so-far curve and compute (chunks run, full budget)."""
    from wsss.tune.compare import sweep_rows
    from wsss.tune.runner import build_parser
    from wsss.tune.tuner import run_sweep

    search, scheduler = ARMS[arm]
    experiment = f"bench-{arm}-s{seed}"
    argv = ["--data", str(data), "--checkpoint", str(checkpoint), "--num-samples",
            str(args.trials), "--max-concurrent", str(args.max_concurrent), "--seed", str(seed),
            "--search", search, "--scheduler", scheduler, "--eval-images", str(args.eval_images),
            "--experiment", experiment, "--tracking-uri", uri,
            "--workdir", str(args.workdir / "runs"), "--set", f"data.crop_size={args.size}"]
    start = time.perf_counter()
    run_sweep(sweep, build_parser(sweep, None).parse_args(argv))
    seconds = time.perf_counter() - start
    _, rows = sweep_rows(uri, experiment)  # trials in start order
    values = np.array([r["objective"] for r in rows], dtype=float)
    # A trial stopped early has a partial-data objective; count only completed ones as "best".
    done = np.array([r["status"] == "completed" for r in rows])
    best = np.fmax.accumulate(np.where(done, values, -np.inf))
    chunks = sum(r["progress"] for r in rows)
    return {"best": best, "chunks": chunks, "full": 4 * len(rows), "seconds": seconds}


def prepare(args: argparse.Namespace) -> tuple[Path, Path]:
    """The synthetic set and one CAM classifier whose maps every trial refines."""
    from wsss.config import load_config
    from wsss.data.synthetic import generate_dataset
    from wsss.ray_utils import init_ray
    from wsss.pipeline.train_cls import run_train_classifier

    data = args.workdir / "data/synth"
    generate_dataset(data, n=args.n, seed=0, image_size=args.size)
    init_ray(None)
    cfg = load_config(None, [f"data.root={data}", f"data.crop_size={args.size}",
                             f"train.epochs={args.epochs}", "train.num_workers=1",
                             "train.batch_size=8",
                             f"tracking.uri=sqlite:///{args.workdir / 'mlflow.db'}",
                             "tracking.experiment=bench-classifier"])
    result = run_train_classifier(cfg, args.workdir / "classifier", run_name="bench-cam")
    return data, result.checkpoint


def write_results(curves: dict[str, list[dict]], args: argparse.Namespace, seconds: float) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    lines = ["# Sweep efficiency: TPE + ASHA vs random search (CRF sweep, synthetic set)", "",
             f"Command: `python benchmarks/sweep_efficiency.py {' '.join(sys.argv[1:])}`  ",
             f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}, "
             f"{_cpus()} CPUs (shared); total {seconds:.0f}s; load average (1 min) at the "
             f"end {os.getloadavg()[0]:.1f}  ",
             f"Classifier: CAM, {args.epochs} epochs on {args.n} synthetic images of "
             f"{args.size} px; {args.eval_images} images scored per trial", "",
             "| search | seeds | best mIoU after N trials (mean ± std), N = "
             + ", ".join(str(n) for n in _marks(args.trials)) + " | chunks scored / full budget |"
             " wall s / sweep |", "|---|---|---|---|---|"]
    for arm, runs in curves.items():
        best = np.array([r["best"] for r in runs])
        best = np.where(np.isfinite(best), best, np.nan)
        mean, std = np.nanmean(best, axis=0), np.nanstd(best, axis=0)
        x = np.arange(1, best.shape[1] + 1)
        ax.plot(x, mean, label=arm)
        ax.fill_between(x, mean - std, mean + std, alpha=0.2)
        marks = ", ".join(f"{mean[n - 1]:.3f} ± {std[n - 1]:.3f}" for n in _marks(args.trials))
        chunks, full = sum(r["chunks"] for r in runs), sum(r["full"] for r in runs)
        wall = np.mean([r["seconds"] for r in runs])
        lines.append(f"| {arm} | {len(runs)} | {marks} | {chunks:.0f} / {full} "
                     f"({100 * (1 - chunks / full):.0f}% saved) | {wall:.0f} |")
    ax.set_xlabel("trials")
    ax.set_ylabel("best pseudo-mask mIoU so far")
    ax.legend()
    fig.tight_layout()
    RESULTS.mkdir(exist_ok=True)
    fig.savefig(RESULTS / "sweep_efficiency.png")
    lines += ["", "Best so far counts completed trials only (a trial ASHA stopped has scored only "
              "part of the images). Plot: `sweep_efficiency.png`."]
    (RESULTS / "sweep_efficiency.md").write_text("\n".join(lines) + "\n")


def _marks(trials: int) -> list[int]:
    return sorted({max(1, trials // 4), max(1, trials // 2), trials})


def _cpus() -> int:
    return os.cpu_count() or 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--n", type=int, default=80, help="synthetic images")
    p.add_argument("--size", type=int, default=64, help="image side")
    p.add_argument("--eval-images", type=int, default=32)
    p.add_argument("--epochs", type=int, default=4, help="epochs of the CAM classifier")
    p.add_argument("--max-concurrent", type=int, default=2)
    p.add_argument("--workdir", type=Path, default=Path("runs/bench_sweeps"))
    args = p.parse_args(argv)
    args.workdir = args.workdir.resolve()
    start = time.perf_counter()
    import runpy

    sweep = runpy.run_path(str(Path(__file__).resolve().parents[1] / "sweeps/crf.py"))["SWEEP"]
    data, checkpoint = prepare(args)
    uri = f"sqlite:///{args.workdir / 'mlflow.db'}"
    curves = {arm: [run_arm(sweep, arm, seed, args, data, checkpoint, uri)
                    for seed in args.seeds] for arm in ARMS}
    write_results(curves, args, time.perf_counter() - start)
    print((RESULTS / "sweep_efficiency.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
