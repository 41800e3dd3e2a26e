"""Sweep adversarial erasing: steps K (1..4), erasing threshold and learning rate.

Each trial trains K rounds (one Ray Train run each); the objective is the pseudo-mask mIoU of a
fixed subset of training images, reported every epoch so ASHA can stop poor trials.

    python sweeps/erasing.py --smoke-test
    python sweeps/erasing.py --num-samples 24 --max-concurrent 2 --data VOCdevkit/VOC2012
"""

import sys

from wsss.knobs import Knob
from wsss.tune.runner import training_sweep
from wsss.tune.tuner import main

SWEEP = training_sweep("erasing", "adversarial_erasing",
                       smoke_knobs=[Knob("method.params.steps", 1, 2, integer=True)])

if __name__ == "__main__":
    sys.exit(main(SWEEP, description=__doc__))
