"""Pseudo-labelling throughput: a plain single-process loop vs the Ray Data pipeline.

All variants run in one process on the same images and the same (random-init) classifier and
write the same masks (checked): the plain loop calls the pipeline's own stage functions one
after the other (decode -> maps -> CRF + PNG write); the pipeline runs with 1 and 2 CPU map
workers on a local Ray with every CPU of the machine. A bare forward pass of the backbone
(logits only, same images, batch size and torch threads as one map worker) gives the floor
for the map stage.

Each pipeline run is preceded by an untimed warm-up run on a few other images, so Ray's
worker processes exist; the timed wall clock still includes building the dataset and
starting the map actors (a model load each).

Example::

    python benchmarks/pseudo_label.py --images 96 --backbone resnet50
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from crf import DEFAULT_DATA, machine_lines, publish  # benchmarks/crf.py
from wsss.config import CamConfig, ExperimentConfig, RefineConfig, TrackingConfig
from wsss.pseudo_label import PipelineOptions, read_rows, run_pseudo_label
from wsss.pseudo_label_tasks import CamExtractor, Job, decode_batch, refine_and_write
from wsss.storage import Location

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "pseudo_label.md"
WARMUP_IMAGES = 4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="VOC-layout dataset (default: MSRC-21 when present, else synthetic)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--smoke-test", action="store_true",
                        help="tiny run (synthetic, 8 images, resnet18); writes only with --out")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"markdown results file (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    if args.smoke_test:
        args.data, args.images, args.backbone = Path("/nonexistent"), 8, "resnet18"
    elif args.out is None:
        args.out = DEFAULT_OUT
    return args


def prepare(args: argparse.Namespace, work: Path) -> tuple[Path, str, Path]:
    """(dataset root, description, checkpoint): ``images`` + warm-up ids in a split file."""
    from wsss.data.synthetic import generate_dataset
    from wsss.data.voc import read_info, read_split
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


def plain_loop(view: Path, ckpt: Path, out: Path, cam: CamConfig) -> float:
    """Seconds of decode -> maps -> CRF -> PNG for every image, one process, no Ray."""
    from wsss.train.checkpoint import load_checkpoint_state

    state = load_checkpoint_state(ckpt)
    start = time.perf_counter()
    info, labels, rows = read_rows(Location.parse(view), "bench")
    job = Job(Location.parse(view), Location.parse(out), info, state["method"],
              state["method_params"], cam, RefineConfig(), labels)
    extractor = CamExtractor(state, job)  # torch keeps its default threads (every core)
    for first in range(0, len(rows), cam.batch_size):
        chunk = rows[first:first + cam.batch_size]
        batch = {key: np.asarray([r[key] for r in chunk]) for key in chunk[0]}
        done = refine_and_write(extractor(decode_batch(batch, job)), job)
        assert (done["status"] == "done").all(), done["reason"]
    return time.perf_counter() - start


def pipeline(view: Path, ckpt: Path, out: Path, cam: CamConfig, workers: int,
             tracking: TrackingConfig) -> tuple[float, float]:
    """(wall seconds, map-actor busy seconds) of the Ray Data pipeline with ``workers``."""
    options = PipelineOptions(cam_workers=workers)
    run_pseudo_label(ckpt, view, "warmup", out.with_name(out.name + "-warmup"), cam,
                     RefineConfig(), tracking, options)
    report = run_pseudo_label(ckpt, view, "bench", out, cam, RefineConfig(), tracking, options)
    assert report.failed == [], report.failed
    return report.seconds, report.extra["cam_seconds"]


def bare_forward(view: Path, ckpt: Path, cam: CamConfig, threads: int) -> float:
    """Seconds of logits-only forward passes over the images (decoded beforehand)."""
    from wsss.data.transforms import normalize
    from wsss.data.voc import VOCDataset
    from wsss.train.checkpoint import load_classifier

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    _, model, _ = load_classifier(ckpt)
    dataset = VOCDataset(view, "bench")
    images = [torch.from_numpy(dataset.load_image(i)).permute(2, 0, 1) for i in dataset.ids]
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


def render(args: argparse.Namespace, what: str, times: dict[str, float], busy: float,
           identical: bool, command: str, load: tuple) -> str:
    n = args.images
    rate = {k: n / v for k, v in times.items()}
    plain, one, forward = rate["plain loop"], rate["pipeline, 1 worker"], rate["bare forward"]
    cam_rate = n / busy
    lines = ["# Pseudo-labelling throughput: plain loop vs Ray Data pipeline", "",
             f"{n} images of {what}, {args.backbone} CAM classifier (random init), CAM maps "
             f"(scale 1, no flip), dense CRF (defaults), palette PNG written per image; batch "
             f"size {args.batch_size}. Masks of every variant identical: **{identical}**.", "",
             "| variant | wall s | images/s | vs plain loop |", "|---|---:|---:|---:|"]
    for name in ("plain loop", "pipeline, 1 worker", "pipeline, 2 workers"):
        lines.append(f"| {name} | {times[name]:.2f} | {rate[name]:.2f} | "
                     f"{rate[name] / plain:.2f}x |")
    lines += ["", "| ratio | value | target |", "|---|---:|---:|",
              f"| pipeline (1 worker) / plain loop, images/s | {one / plain:.2f}x | >= 0.9x |",
              f"| map stage (1 worker: images / actor busy s = {cam_rate:.2f}) / bare forward "
              f"({forward:.2f} images/s, 1 thread) | {cam_rate / forward:.2f}x | >= 0.8x |", ""]
    return "\n".join(lines + machine_lines(command, load)) + "\n"


def main(argv: list[str] | None = None) -> None:
    import ray

    args = parse_args(argv)
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    load_start = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="wsss-bench-pl-"))
    try:
        view, what, ckpt = prepare(args, work)
        cam = CamConfig(batch_size=args.batch_size)
        tracking = TrackingConfig(uri=f"sqlite:///{work / 'mlflow.db'}")
        times = {"bare forward": bare_forward(view, ckpt, cam, threads=1),
                 "plain loop": plain_loop(view, ckpt, work / "plain", cam)}
        ray.init(num_cpus=len(os.sched_getaffinity(0)), include_dashboard=False,
                 log_to_driver=False)
        times["pipeline, 1 worker"], busy = pipeline(view, ckpt, work / "one", cam, 1, tracking)
        times["pipeline, 2 workers"], _ = pipeline(view, ckpt, work / "two", cam, 2, tracking)
        identical = same_masks(work / "plain", work / "one") and same_masks(work / "plain",
                                                                            work / "two")
        publish(render(args, what, times, busy, identical, command,
                       (load_start, os.getloadavg())), args.out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
