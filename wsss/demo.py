"""`make demo`: the platform's main job on a generated dataset, with local Ray and local MLflow.

Runs exactly the commands a user would type (see README): a synthetic dataset, then the
adversarial-erasing sweep (`sweeps/erasing.py`: Ray Tune + Optuna, every trial a Ray Train
run recorded in MLflow), then `wsss compare` on the sweep's trials.

The sweep's pseudo-masks score background at a constant map threshold of
:data:`BG_THRESHOLD` instead of the default 0.25: an erasing model's map is the union (maximum)
of its rounds' maps, which covers more of the picture with every round, and at 0.25 the masks
of a 3-round trial lost their background on 41 % of the images (measured on the demo's data,
seed 0; 12 % at 0.4, with a higher mIoU).

The demo's trials are a fixed set: Optuna's random sampler (seeded) draws them, and every trial
runs to its end (``--search random --scheduler fifo``). With TPE and ASHA, which trials run and
which are stopped depends on the order in which concurrent trials report (two runs of the same
demo ended 0.06 mIoU apart); full sweeps keep TPE and ASHA (the sweep scripts' defaults).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from wsss.cli import main as wsss
from wsss.commands import command_line, python_line

SWEEP_SCRIPT = Path(__file__).resolve().parents[1] / "sweeps" / "erasing.py"
EXPERIMENT = "demo-erasing"
BG_THRESHOLD = 0.4  # refine.bg_threshold of the sweep (see the module docstring)


def commands(workdir: Path, n: int, image_size: int, epochs: int, trials: int,
             concurrent: int, eval_images: int, seed: int = 0) -> list[list[str]]:
    """The demo's three commands, as argv lists: ``wsss data synth``, the erasing sweep
    (``[sys.executable, SWEEP_SCRIPT, ...]``) and ``wsss compare``; paths under ``workdir``."""
    data = workdir / "data/demo-synth"
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    return [
        ["wsss", "data", "synth", "--out", str(data), "--n", str(n), "--seed", str(seed),
         "--image-size", str(image_size)],
        [sys.executable, str(SWEEP_SCRIPT), "--data", str(data), "--num-samples", str(trials),
         "--max-concurrent", str(concurrent), "--epochs", str(epochs),
         "--eval-images", str(eval_images), "--search", "random", "--scheduler", "fifo",
         "--experiment", EXPERIMENT, "--workdir", str(workdir / "runs/sweeps"),
         "--tracking-uri", uri, "--set", f"data.crop_size={image_size}", "--set",
         f"refine.bg_threshold={BG_THRESHOLD}"],
        ["wsss", "compare", "--experiment", EXPERIMENT, "--tracking-uri", uri, "--out",
         str(workdir / "runs/compare" / EXPERIMENT)],
    ]


def run(workdir: Path, n: int, image_size: int, epochs: int, trials: int,
        concurrent: int, eval_images: int, seed: int = 0) -> int:
    workdir = workdir.resolve()
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    start = time.perf_counter()
    for argv in commands(workdir, n, image_size, epochs, trials, concurrent, eval_images, seed):
        shown = (python_line(_shown_script(argv[1]), *argv[2:]) if argv[0] == sys.executable
                 else command_line(*argv))
        print(f"\n$ {shown}", flush=True)
        code = (wsss(argv[1:]) if argv[0] == "wsss"
                else subprocess.call(argv, cwd=workdir))
        if code != 0:
            return code
    print(f"\ndemo finished in {time.perf_counter() - start:.0f}s. Trials, best config and "
          f"pictures: MLflow experiment '{EXPERIMENT}' -> "
          f"`{command_line('mlflow', 'ui', '--backend-store-uri', uri)}`; tables and plots in "
          f"{workdir / 'runs/compare' / EXPERIMENT}")
    return 0


def _shown_script(path: str) -> str:
    """The sweep script as a user in the working directory types it (``sweeps/erasing.py``
    from the checkout), else its absolute path."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default=".", type=Path)
    parser.add_argument("--n", type=int, default=64, help="synthetic images")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=6, help="epochs per erasing round")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--max-concurrent", type=int, default=2)
    parser.add_argument("--eval-images", type=int, default=32,
                        help="training images whose pseudo-mask mIoU is the objective")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic images")
    args = parser.parse_args(argv)
    return run(args.workdir, args.n, args.image_size, args.epochs, args.trials,
               args.max_concurrent, args.eval_images, args.seed)


if __name__ == "__main__":
    sys.exit(main())
