"""Sweep MDC dilation-rate sets (1 plus subsets of 2, 3, 6, 9, 12) and the learning rate.

    python sweeps/dilation.py --smoke-test
    python sweeps/dilation.py --num-samples 24 --max-concurrent 2
"""

import sys

from wsss.tune.runner import training_sweep
from wsss.tune.tuner import main

SWEEP = training_sweep("dilation", "mdc")

if __name__ == "__main__":
    sys.exit(main(SWEEP, description=__doc__))
