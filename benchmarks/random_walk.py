"""Speed of the affinity random walk (AffinityNet Sec. 3.4) beside the networks' forward passes.

One process, seeded random images, random-init networks (speed does not depend on the weights):

- ``propagate`` one image at a time: maps [K, H, W] -> cells -> ``random_walk`` -> image size
  -> per-class max normalisation (the features and affinities are computed beforehand);
- ``random_walk`` alone on the cell maps, one image at a time and batched over the images;
- ``pixel_affinities`` (features -> affinities of the radius's offsets);
- the AffinityNet forward (images -> stride-8 features) and a CamClassifier forward (logits),
  both ResNet-18, in batches.

Variants are interleaved (rotating order per repeat) so that background load hits them alike;
the report gives the median and the minimum over repeats.

Example::

    python benchmarks/random_walk.py --images 32 --repeats 3
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
import torch.nn.functional as F

from common import machine_lines, publish  # noqa: E402  (benchmarks/common.py)
from wsss.core.affinity import pair_offsets, pixel_affinities, propagate, random_walk
from wsss.models import CamClassifier, build_backbone
from wsss.models.affinity import STRIDE, build_affinity_net

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "random_walk.md"
PROPAGATE = "propagate, one image at a time"
AFFINITY_FORWARD = "AffinityNet forward (images -> features)"
CLASSIFIER_FORWARD = "CamClassifier forward (images -> logits)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32, help="images per repeat")
    parser.add_argument("--height", type=int, default=213)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--classes", type=int, default=3, help="present classes per image (K)")
    parser.add_argument("--radius", type=int, default=5)
    parser.add_argument("--beta", type=float, default=8.0)
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--reference-iterations", type=int, default=256,
                        help="also time propagate with this t (psa / IRNet reach T^256); 0: skip")
    parser.add_argument("--batch-size", type=int, default=8, help="batch of the forward passes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--backbone", default="resnet18")
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


def make_inputs(args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """Images [N, 3, H, W]; CAM-like maps [N, K, H, W] in [0, 1] (smooth random blobs)."""
    gen = torch.Generator().manual_seed(args.seed)
    images = torch.randn(args.images, 3, args.height, args.width, generator=gen)
    coarse = torch.rand(args.images, args.classes, 4, 6, generator=gen) ** 3
    maps = F.interpolate(coarse, size=(args.height, args.width), mode="bilinear",
                         align_corners=False)
    maps = maps / maps.amax(dim=(2, 3), keepdim=True)
    return {"images": images, "maps": maps}


def variants(args: argparse.Namespace, data: dict[str, torch.Tensor]) -> dict[str, Callable]:
    """Name -> a callable running that variant over all the images."""
    torch.manual_seed(args.seed)
    affinity_net = build_affinity_net(args.backbone).eval()
    classifier = CamClassifier(build_backbone(args.backbone), num_classes=21).eval()
    offsets = pair_offsets(args.radius)
    images, maps = data["images"], data["maps"]
    with torch.no_grad():
        features = torch.cat([affinity_net(batch) for batch in images.split(args.batch_size)])
        affinities = pixel_affinities(features, offsets)
    cells = F.avg_pool2d(maps, STRIDE, ceil_mode=True)
    walk = (args.beta, args.iterations)

    def forward(model):
        def run():
            with torch.no_grad():
                for batch in images.split(args.batch_size):
                    model(batch)
        return run

    reference = {} if not args.reference_iterations else {
        f"propagate, t = {args.reference_iterations} (info)": lambda: [
            propagate(m, a, offsets, args.beta, args.reference_iterations)
            for m, a in zip(maps, affinities)]}
    return {
        PROPAGATE: lambda: [propagate(m, a, offsets, *walk) for m, a in zip(maps, affinities)],
        **reference,
        "random_walk on cells, one image at a time": lambda: [
            random_walk(c[None], a[None], offsets, *walk) for c, a in zip(cells, affinities)],
        "random_walk on cells, batched over the images": lambda: random_walk(
            cells, affinities, offsets, *walk),
        "pixel_affinities (features -> affinities)": lambda: [
            pixel_affinities(f, offsets) for f in features.split(args.batch_size)],
        AFFINITY_FORWARD: forward(affinity_net),
        CLASSIFIER_FORWARD: forward(classifier),
    }


def run_benchmark(args: argparse.Namespace) -> dict[str, list[tuple[float, float]]]:
    """Variant -> (wall, CPU) seconds over all the images, one entry per repeat."""
    torch.set_num_threads(args.threads)
    runners = variants(args, make_inputs(args))
    for run in runners.values():  # warm-up
        run()
    names = list(runners)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for repeat in range(args.repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            start, start_cpu = time.perf_counter(), time.process_time()
            runners[name]()
            times[name].append((time.perf_counter() - start, time.process_time() - start_cpu))
        print(f"repeat {repeat}: " + ", ".join(f"{k}: {v[-1][0]:.2f}s" for k, v in times.items()),
              file=sys.stderr, flush=True)
    return times


def render(args: argparse.Namespace, times: dict[str, list[tuple[float, float]]],
           command: str, load: tuple) -> str:
    """Markdown report: a table per variant, the ratios and the target, command and machine."""
    median = {name: statistics.median(w for w, _ in runs) for name, runs in times.items()}
    best = {name: min(w for w, _ in runs) for name, runs in times.items()}
    cpu = {name: statistics.median(c for _, c in runs) for name, runs in times.items()}
    rate = {name: args.images / seconds for name, seconds in median.items()}
    cells = f"{-(-args.height // STRIDE)}x{-(-args.width // STRIDE)}"
    lines = [
        "# Affinity random walk: propagation speed (CPU)", "",
        f"{args.images} images {args.width}x{args.height} (W x H; {cells} cells at stride "
        f"{STRIDE}), K = {args.classes} present classes, radius {args.radius} "
        f"({len(pair_offsets(args.radius))} half-plane offsets), beta {args.beta:g}, "
        f"t = {args.iterations} iterations; {args.backbone} networks with random init, "
        f"forward batch {args.batch_size}; torch threads {args.threads}; {args.repeats} "
        "repeat(s) after one warm-up, variants interleaved.", "",
        "| variant | median wall s | min wall s | median CPU s | images/s (median wall) "
        "| images/s (min wall) | images/s (median CPU) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name in times:
        lines.append(f"| {name} | {median[name]:.3f} | {best[name]:.3f} | {cpu[name]:.3f} | "
                     f"{rate[name]:.1f} | {args.images / best[name]:.1f} | "
                     f"{args.images / cpu[name]:.1f} |")
    fastest_walk = max(rate[PROPAGATE], rate["random_walk on cells, batched over the images"])
    lines += [
        "", "| ratio (images/s of the first / of the second) | median wall | min wall "
        "| median CPU |", "|---|---:|---:|---:|",
        *(f"| {PROPAGATE} / {other} | {median[other] / median[PROPAGATE]:.2f}x | "
          f"{best[other] / best[PROPAGATE]:.2f}x | {cpu[other] / cpu[PROPAGATE]:.2f}x |"
          for other in (AFFINITY_FORWARD, CLASSIFIER_FORWARD)), "",
        f"Target: propagation >= 20 images/s; measured {rate[PROPAGATE]:.1f} images/s "
        f"(median wall; {args.images / cpu[PROPAGATE]:.1f} by CPU time) with `propagate` one "
        f"image at a time (best walk variant {fastest_walk:.1f} images/s): "
        f"**{'met' if rate[PROPAGATE] >= 20 else 'missed'}**.", ""]
    if max(load[0][0], load[1][0]) > 0.5:
        lines += ["Other processes were using the CPU during this run (see the load average): "
                  "wall-clock times are noisy; the CPU-second column is less sensitive to it.", ""]
    return "\n".join(lines + machine_lines(command, load)) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    load_start = os.getloadavg()
    times = run_benchmark(args)
    publish(render(args, times, command, (load_start, os.getloadavg())), args.out)


if __name__ == "__main__":
    main()
