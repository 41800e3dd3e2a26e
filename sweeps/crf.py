"""Sweep the pseudo-mask refinement: dense-CRF kernels (gaussian sxy/compat, bilateral
sxy/srgb/compat, iterations) and the background score (threshold or power), on the maps of one
fixed classifier checkpoint (no retraining). The Ray Data pseudo-labelling pipeline extracts
the maps of the scored images once; every trial re-refines them through Ray Data.

    python sweeps/crf.py --smoke-test
    python sweeps/crf.py --checkpoint runs/classifier/RUN/model.pt --num-samples 40
"""

import sys

from wsss.knobs import Knob
from wsss.tune.crf import CrfSweep, crf_trial
from wsss.tune.spaces import CRF_KNOBS
from wsss.tune.tuner import main

SWEEP = CrfSweep("crf", knobs=CRF_KNOBS, trainable=crf_trial,
                 constants={"refine.crf": True},
                 smoke_knobs=[Knob("refine.crf_iterations", 1, 3, integer=True)])

if __name__ == "__main__":
    sys.exit(main(SWEEP, description=__doc__))
