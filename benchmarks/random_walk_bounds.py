"""What bounds the random walk's pseudo-masks: ground-truth affinities against learnt ones.

On one set of saved maps (``wsss cam``) and one affinity network (``wsss train-affinity``), the
pseudo-masks (arg-max of the present classes' maps, no CRF, no background score) are scored
for the same walk (beta, t) under different affinities:

- ``maps``: no walk (the CAM row of ``benchmarks/quality.py``);
- ``learnt``: the network's affinities (the ``maps + random walk`` row);
- ``learnt, leaks cut``: the learnt affinity, 0 for pairs of different ground-truth classes;
- ``learnt, fragments joined``: the learnt affinity, 1 for pairs of the same ground-truth class;
- ``ground truth``: 1 for pairs of the same ground-truth class, 0 otherwise (a perfect affinity
  network: the walk then averages the maps over each ground-truth region, so its mIoU is what
  a network that learnt the true pairs perfectly would get from these maps);
- ``cell grid``: the ground truth itself averaged over the walk's cells and upsampled, the
  resolution bound of the grid (no maps involved).

With ``--seeds`` (the seed masks the network learnt from, ``<affinity run>/seeds``), the report
also gives how many of the pairs the seeds label "same" and "different" are so in the ground
truth (pair precision). It also gives the learnt affinities' pair AUC: the probability that a
random pair of cells of the same ground-truth class has a higher learnt affinity than a random
pair of different classes (1: perfectly separated, 0.5: chance).

Ground-truth pair labels come from the mask at cell resolution (each cell's majority class;
cells with no labelled pixel pair with nothing). The gap between ``learnt`` and ``ground
truth`` is what a better affinity network can win; the two middle rows say whether leaks
across class boundaries or breaks inside objects cost more. Only datasets without a background
class are scored this way (the background score would need its own bound).

Example::

    python benchmarks/random_walk_bounds.py --maps runs/cams --affinity runs/affinity/model.pt
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import roc_auc_score

from common import DEFAULT_DATA, machine_lines, publish  # noqa: E402  (benchmarks/common.py)
from wsss.core.affinity import network_affinities, pair_labels, pair_offsets, propagate
from wsss.core.affinity import DIFFERENT, SAME_FG
from wsss.core.maps import load_maps
from wsss.core.scoring import Scorer
from wsss.data.dataset import VOCDataset
from wsss.data.transforms import normalize, resize_by
from wsss.models.affinity import STRIDE
from wsss.train.affinity import load_affinity

VARIANTS = ("maps", "learnt", "learnt, leaks cut", "learnt, fragments joined", "ground truth",
            "cell grid")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="VOC-layout dataset (default: ../shared/data/msrc21)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--maps", type=Path, required=True, help="maps folder of the split")
    parser.add_argument("--affinity", type=Path, required=True, help="affinity network model.pt")
    parser.add_argument("--seeds", type=Path, default=None,
                        help="seed masks the network learnt from (<affinity run>/seeds)")
    parser.add_argument("--beta", type=float, default=8.0)
    parser.add_argument("--iterations", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=None, help="markdown report")
    return parser.parse_args(argv)


def cell_labels(gt: np.ndarray, cells: tuple[int, int], classes: int) -> torch.Tensor:
    """The majority class long [h, w] of each cell of ground truth ``gt`` [H, W] (255 where a
    cell has no labelled pixel), cells of ``ceil(H / h) x ceil(W / w)`` pixels."""
    votes = one_hot(gt, classes)
    pooled = F.adaptive_avg_pool2d(votes[None], cells)[0]
    labels = pooled.argmax(dim=0)
    return torch.where(pooled.sum(dim=0) > 0, labels, torch.full_like(labels, 255))


def one_hot(gt: np.ndarray, classes: int) -> torch.Tensor:
    """float [C, H, W]: 1 where ``gt`` is that class (ignored pixels: all 0)."""
    labels = torch.from_numpy(gt.astype(np.int64))
    valid = labels < classes
    return (F.one_hot(labels.clamp(max=classes - 1), classes).permute(2, 0, 1).float()
            * valid[None])


def seed_pair_counts(path: Path, labels: torch.Tensor, offsets: torch.Tensor) -> np.ndarray:
    """int64 [2, 2]: pairs the seed mask at ``path`` labels same (row 0) / different (row 1)
    that the ground truth ``labels`` [P, h, w] says are same (column 0) / different (1)."""
    seeds = torch.from_numpy(np.asarray(Image.open(path), dtype=np.int64))
    cells = F.interpolate(seeds[None, None].float(), size=labels.shape[1:], mode="nearest")
    said = pair_labels(cells[:, 0].long(), offsets, None)[0]
    return np.array([[int(((said == a) & (labels == b)).sum()) for b in (SAME_FG, DIFFERENT)]
                     for a in (SAME_FG, DIFFERENT)])


def seed_lines(counts: np.ndarray) -> list[str]:
    """Markdown lines on the seeds' pair precision (none when no seed pair was counted)."""
    if not counts.sum():
        return []
    same, different = counts / counts.sum(axis=1, keepdims=True).clip(min=1)
    return [f"Seed pairs (the network's training labels, at cell resolution): "
            f"{counts[0].sum()} labelled same, {100 * same[0]:.1f} % of them one class in the "
            f"ground truth; {counts[1].sum()} labelled different, {100 * different[1]:.1f} % "
            f"of them two classes.", ""]


