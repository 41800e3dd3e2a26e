"""Segmentation quality on real data, stage by stage, with one recipe, over several seeds.

Rows (mIoU in %, against the dataset's ground truth, used for scoring only):

1. the label-prior floor: each pixel a uniformly random class among the image's labels (train);
2. pseudo-masks from each method's maps (its classifier trained with Ray Train, maps of the train
   split, arg-max over the present classes / background score; no CRF);
3. the first method's maps + dense CRF with the recipe's ``refine`` settings; the same maps
   propagated by the random walk on an affinity network trained on their seeds
   (``affinity`` section; AffinityNet), without and with that CRF;
4. DeepLab segmenters trained on the CRF (or ``--segmenter-masks "walk + CRF"``) masks, from
   random weights and from the first method's classifier (``segmenter.init_from``): the val
   mIoU of the saved model's predictions (``wsss predict``);
5. the fully supervised reference: the same segmenter recipe trained on the ground-truth masks
   of the train split, and the ratio WSSS / full supervision.

Each seed of ``--seeds`` runs the whole chain with ``train.seed``, ``affinity.seed`` and
``segmenter.seed`` set to it; the table gives each row's mean ± std, min..max and per-seed
values, and names the commit and the recipe file (with its hash) it was made with.

    python benchmarks/quality.py --seeds 0 1 2   # MSRC-21 with configs/msrc21_scratch.yaml
    python benchmarks/quality.py --data PATH --config configs/X.yaml --methods cam acol

Each finished stage is recorded in ``<work>/stages.json``; a re-run reuses it, and a training
run interrupted mid-way resumes from its last Ray Train checkpoint (same run name).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from common import DEFAULT_DATA, code_version, machine_lines, publish  # noqa: E402
from methods import parse_spec  # noqa: E402  (benchmarks/methods.py)
from wsss.config import ExperimentConfig, load_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "msrc21_scratch.yaml"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "quality.md"
SEGMENTERS = ("random", "classifier", "full")
# The recipe's chain; other methods' maps rows with --methods (e.g. Hide-and-Seek and MDC with
# the knobs that suit small feature maps: "hide_and_seek:hide_prob=0.25" "mdc:dilations=[1,2,3]").
DEFAULT_METHODS = ("cam",)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help="VOC-layout dataset (default: ../shared/data/msrc21)")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                   help="the recipe (default: configs/msrc21_scratch.yaml)")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                   help="NAME or NAME:KEY=VALUE[;KEY=VALUE] (method knobs); the first one's "
                        "maps feed the CRF and the segmenters (default: cam)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override on top of the recipe")
    p.add_argument("--seeds", nargs="+", type=int, default=[0],
                   help="training seeds: each runs the whole chain (default: 0)")
    p.add_argument("--segmenters", nargs="*", choices=SEGMENTERS, default=list(SEGMENTERS),
                   help="segmenter rows: from random weights, from the classifier, fully "
                        "supervised (default: all; none: stop after the masks)")
    p.add_argument("--segmenter-masks", choices=("CRF", "walk + CRF"), default="CRF",
                   help="the pseudo-masks the segmenters train on (default: CRF)")
    p.add_argument("--predict-crf", action="store_true",
                   help="also score the segmenter from the classifier with `wsss predict --crf`")
    p.add_argument("--no-random-walk", action="store_true",
                   help="skip the affinity network and the random-walk rows")
    p.add_argument("--work", type=Path, default=Path("runs/bench-quality"))
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help="markdown table (and a .png beside it)")
    p.add_argument("--json", type=Path, default=None,
                   help="also write each row's per-seed mIoU (fractions) to this JSON file")
    return p.parse_args(argv)


class Stages:
    """Results of finished stages, kept in ``<work>/stages.json`` (written after each one).

    A stage is known by its name and a fingerprint of the config sections it depends on: a
    re-run with the same sections reuses its result, a changed section (another CRF, another
    segmenter recipe) runs it again into folders and Ray Train runs of its own.
    """

    def __init__(self, work: Path) -> None:
        self.work = work
        self.path = work / "stages.json"
        self.done: dict[str, dict[str, Any]] = (json.loads(self.path.read_text())
                                                if self.path.is_file() else {})

    def run(self, name: str, cfg: ExperimentConfig, sections: tuple[str, ...],
            fn: Callable[[str], dict[str, Any]], inputs: str = "") -> dict[str, Any]:
        """``fn(tag)``'s result (with its ``minutes``), or the recorded one of an earlier run;
        ``tag`` (name + fingerprint of ``sections`` and ``inputs``, the folders it reads) names
        the stage's folders and runs."""
        config = cfg.to_dict()
        text = json.dumps({"inputs": inputs, **{key: config[key] for key in sections}},
                          sort_keys=True)
        tag = (f"{re.sub(r'[^A-Za-z0-9_.=-]+', '_', name)}-"
               f"{hashlib.sha1(text.encode()).hexdigest()[:8]}")
        if tag in self.done:
            print(f"[quality] {name}: reused ({tag})", file=sys.stderr, flush=True)
            return self.done[tag]
        start = time.perf_counter()
        result = {**fn(tag), "minutes": (time.perf_counter() - start) / 60,
                  "commit": code_version()}
        self.done[tag] = result
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.done, indent=1))
        tmp.replace(self.path)
        print(f"[quality] {name}: {result}", file=sys.stderr, flush=True)
        return result


