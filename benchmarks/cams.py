"""Throughput of localization-map extraction: this project's CAM / Grad-CAM vs pytorch-grad-cam.

All variants run in one process on the same ResNet-50 CamClassifier, the same random images and
the same random present classes. A "map" is one (image, present class) pair. Variants are
interleaved batch by batch (rotating order) so background load affects them alike; the report
gives the median and the minimum over repeats.

Example::

    python benchmarks/cams.py --images 32 --batch-size 8 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from common import machine_lines  # benchmarks/common.py (on sys.path)
from wsss.core import maps as cams
from wsss.config import ModelConfig
from wsss.methods import get_method

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "cams.md"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32, help="images per repeat")
    parser.add_argument("--height", type=int, default=224)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--num-classes", type=int, default=21)
    parser.add_argument("--classes-per-image", default="2-3",
                        help="present classes per image: 'N' or a range 'LOW-HIGH'")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="warm-up batches per variant")
    parser.add_argument("--threads", type=_int_list, default=[2],
                        help="torch CPU threads; a comma list (e.g. 2,1) runs once per value")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke-test", action="store_true",
                        help="tiny run (2 images, 64x96, 1 repeat); writes only with --out")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"markdown results file (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    if args.smoke_test:
        args.images, args.height, args.width, args.repeats, args.batch_size = 2, 64, 96, 1, 2
    elif args.out is None:
        args.out = DEFAULT_OUT
    return args


def _int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def class_range(spec: str) -> tuple[int, int]:
    low, _, high = spec.partition("-")
    return int(low), int(high or low)


def make_data(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images [N, 3, H, W] and multi-hot labels [N, C] with 'classes-per-image' ones."""
    gen = torch.Generator().manual_seed(args.seed)
    images = torch.randn(args.images, 3, args.height, args.width, generator=gen)
    low, high = class_range(args.classes_per_image)
    labels = torch.zeros(args.images, args.num_classes)
    for row in labels:
        count = int(torch.randint(low, high + 1, (1,), generator=gen))
        row[torch.randperm(args.num_classes, generator=gen)[:count]] = 1.0
    return images, labels


def build_model(args: argparse.Namespace):
    torch.manual_seed(args.seed)
    method = get_method("cam")(num_classes=args.num_classes)
    model = method.build_model(ModelConfig(backbone=args.backbone)).eval()
    return method, model


def pytorch_grad_cam_runner(model) -> Callable[[torch.Tensor, torch.Tensor], object]:
    """pytorch-grad-cam used per class slot: one target class per image, a batch of images."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    explainer = GradCAM(model=model, target_layers=[model.backbone.layer4])

    def run(images: torch.Tensor, labels: torch.Tensor) -> list:
        present = [row.nonzero().flatten().tolist() for row in labels]
        outputs = []
        for slot in range(max(len(p) for p in present)):
            rows = [i for i, p in enumerate(present) if len(p) > slot]
            targets = [ClassifierOutputTarget(present[i][slot]) for i in rows]
            outputs.append(explainer(input_tensor=images[rows], targets=targets))
        return outputs

    return run


def variants(method, model) -> dict[str, Callable[[torch.Tensor, torch.Tensor], object]]:
    """Name -> fn(images [B, 3, H, W], labels [B, C]) producing that variant's output."""

    def forward(images, labels):
        with torch.no_grad():
            return model(images)

    return {
        "plain forward (logits, reference)": forward,
        "ours: cam_maps (raw, feature res.)": lambda x, y: cams.cam_maps(method, model, x),
        "ours: localization_maps kind=cam": lambda x, y: cams.localization_maps(
            method, model, x, y, kind="cam"),
        "ours: gradcam_maps layer4 (raw)": lambda x, y: cams.gradcam_maps(model, x, y, "layer4"),
        "ours: localization_maps kind=gradcam": lambda x, y: cams.localization_maps(
            method, model, x, y, kind="gradcam", layer="layer4"),
        "pytorch-grad-cam GradCAM layer4": pytorch_grad_cam_runner(model),
    }


def time_batches(runners: dict[str, Callable], images: torch.Tensor, labels: torch.Tensor,
                 batch_size: int, rotate: int) -> dict[str, tuple[float, float]]:
    """(wall, process CPU) seconds each variant spends on every image, batch by batch.

    Interleaving at batch granularity (order rotated by ``rotate`` and by batch) exposes all
    variants to the same background load on a shared machine. CPU time does not count time the
    process waits for a core, so it is less sensitive to other load (it does count spin-waits).
    """
    names = list(runners)
    wall, cpu = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0)
    for index, first in enumerate(range(0, len(images), batch_size)):
        batch, batch_labels = images[first:first + batch_size], labels[first:first + batch_size]
        shift = (rotate + index) % len(names)
        for name in names[shift:] + names[:shift]:
            start, start_cpu = time.perf_counter(), time.process_time()
            runners[name](batch, batch_labels)
            wall[name] += time.perf_counter() - start
            cpu[name] += time.process_time() - start_cpu
    return {name: (wall[name], cpu[name]) for name in names}


