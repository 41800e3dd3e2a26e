"""Pseudo-labelling throughput: a plain single-process loop vs the Ray Data pipeline.

All variants run in one process on the same images and the same (random-init) classifier and
write the same masks (checked): the plain loop calls the pipeline's own stage functions one
after the other (decode -> maps -> CRF + PNG write), once with torch on every core and once on
one thread, and the faster of the two is the baseline; the pipeline runs with 1 and 2 CPU map
workers on a local Ray with every CPU of the machine. A bare forward pass of the backbone
(logits only, same images, batch size and torch threads as the one-worker pipeline's map
actor) gives the floor for the map stage.

Each pipeline run is preceded by an untimed warm-up run on a few other images, so Ray's
worker processes exist; the timed wall clock still includes building the dataset and
starting the map actors (a model load each). "Once running" is the pipeline's rate after its
first output block (its start-up excluded).

Example::

    python benchmarks/pseudo_label.py --images 96 --backbone resnet50
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import DEFAULT_DATA, machine_lines, publish  # noqa: E402  (benchmarks/common.py)

from wsss.config import CamConfig, ExperimentConfig, RefineConfig, TrackingConfig
from wsss.data.reader import DatasetReader
from wsss.pipeline.executors import LocalExecutor
from wsss.pipeline.pseudo_label import PipelineOptions, run_pseudo_label
from wsss.pipeline.steps import Job, Step, make_masks, map_steps, write_outputs
from wsss.storage import Location

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "pseudo_label.md"
WARMUP_IMAGES = 4
# plain loops: torch threads = every core (torch's default), or one (like one map worker)
PLAIN = {"plain loop, all cores": len(os.sched_getaffinity(0)), "plain loop, 1 thread": 1}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="VOC-layout dataset (default: MSRC-21 when present, else synthetic)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="repeats of every variant")
    parser.add_argument("--smoke-test", action="store_true",
                        help="tiny run (synthetic, 8 images, resnet18); writes only with --out")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"markdown results file (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    if args.smoke_test:
        args.data, args.images, args.backbone, args.rounds = Path("/nonexistent"), 8, "resnet18", 1
    elif args.out is None:
        args.out = DEFAULT_OUT
    return args


def prepare(args: argparse.Namespace, work: Path) -> tuple[Path, str, Path]:
    """(dataset root, description, checkpoint): ``images`` + warm-up ids in a split file."""
    from wsss.data.reader import read_info, read_split
    from wsss.data.synthetic import generate_dataset
    from wsss.methods import get_method
    from wsss.train.checkpoint import save_checkpoint

    root, what = args.data, f"{args.data.name} ({args.split})"
    if not (root / "ImageSets").is_dir():
        root, what = work / "synth", "synthetic 112 px"
        generate_dataset(root, n=args.images + WARMUP_IMAGES, seed=0, image_size=112)
    ids = read_split(root, args.split) + (read_split(root, "val") if root != args.data else [])
    if len(ids) < args.images + WARMUP_IMAGES:
        sys.exit(f"{root} has {len(ids)} ids; need {args.images + WARMUP_IMAGES}")
    view = work / "data"  # the dataset's files, with two split files of our own
    (view / "ImageSets/Segmentation").mkdir(parents=True)
    for name in ("JPEGImages", "SegmentationClass", "classes.txt"):
        if (root / name).exists():
            os.symlink((root / name).resolve(), view / name)
    split_dir = view / "ImageSets/Segmentation"
    (split_dir / "bench.txt").write_text("\n".join(ids[:args.images]) + "\n")
    (split_dir / "warmup.txt").write_text("\n".join(ids[-WARMUP_IMAGES:]) + "\n")
    info = read_info(view)
    cfg = ExperimentConfig().with_overrides([f"model.backbone={args.backbone}"])
    torch.manual_seed(0)
    method = get_method("cam")(info.num_fg)
    ckpt = work / "model.pt"
    save_checkpoint(ckpt, model=method.build_model(cfg.model), method=method, cfg=cfg,
                    class_names=list(info.class_names), has_background=info.has_background,
                    epoch=0)
    return view, what, ckpt


def plain_loop(view: Path, ckpt: Path, out: Path, cam: CamConfig, threads: int) -> float:
    """Seconds of decode -> maps -> CRF -> PNG for every image, one process, no Ray."""
    from wsss.train.checkpoint import load_checkpoint_state

    previous = torch.get_num_threads()
    state = load_checkpoint_state(ckpt)
    start = time.perf_counter()
    torch.set_num_threads(threads)
    reader = DatasetReader.open(view)
    job = Job(reader, state["method"], dict(state["method_params"]), cam, RefineConfig(),
              out=Location.parse(out))
    steps = [*map_steps(job, state, ckpt), Step(make_masks, {"job": job}),
             Step(write_outputs, {"job": job})]
    for done in LocalExecutor(cam.batch_size, "plain loop").run(reader.index("bench"), steps):
        assert (done["status"] == "done").all(), done["reason"]
    seconds = time.perf_counter() - start
    torch.set_num_threads(previous)
    return seconds


def pipeline(view: Path, ckpt: Path, out: Path, cam: CamConfig, workers: int,
             tracking: TrackingConfig) -> tuple[float, float, float]:
    """(wall seconds, map-actor busy seconds, images/s after the first output block) of the
    Ray Data pipeline with ``workers``."""
    options = PipelineOptions(cam_workers=workers)
    run_pseudo_label(ckpt, view, "warmup", out.with_name(out.name + "-warmup"), cam,
                     RefineConfig(), tracking, options)
    report = run_pseudo_label(ckpt, view, "bench", out, cam, RefineConfig(), tracking, options)
    assert report.failed == [], report.failed
    return (report.seconds, report.extra["cam_seconds"],
            report.extra.get("steady_images_per_s", float("nan")))


def one_worker_threads() -> int:
    """Torch threads of the one-worker pipeline's map actor on this machine."""
    from wsss.pipeline.executors import plan_workers

    cluster = {"CPU": float(len(os.sched_getaffinity(0)))}
    return plan_workers(cluster, cam_workers=1).threads


