"""The quality guard: a small deterministic end-to-end run whose numbers are pinned.

It runs ``benchmarks/quality.py`` (the code of the published quality table) on a generated
dataset with the tiny recipe ``guard.yaml``: classifier, CAM maps, pseudo-masks with and without
the dense CRF, a segmenter from the classifier and its predictions, one seed. Each row's mIoU is
compared with ``reference.json``; ``test_guard.py`` fails when a row moves by more than the
tolerance, printing the reference and the new numbers side by side.

Repeatable to the bit: one thread per process and kernels whose results do not depend on the
CPU model (``GUARD_ENV``: oneDNN off, ATen's AVX2 kernels, MKL's COMPATIBLE code path), so the
same code gives the same numbers on any x86-64 machine with AVX2, under any load. Training
amplifies any rounding difference into other numbers (measured: ``docs/quality.md``, "The
quality guard"), so a machine must compute like the reference's: ``numerics.py`` fingerprints
that. A matching machine is held to ``tolerance`` (run to run the numbers are identical); one
that rounds differently is held to the wider ``numerics_tolerance``, measured as the spread of
the guard's rows over kernel variants, and the test says so.

Updating the reference is a deliberate act, and its commit states the new figures::

    make quality-reference      # python tests/quality/guard.py --write-reference
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RECIPE = HERE / "guard.yaml"
REFERENCE = HERE / "reference.json"
# Kernels whose float results do not depend on the CPU model, one thread each (wsss.core.
# precision.portable_numerics: oneDNN off; PyTorch's ATEN_CPU_CAPABILITY; Intel MKL's
# conditional numerical reproducibility, MKL_CBWR).
GUARD_ENV = {"WSSS_PORTABLE_NUMERICS": "1", "ATEN_CPU_CAPABILITY": "avx2",
             "MKL_CBWR": "COMPATIBLE", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
             "PYTHONHASHSEED": "0"}
DATA = {"n": 96, "image_size": 64, "seed": 0}


def _run(command: list[str], cwd: Path, env: dict[str, str] | None) -> str:
    done = subprocess.run(command, capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **GUARD_ENV, **(env or {})})
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:2])} failed ({done.returncode}):\n"
                           f"{done.stderr[-4000:]}")
    return done.stdout


def numerics(work: Path, env: dict[str, str] | None = None) -> str:
    """This machine's fingerprint under ``GUARD_ENV`` (``numerics.py``, a fresh process)."""
    return _run([sys.executable, str(HERE / "numerics.py")], work, env).strip()


def run_guard(work: Path, env: dict[str, str] | None = None) -> dict[str, float]:
    """Generate the dataset in ``work``, run the chain there in a fresh process (its own Ray)
    under ``GUARD_ENV`` (+ ``env``) and return ``{row: mIoU}`` (fractions).

    Raises:
        RuntimeError: the run failed (its last output lines in the message).
    """
    from wsss.data.synthetic import generate_dataset

    data = work / "synth"
    generate_dataset(data, **DATA)
    out = work / "guard.json"
    _run([sys.executable, str(REPO / "benchmarks" / "quality.py"), "--data", str(data),
          "--config", str(RECIPE), "--seeds", "0", "--no-random-walk",
          "--segmenters", "classifier", "--work", str(work / "run"),
          "--out", str(work / "guard.md"), "--json", str(out)], work, env)
    rows = json.loads(out.read_text())["rows"]
    return {what: values[0] for what, values in rows.items()}


def tolerance_for(reference: dict, machine: str) -> tuple[dict[str, float], str]:
    """Per-row tolerances (mIoU fractions) for a machine of fingerprint ``machine``, and a
    sentence saying which and why."""
    rows = reference["rows"]
    if machine == reference["numerics"]:
        return ({what: reference["tolerance"] for what in rows},
                f"this machine computes like the reference's (numerics {machine}): every row "
                f"within {100 * reference['tolerance']:.2f} points")
    wide = reference["numerics_tolerance"]
    return ({what: wide.get(what, max(wide.values())) for what in rows},
            f"this machine rounds differently from the reference's (numerics {machine}, "
            f"reference {reference['numerics']}): rows held to the spread measured over kernel "
            f"variants ({', '.join(f'{k} {100 * v:.1f}' for k, v in sorted(wide.items()))} "
            f"points)")


def compare(reference: dict, measured: dict[str, float],
            tolerances: dict[str, float]) -> list[str]:
    """The rows that moved by more than their tolerance (or appeared, or disappeared), each as
    ``row: old -> new (diff)``; [] when all hold."""
    pinned: dict[str, float] = reference["rows"]
    problems = []
    for what in sorted(set(pinned) | set(measured)):
        old, new = pinned.get(what), measured.get(what)
        if old is None or new is None:
            problems.append(f"{what}: {old} -> {new} (row {'added' if old is None else 'gone'})")
        elif abs(new - old) > tolerances[what]:
            problems.append(f"{what}: {100 * old:.2f} -> {100 * new:.2f} "
                            f"({100 * (new - old):+.2f} mIoU points)")
    return problems


def side_by_side(reference: dict, measured: dict[str, float]) -> str:
    """A table of every row: reference, measured, difference (mIoU %)."""
    pinned: dict[str, float] = reference.get("rows", {})
    lines = [f"{'row':<40} {'reference':>9} {'measured':>9} {'diff':>7}"]
    for what in sorted(set(pinned) | set(measured)):
        old, new = pinned.get(what), measured.get(what)
        diff = "" if old is None or new is None else f"{100 * (new - old):+.2f}"
        lines.append(f"{what:<40} {'-' if old is None else f'{100 * old:.2f}':>9} "
                     f"{'-' if new is None else f'{100 * new:.2f}':>9} {diff:>7}")
    return "\n".join(lines)


def check(work: Path) -> tuple[list[str], str]:
    """Run the guard in ``work`` against ``reference.json``: (problems, report text)."""
    reference = json.loads(REFERENCE.read_text())
    machine = numerics(work)
    measured = run_guard(work)
    tolerances, how = tolerance_for(reference, machine)
    problems = compare(reference, measured, tolerances)
    return problems, f"{how}\n{side_by_side(reference, measured)}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write-reference", action="store_true",
                   help=f"pin this run's numbers and numerics in {REFERENCE.relative_to(REPO)} "
                        f"(tolerances kept)")
    p.add_argument("--work", type=Path, default=None,
                   help="keep the run's files in this new folder (default: a temporary one)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="wsss-guard-") as tmp:
        work = args.work.resolve() if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if not args.write_reference:
            problems, text = check(work)
            print(text + "\n" + ("\n".join(problems) or "the guarded numbers hold"))
            sys.exit(1 if problems else 0)
        reference = json.loads(REFERENCE.read_text())
        measured = run_guard(work)
        print(side_by_side(reference, measured))
        reference.update(numerics=numerics(work), rows=measured)
        REFERENCE.write_text(json.dumps(reference, indent=1, sort_keys=True) + "\n")
        print(f"wrote {REFERENCE}: commit it with these figures in the message")


if __name__ == "__main__":
    main()