CLASSIFIER = ("data", "model", "method", "train")


class Row(NamedTuple):
    """One line of the table for one seed; ``result`` is the stage's record (its
    ``false_positive`` / ``false_negative`` when the masks were scored on train, ``val_mAP``
    of a classifier, ``best_epoch_miou`` of a segmenter)."""

    what: str
    miou: float
    notes: str
    minutes: float
    result: dict[str, Any] = {}


def label_prior_miou(cfg: ExperimentConfig, seed: int = 0) -> dict[str, Any]:
    """mIoU of masks that give each pixel a uniformly random class among its image's labels
    (train split): what image-level labels alone score."""
    from wsss.core.scoring import Scorer
    from wsss.data.dataset import VOCDataset

    dataset = VOCDataset(cfg.data.root, cfg.data.train_split,
                         max_image_side=cfg.data.max_image_side)
    rng = np.random.default_rng(seed)
    scorer = Scorer(dataset.info)
    for sample_id in dataset.ids:
        sample = dataset.sample(sample_id)
        if sample.gt is None:
            continue
        present = np.asarray(sample.class_ids)
        scorer.update(present[rng.integers(len(present), size=sample.gt.shape)], sample.gt)
    scores = scorer.scores()
    return {"miou": scores.miou, **error_split(scores)}


def error_split(scores: Any) -> dict[str, float]:
    """Mean false positives and false negatives, each a fraction of the class's union
    (``wsss.core.scoring``): FN > FP marks masks narrower than their objects, FP > FN wider ones."""
    return {"false_positive": scores.mean_false_positive,
            "false_negative": scores.mean_false_negative}


def errors_stage(stages: Stages, what: str, cfg: ExperimentConfig, sections: tuple[str, ...],
                 folder: str, masks: bool) -> dict[str, Any]:
    """The error split of the pseudo-masks of ``folder`` (maps, or mask PNGs when ``masks``)
    on the train split; its own stage, so rows recorded before it existed gain it too."""
    from wsss.pipeline.masks import run_eval
    from wsss.pipeline.masks import run_eval_masks

    def score(tag: str) -> dict[str, Any]:
        scores, _ = (run_eval_masks(folder, cfg.data.root, cfg.data.train_split, cfg.tracking,
                                    cfg.data.max_image_side) if masks else
                     run_eval(folder, cfg.data.root, cfg.data.train_split, cfg.refine,
                              tracking_cfg=cfg.tracking))
        return error_split(scores)

    return stages.run(f"errors {what}", cfg, sections, score, inputs=folder)


