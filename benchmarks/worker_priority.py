"""Ray worker priority beside busy programs: Ray's default niceness (15) vs wsss's (0).

A fixed piece of training work (ResNet-18 forward + backward steps on one thread) runs as a Ray
task of a local instance started by ``wsss.ray_utils.start_local_ray``, once with
``RAY_worker_niceness=15`` (Ray's default) and once with the project's 0, while ``--hogs``
busy processes of normal priority share the CPUs, alternating over ``--repeats`` rounds. It
reports the task's wall time and CPU time per variant and their ratio in one run.

    python benchmarks/worker_priority.py --out benchmarks/results/worker_priority.md
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

from common import machine_lines, publish  # noqa: E402  (benchmarks/common.py)

NICENESS = {"Ray's default": "15", "wsss (normal priority)": "0"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hogs", type=int, default=4, help="busy processes beside the task")
    p.add_argument("--steps", type=int, default=3, help="training steps of the task")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=None, help="markdown results file")
    return p.parse_args(argv)


def _busy() -> None:
    while True:
        pass


def _work(steps: int) -> tuple[float, float, int]:
    """``steps`` ResNet-18 training steps (batch 8, 64 px, one thread); returns (wall s, CPU s
    of this process, its niceness)."""
    import torch
    import torchvision

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    images, labels = torch.randn(8, 3, 64, 64), torch.arange(8) % 10
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start, time.process_time() - cpu, os.nice(0)


def measure(niceness: str, steps: int) -> tuple[float, float, int]:
    """One task on a fresh local Ray whose workers start at ``niceness``."""
    import ray

    from wsss.ray_utils import WORKER_NICENESS_ENV, start_local_ray

    os.environ[WORKER_NICENESS_ENV] = niceness
    start_local_ray(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        return ray.get(ray.remote(num_cpus=1)(_work).remote(steps))
    finally:
        ray.shutdown()


def render(results: dict[str, list[tuple[float, float, int]]], args: argparse.Namespace,
           command: str, load: tuple) -> str:
    wall = {k: statistics.median(r[0] for r in v) for k, v in results.items()}
    cpu = {k: statistics.median(r[1] for r in v) for k, v in results.items()}
    default, ours = NICENESS
    lines = ["# Ray worker priority beside busy programs", "",
             f"One Ray task ({args.steps} ResNet-18 training steps, batch 8, 64 px, one thread) "
             f"on a local Ray from `wsss.ray_utils.start_local_ray`, beside {args.hogs} busy "
             f"processes of normal priority; the two worker niceness settings alternate, "
             f"{args.repeats} round(s).", "",
             "| workers | niceness seen by the task | median wall s | median CPU s |",
             "|---|---:|---:|---:|"]
    for name, runs in results.items():
        lines.append(f"| {name} | {runs[0][2]} | {wall[name]:.2f} | {cpu[name]:.2f} |")
    lines += ["", f"- wall time at Ray's default / at normal priority: "
              f"**{wall[default] / wall[ours]:.1f}x** (the same work: CPU "
              f"{cpu[default]:.2f} s vs {cpu[ours]:.2f} s)", ""]
    return "\n".join(lines + machine_lines(command, load)) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    load_start = os.getloadavg()
    hogs = [multiprocessing.Process(target=_busy, daemon=True) for _ in range(args.hogs)]
    for hog in hogs:
        hog.start()
    results: dict[str, list] = {name: [] for name in NICENESS}
    try:
        for _ in range(args.repeats):
            for name, niceness in NICENESS.items():
                results[name].append(measure(niceness, args.steps))
    finally:
        for hog in hogs:
            hog.terminate()
    publish(render(results, args, command, (load_start, os.getloadavg())), args.out)


if __name__ == "__main__":
    main()