def bare_forward(view: Path, ckpt: Path, cam: CamConfig, threads: int) -> float:
    """Seconds of logits-only forward passes over the images (decoded beforehand)."""
    from wsss.data.dataset import VOCDataset
    from wsss.data.transforms import normalize
    from wsss.train.checkpoint import load_classifier

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    _, model, _ = load_classifier(ckpt)
    dataset = VOCDataset(view, "bench")
    images = [torch.from_numpy(dataset.sample(i).image).permute(2, 0, 1) for i in dataset.ids]
    groups: dict[tuple, list[torch.Tensor]] = {}
    for image in images:
        groups.setdefault(tuple(image.shape), []).append(image)
    start = time.perf_counter()
    with torch.no_grad():
        for group in groups.values():
            for first in range(0, len(group), cam.batch_size):
                model(normalize(torch.stack(group[first:first + cam.batch_size])))
    seconds = time.perf_counter() - start
    torch.set_num_threads(previous)
    return seconds


def same_masks(a: Path, b: Path) -> bool:
    from PIL import Image

    names = sorted(p.name for p in a.glob("*.png"))
    return names == sorted(p.name for p in b.glob("*.png")) and all(
        np.array_equal(np.asarray(Image.open(a / n)), np.asarray(Image.open(b / n)))
        for n in names)