def method_stages(stages: Stages, cfg: ExperimentConfig, spec: str,
                  work: Path) -> dict[str, Any]:
    """Classifier, maps and their pseudo-mask mIoU (no CRF) of one method spec: the maps row,
    with the classifier's checkpoint and the maps folder."""
    from wsss.pipeline.maps import run_cams
    from wsss.pipeline.masks import run_eval
    from wsss.pipeline.train_cls import run_train_classifier

    name, knobs = parse_spec(spec)
    mcfg = cfg.with_overrides([f"method.name={name}", *knobs])

    def classifier(tag: str) -> dict[str, Any]:
        result = run_train_classifier(mcfg, work / "cls", run_name=tag)
        return {"checkpoint": str(result.checkpoint),
                "val_mAP": float(result.metrics.get("val_mAP", float("nan")))}

    cls = stages.run(f"classifier {spec}", mcfg, CLASSIFIER, classifier)

    def maps(tag: str) -> dict[str, Any]:
        run_cams(cls["checkpoint"], mcfg.data.root, mcfg.data.train_split, work / "maps" / tag,
                 mcfg.cams, mcfg.tracking, max_image_side=mcfg.data.max_image_side)
        scores, _ = run_eval(work / "maps" / tag, mcfg.data.root, mcfg.data.train_split,
                             mcfg.refine, tracking_cfg=mcfg.tracking)
        return {"miou": scores.miou, "maps": str(work / "maps" / tag)}

    row = stages.run(f"maps {spec}", mcfg, (*CLASSIFIER, "cams", "refine"), maps)
    row = {**row, **errors_stage(stages, f"maps {spec}", mcfg, (*CLASSIFIER, "cams", "refine"),
                                 row["maps"], masks=False), "minutes": row["minutes"]}
    return {**row, "checkpoint": cls["checkpoint"], "val_mAP": cls["val_mAP"],
            "minutes": cls["minutes"] + row["minutes"]}


def crf_stage(stages: Stages, cfg: ExperimentConfig, spec: str, maps: str,
              work: Path) -> dict[str, Any]:
    """``maps`` (the first method's) through the dense CRF with the recipe's ``refine``."""
    from wsss.pipeline.masks import run_refine

    def refine(tag: str) -> dict[str, Any]:
        report = run_refine(maps, cfg.data.root, cfg.data.train_split, work / "masks" / tag,
                            cfg.refine, cfg.tracking, cfg.data.max_image_side)
        return {"miou": report.extra["miou"], "masks": str(work / "masks" / tag)}

    name, knobs = parse_spec(spec)
    mcfg = cfg.with_overrides([f"method.name={name}", *knobs])
    sections = (*CLASSIFIER, "cams", "refine")
    row = stages.run(f"maps + CRF {spec}", mcfg, sections, refine)
    return {**row, **errors_stage(stages, f"maps + CRF {spec}", mcfg, sections, row["masks"],
                                  masks=True), "minutes": row["minutes"]}


