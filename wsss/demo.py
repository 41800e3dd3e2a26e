"""`make demo`: the whole pipeline on a generated dataset with local Ray and a local MLflow store.

Runs exactly the commands a user would type (see README):
synthetic data -> Ray Train classifier -> CAM maps -> pseudo-mask mIoU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from wsss.cli import main as wsss


def run(workdir: Path, n: int, epochs: int, method: str) -> int:
    data, cams = workdir / "data/synth", workdir / "cams"
    run_name = f"demo-{method}-{time.strftime('%Y%m%d-%H%M%S')}"
    steps = [
        ["data", "synth", "--out", str(data), "--n", str(n), "--seed", "0"],
        ["train-cls", "--data", str(data), "--method", method, "--epochs", str(epochs),
         "--out", str(workdir / "runs/classifier"), "--run-name", run_name],
    ]
    start = time.perf_counter()
    for argv in steps:
        print(f"\n$ wsss {' '.join(argv)}", flush=True)
        if wsss(argv) != 0:
            return 1
    checkpoint = workdir / "runs/classifier" / run_name / "model.pt"
    for argv in (["cam", "--checkpoint", str(checkpoint), "--data", str(data), "--split", "train",
                  "--out", str(cams)],
                 ["eval", "--cams", str(cams), "--data", str(data), "--split", "train"]):
        print(f"\n$ wsss {' '.join(argv)}", flush=True)
        if wsss(argv) != 0:
            return 1
    print(f"\ndemo finished in {time.perf_counter() - start:.0f}s. MLflow runs: "
          f"`mlflow ui --backend-store-uri sqlite:///mlflow.db` in {Path.cwd()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default=".", type=Path)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--method", default="cam")
    args = parser.parse_args(argv)
    return run(args.workdir, args.n, args.epochs, args.method)


if __name__ == "__main__":
    sys.exit(main())