def render(args: argparse.Namespace, what: str, times: dict[str, list[float]],
           busy: list[float], steady: dict[str, list[float]], identical: dict[str, bool],
           command: str, load: tuple) -> str:
    n = args.images
    rate = {k: n / statistics.median(v) for k, v in times.items()}
    plain_name = max(PLAIN, key=rate.get)  # the faster plain loop is the baseline
    plain, one, forward = rate[plain_name], rate["pipeline, 1 worker"], rate["bare forward"]
    cam_rate = n / statistics.median(busy)
    same = ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in identical.items())
    lines = ["# Pseudo-labelling throughput: plain loop vs Ray Data pipeline", "",
             f"{n} images of {what}, {args.backbone} CAM classifier (random init), CAM maps "
             f"(scale 1, no flip), dense CRF (defaults), palette PNG written per image; batch "
             f"size {args.batch_size}; {args.rounds} round(s), variants in a rotating order "
             f"each round, medians reported. Masks identical to the 1-thread plain loop's: "
             f"{same}. Baseline: the faster plain loop ({plain_name}).", "",
             "| variant | median wall s | images/s | vs baseline | images/s once running "
             "(vs baseline) | wall s per round |", "|---|---:|---:|---:|---:|---|"]
    for name in (*PLAIN, "pipeline, 1 worker", "pipeline, 2 workers", "bare forward"):
        running = statistics.median(steady[name]) if name in steady else None
        running_text = f"{running:.2f} ({running / plain:.2f}x)" if running else "-"
        lines.append(f"| {name} | {statistics.median(times[name]):.2f} | {rate[name]:.2f} | "
                     f"{rate[name] / plain:.2f}x | {running_text} | "
                     f"{', '.join(f'{t:.1f}' for t in times[name])} |")
    lines += ["", "| ratio | value | target |", "|---|---:|---:|",
              f"| pipeline (1 worker) / {plain_name}, images/s | {one / plain:.2f}x | >= 0.9x |",
              f"| same, once running (after the first output block) | "
              f"{statistics.median(steady['pipeline, 1 worker']) / plain:.2f}x | (info) |",
              f"| map stage (1 worker: images / actor busy s = {cam_rate:.2f}) / bare forward "
              f"({forward:.2f} images/s, {one_worker_threads()} threads, as the actor) | "
              f"{cam_rate / forward:.2f}x | >= 0.8x |", ""]
    return "\n".join(lines + machine_lines(command, load)) + "\n"


def run_rounds(args: argparse.Namespace, view: Path, ckpt: Path,
               work: Path) -> tuple[dict, list[float], dict, dict[str, bool]]:
    """Every variant once per round, the order rotating; returns times, actor busy seconds
    and whether each variant's masks equal the 1-thread plain loop's."""
    cam = CamConfig(batch_size=args.batch_size)
    tracking = TrackingConfig(uri=f"sqlite:///{work / 'mlflow.db'}")
    threads = one_worker_threads()
    runs = {"bare forward": lambda out: (bare_forward(view, ckpt, cam, threads), None, None),
            "pipeline, 1 worker": lambda out: pipeline(view, ckpt, out, cam, 1, tracking),
            "pipeline, 2 workers": lambda out: pipeline(view, ckpt, out, cam, 2, tracking)}
    for name, threads in PLAIN.items():
        runs[name] = lambda out, t=threads: (plain_loop(view, ckpt, out, cam, t), None, None)
    names = list(runs)
    times: dict[str, list[float]] = {n: [] for n in names}
    busy: list[float] = []
    steady: dict[str, list[float]] = {n: [] for n in names if n.startswith("pipeline")}
    for k in range(args.rounds):
        for name in names[k % len(names):] + names[:k % len(names)]:
            seconds, cam_busy, rate = runs[name](work / f"{k}-{name.replace(' ', '_')}")
            times[name].append(seconds)
            steady.get(name, []).append(rate)
            busy += [cam_busy] if name == "pipeline, 1 worker" else []
            print(f"round {k}: {name} {seconds:.1f}s", file=sys.stderr, flush=True)
    reference = work / "0-plain_loop,_1_thread"
    identical = {n: same_masks(reference, work / f"0-{n.replace(' ', '_')}")
                 for n in names if n not in ("bare forward", "plain loop, 1 thread")}
    return times, busy, steady, identical


def main(argv: list[str] | None = None) -> None:
    from wsss.ray_utils import start_local_ray

    args = parse_args(argv)
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    load_start = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="wsss-bench-pl-"))
    try:
        view, what, ckpt = prepare(args, work)
        start_local_ray(num_cpus=len(os.sched_getaffinity(0)), include_dashboard=False,
                        log_to_driver=False)
        times, busy, steady, identical = run_rounds(args, view, ckpt, work)
        publish(render(args, what, times, busy, steady, identical, command,
                       (load_start, os.getloadavg())), args.out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