def random_walk_stages(stages: Stages, cfg: ExperimentConfig, spec: str, first: dict[str, Any],
                       work: Path) -> list[Row]:
    """The affinity network trained on seeds of the first method's maps (``wsss
    train-affinity``), then the maps propagated by the random walk, without and with the CRF
    (``wsss refine --affinity``): two rows."""
    import dataclasses

    from wsss.pipeline.masks import run_refine
    from wsss.pipeline.train_aff import run_train_affinity

    name, knobs = parse_spec(spec)
    mcfg = cfg.with_overrides([f"method.name={name}", *knobs])

    def train(tag: str) -> dict[str, Any]:
        result = run_train_affinity(mcfg, first["maps"], first["checkpoint"], work / "aff",
                                    run_name=tag)
        return {"checkpoint": str(result.checkpoint), "loss": result.metrics["loss"]}

    network = stages.run(f"affinity {spec}", mcfg, (*CLASSIFIER, "cams", "affinity"), train,
                         inputs=first["maps"])
    rows = []
    for crf in (False, True):
        refine = dataclasses.replace(mcfg.refine, affinity=network["checkpoint"], crf=crf)
        rcfg = dataclasses.replace(mcfg, refine=refine)
        what = f"maps + random walk{' + CRF' if crf else ''}: {spec}"

        def walk(tag: str, rcfg: ExperimentConfig = rcfg) -> dict[str, Any]:
            report = run_refine(first["maps"], rcfg.data.root, rcfg.data.train_split,
                                work / "masks" / tag, rcfg.refine, rcfg.tracking,
                                rcfg.data.max_image_side)
            return {"miou": report.extra["miou"], "masks": str(work / "masks" / tag)}

        sections = (*CLASSIFIER, "cams", "affinity", "refine")
        row = stages.run(what, rcfg, sections, walk)
        row = {**row, **errors_stage(stages, what, rcfg, sections, row["masks"], masks=True),
               "minutes": row["minutes"]}
        aff = rcfg.affinity
        notes = (f"radius {aff.radius}, {'CRF ' if aff.seed_crf else ''}seeds fg >= "
                 f"{aff.fg_threshold:g}, bg < {aff.bg_threshold:g}, margin {aff.margin:g}, "
                 f"{aff.epochs} epochs; beta "
                 f"{refine.rw_beta:g}, t {refine.rw_iterations}" + (f"; {crf_text(rcfg)}"
                                                                    if crf else ""))
        minutes = row["minutes"] + (0 if crf else network["minutes"])
        rows.append(Row(what, row["miou"], notes, minutes, row))
    return rows


def segmenter_stage(stages: Stages, cfg: ExperimentConfig, name: str, masks: Path,
                    init_from: str | None, work: Path) -> dict[str, Any]:
    """A segmenter trained on ``masks`` (train split), scored on the val split (last epoch)."""
    from wsss.config import override
    from wsss.pipeline.train_seg import run_train_segmenter

    scfg = cfg.with_overrides([override("segmenter.init_from", init_from)] if init_from else [])

    def train(tag: str) -> dict[str, Any]:
        result = run_train_segmenter(scfg, masks, work / "seg", run_name=tag)
        history = [h["val_miou"] for h in result.history]
        return {"miou": history[-1], "best_epoch_miou": max(history),
                "checkpoint": str(result.checkpoint)}

    return stages.run(name, scfg, ("data", "segmenter"), train, inputs=str(masks))


def predict_stage(stages: Stages, cfg: ExperimentConfig, name: str, checkpoint: str,
                  crf: bool, work: Path) -> dict[str, Any]:
    """The val mIoU of a segmenter checkpoint's predictions, as ``wsss predict`` (``--crf``:
    refined by the recipe's dense CRF) writes them."""
    from wsss.pipeline.predict import run_predict

    def predict(tag: str) -> dict[str, Any]:
        report = run_predict(checkpoint, cfg.data.root, cfg.data.val_split, work / "pred" / tag,
                             cfg.tracking, max_image_side=cfg.data.max_image_side,
                             crf=cfg.refine if crf else None)
        return {"miou": report.extra["miou"]}

    return stages.run(name, cfg, ("data", "refine") if crf else ("data",), predict,
                      inputs=checkpoint)


def crf_text(cfg: ExperimentConfig) -> str:
    """The recipe's CRF settings, as a table cell."""
    ref = cfg.refine
    unary = (f"label unary {ref.crf_label_confidence:g}" if ref.crf_unary == "labels"
             else "score unary")
    return (f"gaussian {ref.crf_gaussian_sxy:g}/{ref.crf_gaussian_compat:g}, bilateral "
            f"{ref.crf_bilateral_sxy:g}/{ref.crf_bilateral_srgb:g}/"
            f"{ref.crf_bilateral_compat:g}, {ref.crf_iterations} it., {unary}")