def run_benchmark(args: argparse.Namespace, threads: int) -> dict[str, list[tuple[float, float]]]:
    """Variant name -> (wall, CPU) seconds for the whole image set, one entry per repeat."""
    torch.set_num_threads(threads)
    images, labels = make_data(args)
    method, model = build_model(args)
    runners = variants(method, model)
    for _ in range(args.warmup):
        time_batches(runners, images[:args.batch_size], labels[:args.batch_size],
                     args.batch_size, rotate=0)
    print(f"warmed up ({threads} threads)", file=sys.stderr, flush=True)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runners}
    for repeat in range(args.repeats):
        totals = time_batches(runners, images, labels, args.batch_size, rotate=repeat)
        for name, seconds in totals.items():
            times[name].append(seconds)
        print(f"repeat {repeat}: " + ", ".join(f"{k}: {w:.2f}s (cpu {c:.2f}s)"
                                               for k, (w, c) in totals.items()),
              file=sys.stderr, flush=True)
    return times


def _ratio_rows(median: dict[str, float], best: dict[str, float],
                cpu: dict[str, float]) -> list[str]:
    """Target ratios, from median and minimum wall times and from median CPU times."""
    ref, fwd = "pytorch-grad-cam GradCAM layer4", "plain forward (logits, reference)"
    rows = [  # (label, numerator, denominator, target)
        ("Grad-CAM speed-up: pytorch-grad-cam time / ours localization_maps kind=gradcam "
         "(both give input-resolution normalised maps)", ref,
         "ours: localization_maps kind=gradcam", ">= 3x"),
        ("Grad-CAM speed-up: pytorch-grad-cam time / ours raw gradcam_maps", ref,
         "ours: gradcam_maps layer4 (raw)", "(info)"),
        ("CAM time / plain forward time, raw cam_maps", "ours: cam_maps (raw, feature res.)",
         fwd, "<= 1.2x"),
        ("CAM time / plain forward time, localization_maps kind=cam",
         "ours: localization_maps kind=cam", fwd, "<= 1.2x"),
    ]
    lines = ["| ratio | median wall | min wall | median CPU | target |",
             "|---|---:|---:|---:|---:|"]
    for label, num, den, target in rows:
        lines.append(f"| {label} | {median[num] / median[den]:.2f}x | "
                     f"{best[num] / best[den]:.2f}x | {cpu[num] / cpu[den]:.2f}x | {target} |")
    return lines


def render_section(threads: int, times: dict[str, list[tuple[float, float]]],
                   pairs: int) -> list[str]:
    """Markdown lines for one thread count: absolute numbers and target ratios."""
    median = {name: statistics.median(w for w, _ in runs) for name, runs in times.items()}
    best = {name: min(w for w, _ in runs) for name, runs in times.items()}
    cpu = {name: statistics.median(c for _, c in runs) for name, runs in times.items()}
    forward = median["plain forward (logits, reference)"]
    lines = [
        f"## torch.set_num_threads({threads})", "",
        "| variant | median wall s | min wall s | maps/s (median) | maps/s (min) | median CPU s "
        "| median / plain forward | wall s per repeat |", "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, seconds in median.items():
        runs = ", ".join(f"{w:.2f}" for w, _ in times[name])
        lines.append(f"| {name} | {seconds:.2f} | {best[name]:.2f} | {pairs / seconds:.2f} | "
                     f"{pairs / best[name]:.2f} | {cpu[name]:.2f} | {seconds / forward:.2f}x | "
                     f"{runs} |")
    return lines + ["", *_ratio_rows(median, best, cpu), ""]


def render(args: argparse.Namespace, results: dict[int, dict[str, list[tuple[float, float]]]],
           pairs: int, command: str, load: tuple[tuple[float, ...], tuple[float, ...]]) -> str:
    """Markdown report: per thread count tables and ratios, then command and machine."""
    lines = [
        "# Localization-map throughput (CPU)", "",
        f"{args.images} images {args.height}x{args.width}, {args.backbone} CamClassifier "
        f"({args.num_classes} classes, random init), {args.classes_per_image} present classes "
        f"per image = **{pairs} maps** (image, class pairs), batch size {args.batch_size}, "
        f"{args.repeats} repeat(s) after {args.warmup} warm-up round(s); variants interleaved "
        "batch by batch.", "",
    ]
    for threads, times in results.items():
        lines += render_section(threads, times, pairs)
    lines += machine_lines(command, load)
    if max(load[0][0], load[1][0]) > 0.5:
        lines += ["", "Other processes were using the CPU during this run (see the load average): "
                  "wall-clock times are noisy; the CPU-second columns are less sensitive to it."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    load_start = os.getloadavg()
    results = {threads: run_benchmark(args, threads) for threads in args.threads}
    pairs = int(make_data(args)[1].sum())
    report = render(args, results, pairs, command, (load_start, os.getloadavg()))
    print(report)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
