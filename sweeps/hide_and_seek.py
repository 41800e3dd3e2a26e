"""Sweep Hide-and-Seek: hide probability (0..0.9), grid size and learning rate.

    python sweeps/hide_and_seek.py --smoke-test
    python sweeps/hide_and_seek.py --num-samples 24 --max-concurrent 2
"""

import sys

from wsss.tune.runner import training_sweep
from wsss.tune.tuner import main

SWEEP = training_sweep("hide_and_seek", "hide_and_seek")

if __name__ == "__main__":
    sys.exit(main(SWEEP, description=__doc__))