def knob_text(spec: str, cfg: ExperimentConfig) -> str:
    """The method's knobs (the defaults of its ``Params`` with the spec's values)."""
    from wsss.methods import get_method

    name, knobs = parse_spec(spec)
    params = cfg.with_overrides([f"method.name={name}", *knobs]).method.params
    values = dataclasses.asdict(get_method(name).parse_params(params))
    return ", ".join(f"{k}={v}" for k, v in values.items()) or "-"


def spread(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    """``mean ± std`` of ``values`` x ``scale`` (sample std, ddof 1; no ± for one value)."""
    mean = scale * float(np.mean(values))
    if len(values) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {scale * float(np.std(values, ddof=1)):.{digits}f}"


class Line(NamedTuple):
    """One line of the table: the same row of every seed's chain."""

    what: str
    rows: list[Row]

    def values(self, key: str) -> list[float]:
        return [row.result[key] for row in self.rows if key in row.result]

    def cells(self) -> list[str]:
        mious = [row.miou for row in self.rows]
        fp, fn = self.values("false_positive"), self.values("false_negative")
        errors = f"{100 * np.mean(fp):.1f} / {100 * np.mean(fn):.1f}" if fp else "-"
        notes = self.rows[0].notes
        if self.values("val_mAP"):
            notes += f"; val mAP {spread(self.values('val_mAP'), 1.0, 2)}"
        if self.values("best_epoch_miou"):
            notes += f"; best epoch {spread(self.values('best_epoch_miou'))}"
        return [self.what, f"**{spread(mious)}**",
                f"{100 * min(mious):.1f}..{100 * max(mious):.1f}",
                " / ".join(f"{100 * v:.1f}" for v in mious), errors, notes,
                f"{np.mean([row.minutes for row in self.rows]):.1f}"]


def lines_of(chains: list[list[Row]]) -> list[Line]:
    """The seeds' chains (one list of rows per seed, in the same order) as table lines."""
    names = [row.what for row in chains[0]]
    by_name = {name: [row for chain in chains for row in chain if row.what == name]
               for name in names}
    return [Line(name, by_name[name]) for name in names]


def shown_path(path: Path) -> str:
    """``path`` relative to the repository when inside it, else as given."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def render(lines: list[Line], ratios: list[float], cfg: ExperimentConfig, args,
           command: str, load: tuple) -> str:
    train, seg = cfg.train, cfg.segmenter
    config_text = args.config.read_bytes()
    overrides = f" with `{' '.join(args.overrides)}`" if args.overrides else ""
    out = [
        f"# Segmentation quality: {Path(cfg.data.root).name}", "",
        f"Recipe `{shown_path(args.config)}` (sha1 "
        f"{hashlib.sha1(config_text).hexdigest()[:10]}){overrides}: classifier "
        f"{cfg.model.backbone} ({cfg.model.pretrained or 'random init'}), {train.epochs} "
        f"epochs, {train.optimizer} {train.schedule} lr {train.lr:g}, batch {train.batch_size} x "
        f"{train.num_workers} Ray Train workers, crop {cfg.data.crop_size} at image scale "
        f"{cfg.data.image_scale:g} (x {cfg.data.scale_range[0]:g}-{cfg.data.scale_range[1]:g}); "
        f"maps at scales {list(cfg.cams.scales)}{' + flip' if cfg.cams.flip else ''}; "
        f"segmenter {seg.arch}, {seg.epochs} epochs, {seg.optimizer} {seg.schedule} lr "
        f"{seg.lr:g}, crop {seg.crop_size}, trained on the {args.segmenter_masks} masks. Masks "
        f"are scored on the train split, segmenters on val (the saved model's `wsss predict` "
        f"masks). mIoU in %.", "",
        f"Seeds {', '.join(map(str, args.seeds))}: each seed runs the whole chain (`train.seed`, "
        f"`affinity.seed` and `segmenter.seed` set to it; the data are the same). The mIoU "
        f"column is the mean ± sample std over the seeds, then min..max and each seed's "
        f"value; FP / FN, val mAP, best epoch and minutes are means over the seeds. FP / FN: "
        f"false positives and false negatives in % of each class's union, mean over classes "
        f"(IoU + FP + FN = 100; AdvCAM's analysis): FN > FP marks masks narrower than their "
        f"objects.", "",
        "How to read it, and what the MSRC-21 numbers say: `docs/quality.md`.", "",
        "| what | mIoU | min..max | per seed | FP / FN | knobs / notes | minutes |",
        "|---|---:|---:|---:|---:|---|---:|"]
    out += ["| " + " | ".join(line.cells()) + " |" for line in lines]
    if ratios:
        out += ["", f"- WSSS / full supervision (segmenter from the classifier, val): "
                    f"**{spread(ratios, 1.0, 2)}** (per seed: "
                    f"{', '.join(f'{r:.2f}' for r in ratios)})"]
    total = sum(row.minutes for line in lines for row in line.rows)
    out += [f"- total minutes of the stages, all seeds: {total:.0f}"]
    commits = sorted({row.result.get("commit", "unknown") for line in lines for row in line.rows})
    if commits != [code_version()]:  # stages reused from runs at other code
        out += [f"- the stages ran at commit(s) {', '.join(commits)} (reused from earlier runs of "
                f"this work folder, `stages.json`); this file was written at {code_version()}"]
    out += [""]
    return "\n".join(out + machine_lines(command, load)) + "\n"


def plot(lines: list[Line], path: Path, title: str) -> None:
    """Bars of the mean mIoU per line, each seed's value as a dot."""
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(lines) + 1.2))
    for y, line in enumerate(reversed(lines)):
        values = [100 * row.miou for row in line.rows]
        mean = float(np.mean(values))
        ax.barh(y, mean, color="#7f7f7f" if "prior" in line.what else "#1f77b4")
        ax.plot(values, [y] * len(values), "k.", markersize=4)
        ax.text(max(values) + 0.5, y, f"{mean:.1f}", va="center", fontsize=8)
    ax.set_yticks(range(len(lines)), [line.what for line in reversed(lines)])
    ax.axvline(100 * float(np.mean([r.miou for r in lines[0].rows])), color="#7f7f7f",
               linestyle="--", linewidth=1)
    ax.set_xlabel("mIoU (%): bar = mean over seeds, dots = seeds")
    ax.set_xlim(0, 100)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def segmenter_rows(stages: Stages, cfg: ExperimentConfig, args, first: dict[str, Any],
                   masks: Path) -> tuple[list[Row], float | None]:
    """The segmenter rows of one seed (``args.segmenters``, trained on ``masks``) and the
    ratio WSSS / full supervision when both were trained."""
    from wsss.data.voc import MASK_DIR

    plans = {"random": ("segmenter, random init", masks, None),
             "classifier": ("segmenter, from the classifier", masks, first["checkpoint"]),
             "full": ("fully supervised, from the classifier", Path(cfg.data.root) / MASK_DIR,
                      first["checkpoint"])}
    rows, results = [], {}
    for name in args.segmenters:
        key, mask_dir, init = plans[name]
        trained = segmenter_stage(stages, cfg, key, mask_dir, init, args.work)
        results[name] = predict_stage(stages, cfg, f"predict {key}", trained["checkpoint"],
                                      False, args.work)
        note = ("ground-truth masks of train" if name == "full"
                else f"trained on the {args.segmenter_masks} masks")
        rows.append(Row(f"{key} (val)", results[name]["miou"], note,
                        trained["minutes"] + results[name]["minutes"],
                        {"best_epoch_miou": trained["best_epoch_miou"],
                         "commit": trained["commit"]}))
        if name == "classifier" and args.predict_crf:
            refined = predict_stage(stages, cfg, f"predict {key} + CRF", trained["checkpoint"],
                                    True, args.work)
            rows.append(Row(f"{key} + CRF (val)", refined["miou"],
                            f"wsss predict --crf: {crf_text(cfg)}", refined["minutes"], refined))
    full = results.get("full", {}).get("miou")
    ratio = results["classifier"]["miou"] / full if full and "classifier" in results else None
    return rows, ratio


