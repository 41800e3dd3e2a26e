"""Sweep the method itself: every registered method, each with its own sub-space of knobs
(adversarial erasing steps/threshold, Hide-and-Seek hiding, MDC rates, ...), and the learning rate.

    python sweeps/methods.py --smoke-test
    python sweeps/methods.py --num-samples 40 --max-concurrent 2
"""

import sys

from wsss.methods import METHODS
from wsss.sweeps.runner import Sweep
from wsss.sweeps.spaces import LR, Knob
from wsss.sweeps.tuner import main

SWEEP = Sweep("methods", knobs=[LR], methods=sorted(METHODS),
              smoke_knobs=[Knob("method.params.steps", 1, 2, integer=True)])

if __name__ == "__main__":
    sys.exit(main(SWEEP, description=__doc__))
