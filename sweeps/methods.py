"""Sweep the method itself: every registered method, each with its own sub-space of knobs
(adversarial erasing steps/threshold, Hide-and-Seek hiding, MDC rates, ...), and the learning rate.

    python sweeps/methods.py --smoke-test
    python sweeps/methods.py --num-samples 40 --max-concurrent 2
"""

import sys

from wsss.knobs import Knob
from wsss.methods import METHODS
from wsss.tune.runner import Sweep
from wsss.tune.spaces import LR
from wsss.tune.tuner import main

SWEEP = Sweep("methods", knobs=[LR], methods=sorted(METHODS),
              smoke_knobs=[Knob("method.params.steps", 1, 2, integer=True)])

if __name__ == "__main__":
    sys.exit(main(SWEEP, description=__doc__))