def chain(stages: Stages, cfg: ExperimentConfig, args) -> tuple[list[Row], float | None]:
    """Every row of one seed's chain (``cfg`` carries the seed), and its WSSS / full ratio."""
    floor = stages.run("label prior", cfg, ("data",), lambda tag: label_prior_miou(cfg))
    rows = [Row("label prior (uniform present class)", floor["miou"], "-", floor["minutes"],
                floor)]
    first = method_stages(stages, cfg, args.methods[0], args.work)
    crf = crf_stage(stages, cfg, args.methods[0], first["maps"], args.work)
    walk_rows = ([] if args.no_random_walk else
                 random_walk_stages(stages, cfg, args.methods[0], first, args.work))
    ratio, seg_rows = None, []
    if args.segmenters:  # before the other methods: the pipeline's numbers come first
        masks = {"CRF": crf, "walk + CRF": walk_rows[-1].result if walk_rows else None}
        if masks[args.segmenter_masks] is None:
            raise SystemExit("--segmenter-masks 'walk + CRF' needs the random-walk rows")
        seg_rows, ratio = segmenter_rows(stages, cfg, args, first,
                                         Path(masks[args.segmenter_masks]["masks"]))
    for spec in args.methods:
        row = first if spec == args.methods[0] else method_stages(stages, cfg, spec, args.work)
        rows.append(Row(f"maps: {spec}", row["miou"], knob_text(spec, cfg), row["minutes"],
                        row))
    rows.append(Row(f"maps + CRF: {args.methods[0]}", crf["miou"], crf_text(cfg), crf["minutes"],
                    crf))
    return rows + walk_rows + seg_rows, ratio


