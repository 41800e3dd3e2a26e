"""Sweep what the affinity network learns from: the seeds' foreground and background thresholds
(affinity.fg_threshold, affinity.bg_threshold), whether a dense CRF places them
(affinity.seed_crf), the pair radius (affinity.radius) and the kind of affinity (affinity.head:
AffinityNet's features or IRNet's boundaries), with the
random walk's beta, t and background threshold, on the maps of one fixed classifier (trained
first when not given). Every trial writes its own seeds, trains its own affinity network with
Ray Train for --epochs epochs and reports, after each epoch, the pseudo-mask mIoU of the scored
images' maps walked on it, so ASHA stops poor seeds early.

    python sweeps/affinity_seeds.py --smoke-test
    python sweeps/affinity_seeds.py --checkpoint CLS/model.pt --num-samples 24 --epochs 6
"""

import sys

from wsss.tune.affinity import RANDOM_WALK_KNOBS, SEED_KNOBS, SeedSweep
from wsss.tune.tuner import main

SWEEP = SeedSweep("affinity-seeds", knobs=(*SEED_KNOBS, *RANDOM_WALK_KNOBS),
                  constants={"refine.crf": False})

if __name__ == "__main__":
    sys.exit(main(SWEEP, description=__doc__))
