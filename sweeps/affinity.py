"""Sweep the random walk on learnt affinities (AffinityNet / IRN): the transition matrix's power
beta (refine.rw_beta), the walk's iterations t (refine.rw_iterations) and the background
threshold, on the maps of one fixed classifier and one affinity network (both trained first
when not given). Every trial re-refines the saved maps through Ray Data.

    python sweeps/affinity.py --smoke-test
    python sweeps/affinity.py --checkpoint CLS/model.pt --affinity AFF/model.pt --num-samples 30
"""

import sys

from wsss.knobs import Knob
from wsss.tune.affinity import RANDOM_WALK_KNOBS, AffinitySweep
from wsss.tune.crf import crf_trial
from wsss.tune.tuner import main

SWEEP = AffinitySweep("affinity", knobs=RANDOM_WALK_KNOBS, trainable=crf_trial,
                      constants={"refine.crf": False},
                      smoke_knobs=[Knob("refine.rw_iterations", 1, 8, integer=True)])

if __name__ == "__main__":
    sys.exit(main(SWEEP, description=__doc__))
