"""Dense CRF over the present classes only vs over all classes (absent ones scored 0); and the
cost of containing pydensecrf in a warm child process (``wsss.core.native_crf``) vs calling it in
this process.

Both variants refine the same CAM-like maps of the same images in one process: labels are
compared pixel by pixel and the two are timed image by image in alternating order, so
background load affects them alike. The containment comparison times the very same CRF input
(present classes) both ways, also alternating, and checks that the results are identical. The maps imitate upsampled class activation maps: the
one-hot ground truth of the present classes, average-pooled by 16 and bilinearly upsampled.
Images are MSRC-21 photographs (about 320x213, 2-3 of 21 classes present) when the dataset is
found, else synthetic images of that size.

Example::

    python benchmarks/crf.py --images 24 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common import DEFAULT_DATA, machine_lines, publish  # benchmarks/common.py (on sys.path)
from wsss.config import RefineConfig
from wsss.core.native_crf import CRF_WORKER, mean_field
from wsss.core.masks import crf_job, normalise_scores

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "crf.md"
Case = tuple[np.ndarray, np.ndarray, np.ndarray]  # image [H,W,3], maps [K,H,W], ids [K]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="VOC-layout dataset (default: MSRC-21 when present)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--num-classes", type=int, default=21, help="for synthetic images")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke-test", action="store_true",
                        help="2 images, 1 repeat; writes only with --out")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"markdown results file (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    if args.smoke_test:
        args.images, args.repeats = 2, 1
    elif args.out is None:
        args.out = DEFAULT_OUT
    return args


def cam_like(labels: np.ndarray, ids: np.ndarray, stride: int = 16) -> np.ndarray:
    """Blurred maps float32 [K, H, W] in [0, 1] of classes ``ids`` in labels [H, W]."""
    one_hot = torch.from_numpy(labels[None] == ids[:, None, None]).float()[None]
    height, width = labels.shape
    small = F.adaptive_avg_pool2d(one_hot, (max(1, height // stride), max(1, width // stride)))
    maps = F.interpolate(small, size=(height, width), mode="bilinear", align_corners=False)[0]
    return (maps / maps.amax(dim=(1, 2), keepdim=True).clamp_min(1e-5)).numpy()


def dataset_cases(args: argparse.Namespace) -> tuple[list[Case], int, str]:
    """Cases from the dataset's images with 2-3 classes; (cases, class count, description)."""
    from wsss.data.dataset import VOCDataset

    dataset = VOCDataset(args.data, args.split)
    cases: list[Case] = []
    for sample_id in dataset.ids:
        sample = dataset.sample(sample_id)
        image, mask = sample.image, sample.gt
        ids = np.array([c for c in np.unique(mask) if c != 255]) if mask is not None else []
        if 2 <= len(ids) <= 3:
            cases.append((image, cam_like(mask, ids), ids))
        if len(cases) == args.images:
            break
    return cases, dataset.info.num_classes, f"{args.data.name} `{args.split}` images"


def synthetic_cases(args: argparse.Namespace) -> tuple[list[Case], int, str]:
    """Synthetic 320x320 renders cropped to 213 rows, their classes spread over 21 ids."""
    from wsss.data.synthetic import render_sample

    rng = np.random.default_rng(args.seed)
    cases: list[Case] = []
    index = 0
    while len(cases) < args.images:
        sample = render_sample(args.seed, index, image_size=320)
        index += 1
        mask = sample.mask[:213]
        present = np.array([c for c in np.unique(mask) if c != 255])
        if not 2 <= len(present) <= 3:
            continue
        ids = np.sort(rng.choice(args.num_classes, len(present), replace=False))
        relabelled = np.full(mask.shape, 255)
        for old, new in zip(present, ids):
            relabelled[mask == old] = new
        cases.append((sample.image[:213], cam_like(relabelled, ids), ids))
    return cases, args.num_classes, "synthetic images 320x213"


def solve(image: np.ndarray, probs: np.ndarray, cfg: RefineConfig) -> np.ndarray:
    """``wsss.core.masks.dense_crf`` computed in this process (so its CPU time is counted here):
    distributions [K, H * W]."""
    return mean_field(crf_job(image, probs, cfg))