def pair_auc(same: torch.Tensor, different: torch.Tensor) -> float:
    """P(a same-class pair's affinity > a different-class pair's), ties counted half: the ROC
    AUC of the affinity as a score for "same class" (scikit-learn, installed with MLflow)."""
    truth = np.r_[np.ones(same.numel()), np.zeros(different.numel())]
    return float(roc_auc_score(truth, torch.cat([same, different]).numpy()))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    dataset = VOCDataset(args.data, split=args.split)
    if dataset.info.has_background:
        sys.exit(f"{args.data}: has a background class; this bound scores datasets without one")
    model, state = load_affinity(args.affinity)
    scale, offsets = float(state["image_scale"]), pair_offsets(int(state["radius"]))
    scorers = {name: Scorer(dataset.info) for name in VARIANTS}
    same, different = [], []
    seed_pairs = np.zeros((2, 2), dtype=np.int64)  # rows: seeds say same / different
    start = time.perf_counter()
    for sample_id in dataset.ids:
        sample = dataset.sample(sample_id)
        if sample.gt is None:
            continue
        maps, class_ids = load_maps(args.maps / f"{sample_id}.npz")
        maps = torch.from_numpy(np.asarray(maps, dtype=np.float32))
        ids = np.asarray(class_ids, dtype=np.uint8)
        image = normalize(torch.from_numpy(sample.image).permute(2, 0, 1)[None])
        with torch.no_grad():
            learnt = network_affinities(model, resize_by(image, scale), offsets)[0]
        labels = pair_labels(cell_labels(sample.gt, learnt.shape[1:], dataset.info.num_classes)
                             [None], offsets, None)[0]
        truth = (labels == SAME_FG).float()
        if args.seeds is not None:
            seed_pairs += seed_pair_counts(args.seeds / f"{sample_id}.png", labels, offsets)
        same.append(learnt[labels == SAME_FG])
        different.append(learnt[labels == DIFFERENT])
        affinities = {"learnt": learnt,
                      "learnt, leaks cut": torch.where(labels == DIFFERENT, 0.0, learnt),
                      "learnt, fragments joined": torch.where(labels == SAME_FG, 1.0, learnt),
                      "ground truth": truth}
        walked = {name: propagate(maps, value, offsets, args.beta, args.iterations)
                  for name, value in affinities.items()}
        height, width = sample.gt.shape
        cells = F.avg_pool2d(one_hot(sample.gt, dataset.info.num_classes)[None],
                             round(STRIDE / scale), ceil_mode=True)
        grid = F.interpolate(cells, scale_factor=round(STRIDE / scale), mode="bilinear",
                             align_corners=False)[0, :, :height, :width]
        for name, values in {"maps": maps, **walked}.items():
            scorers[name].update(ids[values.argmax(dim=0).numpy()], sample.gt)
        scorers["cell grid"].update(grid.argmax(dim=0).numpy().astype(np.uint8), sample.gt)
    seconds = time.perf_counter() - start
    rows = [(name, scorers[name].scores()) for name in VARIANTS]
    lines = ["# Random walk: learnt affinities against ground-truth ones", "",
             f"{scorers['maps'].images} images of `{args.data.name}` ({args.split}); maps "
             f"`{args.maps}`, affinity network `{args.affinity}` (radius {state['radius']} "
             f"cells, image scale {scale:g}); walk beta {args.beta:g}, t {args.iterations}; "
             f"pseudo-masks = arg-max of the present classes' maps, no CRF. mIoU and FP / FN "
             f"(of each class's union, mean over classes) in %; {seconds:.0f} s. Pair AUC of "
             f"the learnt affinities: {pair_auc(torch.cat(same), torch.cat(different)):.3f}.",
             "", *seed_lines(seed_pairs),
             "| affinities | mIoU | FP / FN |", "|---|---:|---:|"]
    lines += [f"| {name} | {100 * s.miou:.1f} | {100 * s.mean_false_positive:.1f} / "
              f"{100 * s.mean_false_negative:.1f} |" for name, s in rows]
    command = " ".join(["python benchmarks/random_walk_bounds.py",
                        *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    lines += ["", *machine_lines(command, (load, os.getloadavg()))]
    publish("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