def write_json(path: Path, lines: list[Line], ratios: list[float], seeds: list[int]) -> None:
    """``{"seeds": [...], "rows": {what: [mIoU per seed]}, "ratio": [...]}``, atomically."""
    data = {"seeds": seeds, "rows": {line.what: [row.miou for row in line.rows]
                                     for line in lines}, "ratio": ratios}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def seeded(cfg: ExperimentConfig, seed: int) -> ExperimentConfig:
    """``cfg`` with every training seed (classifier, affinity network, segmenter) = ``seed``."""
    return cfg.with_overrides([f"train.seed={seed}", f"affinity.seed={seed}",
                               f"segmenter.seed={seed}"])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    load_start = os.getloadavg()
    from wsss.ray_utils import init_ray

    args.work = args.work.resolve()  # Ray workers and later stages run elsewhere
    args.work.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{(args.work / 'mlflow.db').resolve()}"
    cfg = load_config(args.config, [f"data.root={args.data.resolve()}", f"tracking.uri={uri}",
                                    "tracking.experiment=bench-quality", *args.overrides])
    init_ray()
    stages = Stages(args.work)
    chains, ratios = [], []
    for seed in args.seeds:
        rows, ratio = chain(stages, seeded(cfg, seed), args)
        chains.append(rows)
        ratios += [] if ratio is None else [ratio]
    lines = lines_of(chains)
    if args.json is not None:
        write_json(args.json, lines, ratios, args.seeds)
    publish(render(lines, ratios, cfg, args, command, (load_start, os.getloadavg())), args.out)
    if args.out is not None:
        plot(lines, args.out.with_suffix(".png"), f"{Path(cfg.data.root).name}: mIoU per stage, "
                                                  f"{len(args.seeds)} seed(s)")


if __name__ == "__main__":
    main()