def refine_present(image: np.ndarray, maps: np.ndarray, ids: np.ndarray, num_classes: int,
                   cfg: RefineConfig) -> np.ndarray:
    """Labels [H, W] of the CRF over the K present classes only."""
    return ids[solve(image, normalise_scores(maps), cfg).argmax(axis=0)].reshape(maps.shape[1:])


def refine_all(image: np.ndarray, maps: np.ndarray, ids: np.ndarray, num_classes: int,
               cfg: RefineConfig) -> np.ndarray:
    """Labels [H, W] of the CRF over all classes: the same probabilities, absent classes 0."""
    full = np.zeros((num_classes,) + maps.shape[1:], dtype=np.float32)
    full[ids] = normalise_scores(maps)
    return solve(image, full, cfg).argmax(axis=0).reshape(maps.shape[1:])


VARIANTS = {"present classes only": refine_present, "all classes": refine_all}


def run(cases: list[Case], num_classes: int, repeats: int) -> tuple[dict, dict, tuple]:
    """Per variant: total wall and CPU seconds per repeat; plus label agreement counts."""
    cfg = RefineConfig()
    wall = {name: [] for name in VARIANTS}
    cpu = {name: [] for name in VARIANTS}
    same_pixels = same_images = total = 0
    for refine in VARIANTS.values():  # warm-up: imports, first allocations
        refine(*cases[0], num_classes, cfg)
    for repeat in range(repeats):
        spent = {name: [0.0, 0.0] for name in VARIANTS}
        for index, (image, maps, ids) in enumerate(cases):
            names = list(VARIANTS)[::1 if (index + repeat) % 2 == 0 else -1]
            labels = {}
            for name in names:
                start, start_cpu = time.perf_counter(), time.process_time()
                labels[name] = VARIANTS[name](image, maps, ids, num_classes, cfg)
                spent[name][0] += time.perf_counter() - start
                spent[name][1] += time.process_time() - start_cpu
            if repeat == 0:
                equal = labels["present classes only"] == labels["all classes"]
                same_pixels, total = same_pixels + int(equal.sum()), total + equal.size
                same_images += int(equal.all())
        for name, (w, c) in spent.items():
            wall[name].append(w)
            cpu[name].append(c)
        print(f"repeat {repeat}: " + ", ".join(f"{k} {w:.2f}s" for k, (w, _) in spent.items()),
              file=sys.stderr, flush=True)
    return wall, cpu, (same_pixels, total, same_images)


def run_containment(cases: list[Case], repeats: int) -> tuple[dict, dict, bool]:
    """Wall and CPU seconds per repeat of the CRF in this process and in the child process
    (same inputs, order alternating per image); whether the results are identical.

    The contained CPU time is this process's (pickling, socket) plus the child's (psutil).
    """
    import psutil

    jobs = [crf_job(image, normalise_scores(maps), RefineConfig()) for image, maps, _ in cases]
    CRF_WORKER.call(mean_field, jobs[0])  # warm-up: starts the child
    child = psutil.Process(CRF_WORKER.pid)

    def cpu() -> float:
        times = child.cpu_times()
        return time.process_time() + times.user + times.system

    modes = {"in-process call": lambda job: mean_field(job),
             "contained (child process)": lambda job: CRF_WORKER.call(mean_field, job)}
    wall: dict[str, list[float]] = {name: [] for name in modes}
    cpus: dict[str, list[float]] = {name: [] for name in modes}
    identical = True
    for repeat in range(repeats):
        spent = {name: [0.0, 0.0] for name in modes}
        for index, job in enumerate(jobs):
            results = []
            for name in list(modes)[::1 if (index + repeat) % 2 == 0 else -1]:
                start, start_cpu = time.perf_counter(), cpu()
                results.append(modes[name](job))
                spent[name][0] += time.perf_counter() - start
                spent[name][1] += cpu() - start_cpu
            identical &= bool(np.array_equal(*results))
        for name, (seconds, cpu_seconds) in spent.items():
            wall[name].append(seconds)
            cpus[name].append(cpu_seconds)
        print(f"containment repeat {repeat}: " + ", ".join(
            f"{k} {w:.2f}s wall {c:.2f}s CPU" for k, (w, c) in spent.items()),
            file=sys.stderr, flush=True)
    return wall, cpus, identical


def containment_lines(cases: list[Case], results: tuple[dict, dict, bool]) -> list[str]:
    """Markdown section: seconds per image both ways (wall and CPU) and their ratios."""
    wall, cpus, identical = results
    inside, contained = "in-process call", "contained (child process)"
    med = {k: statistics.median(v) / len(cases) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) / len(cases) for k, v in cpus.items()}
    lines = ["## Contained CRF vs in-process call", "",
             f"The same {len(cases)} CRF inputs (present classes) solved by pydensecrf in this "
             "process and in the warm child process `wsss.core.native_crf.CRF_WORKER` (input and "
             "output pickled over a socket), alternating per image; "
             f"{len(next(iter(wall.values())))} repeat(s). CPU: this process plus the child.",
             "", "| mode | wall s / image (median) | min wall s / image | CPU s / image "
             "(median) |", "|---|---:|---:|---:|"]
    for name in (inside, contained):
        lines.append(f"| {name} | {med[name]:.4f} | {min(wall[name]) / len(cases):.4f} | "
                     f"{med_cpu[name]:.4f} |")
    return lines + ["", f"- contained / in-process: **{med[contained] / med[inside]:.3f}x** "
                    f"wall (median), {min(wall[contained]) / min(wall[inside]):.3f}x wall "
                    f"(fastest repeats), **{med_cpu[contained] / med_cpu[inside]:.3f}x CPU**",
                    f"- results identical: {identical}", ""]


def render(description: str, cases: list[Case], num_classes: int, results: tuple,
           containment: tuple, command: str, load: tuple) -> str:
    wall, cpu, (same_pixels, total, same_images) = results
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    present = np.mean([len(ids) for _, _, ids in cases])
    cfg = RefineConfig()
    lines = [
        "# Dense CRF: present classes only vs all classes", "",
        f"{len(cases)} {description} ({cases[0][0].shape[1]}x{cases[0][0].shape[0]} first), "
        f"{num_classes} classes, {present:.1f} present per image on average; CAM-like maps "
        f"(ground truth average-pooled by 16, bilinearly upsampled). CRF: gaussian "
        f"{cfg.crf_gaussian_sxy:g}/{cfg.crf_gaussian_compat:g}, bilateral "
        f"{cfg.crf_bilateral_sxy:g}/{cfg.crf_bilateral_srgb:g}/{cfg.crf_bilateral_compat:g}, "
        f"{cfg.crf_iterations} iterations; {len(next(iter(wall.values())))} repeat(s).", "",
        "| variant | median wall s | min wall s | median CPU s | ms / image (median) |",
        "|---|---:|---:|---:|---:|"]
    for name in VARIANTS:
        lines.append(f"| {name} | {med[name]:.2f} | {min(wall[name]):.2f} | "
                     f"{med_cpu[name]:.2f} | {1000 * med[name] / len(cases):.1f} |")
    ratio = med["all classes"] / med["present classes only"]
    ratio_cpu = med_cpu["all classes"] / med_cpu["present classes only"]
    lines += ["", f"- identical labels: **{same_pixels} / {total} pixels "
              f"({100.0 * same_pixels / total:.4f} %)**, {same_images} / {len(cases)} images "
              "fully identical",
              f"- speed-up of present-only over all classes: **{ratio:.2f}x** wall (median), "
              f"{ratio_cpu:.2f}x CPU", ""]
    lines += containment_lines(cases, containment)
    return "\n".join(lines + machine_lines(command, load)) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    load_start = os.getloadavg()
    has_data = (args.data / "ImageSets").is_dir()
    cases, num_classes, description = dataset_cases(args) if has_data else synthetic_cases(args)
    results = run(cases, num_classes, args.repeats)
    containment = run_containment(cases, args.repeats)
    publish(render(description, cases, num_classes, results, containment, command,
                   (load_start, os.getloadavg())), args.out)


if __name__ == "__main__":
    main()
