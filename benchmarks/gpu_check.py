"""GPU check: the torch-level compute paths of wsss on one device, checked and timed.

Correctness (each against a bound stated in ``BOUNDS``):

* localization maps (CAM and Grad-CAM, two scales + flip) on the device at fp32 and bf16 vs
  the same maps on the CPU in float64 (relative error: max |device - reference| / max
  |reference|); fp32 runs with TF32 off (PyTorch's default lets cuDNN convolutions use TF32,
  about 1e-3 relative);
* Grad-CAM vs pytorch-grad-cam (the ``grad-cam`` package; skipped with a note when it is not
  importable): every present class of every image, both min-max normalised;
* one training step (classifier and segmenter): loss and gradients, device vs CPU;
* the segmenter's prediction and the random walk (``wsss.core.affinity.propagate``), device vs
  CPU float64;
* poisoned outputs: the CUDA caching allocator is filled with NaN blocks and torch's
  ``fill_uninitialized_memory`` is on, then every output above must come back finite.

Speed on ResNet-50 (``weights=None``: nothing downloads) at 448 px, batch 32: the bare forward
pass, CAM, Grad-CAM over all present classes (vs pytorch-grad-cam), classifier and segmenter
training, at fp32 / bf16 / bf16 + channels-last, with the peak GPU memory of each (warm-up
iterations, ``torch.cuda.synchronize`` around ``time.perf_counter``).

Imports torch, torchvision, numpy and wsss modules that need no Ray, MLflow, Optuna or
pydensecrf; ``wsss.config`` and ``wsss.storage`` still import PyYAML and pyarrow, so a machine
with torch alone needs their wheels carried and installed first (``pip download pyyaml pyarrow
grad-cam -d .whl`` here, ``pip install --no-index --find-links .whl ...`` there). Prints a short table last; writes ``gpu_check.json`` and ``gpu_check.md`` under
``$OUT`` when that variable is set, and the markdown to ``--write-results`` when given.

    python benchmarks/gpu_check.py                                  # cuda if available
    python benchmarks/gpu_check.py --quick --device cpu             # tiny sizes, CPU, < 1 min
    python benchmarks/gpu_check.py --write-results benchmarks/results/gpu.md
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wsss.config import ExperimentConfig  # noqa: E402
from wsss.core.affinity import pair_offsets, propagate  # noqa: E402
from wsss.core.maps import gradcam_maps, localization_maps  # noqa: E402
from wsss.core.precision import (autocast, check_precision, grad_scaler,  # noqa: E402
                                 to_memory_format)
from wsss.methods import get_method  # noqa: E402
from wsss.models import CamClassifier, build_backbone  # noqa: E402
from wsss.models.segmenter import build_segmenter  # noqa: E402
from wsss.train.steps import classifier_step, predict_probs, segmenter_step  # noqa: E402

# relative-error bounds of the correctness checks
BOUNDS = {"fp32": 1e-4, "bf16": 2e-2, "grads_fp32": 1e-3, "pytorch-grad-cam": 1e-4}
# speed targets: (name, numerator variant, denominator variant, minimum ratio)
TARGETS = (("CAM images/s >= 0.9x bare bf16 forward", "cam bf16", "forward bf16", 0.9),
           ("Grad-CAM (all present classes) maps/s >= 10x pytorch-grad-cam",
            "gradcam fp32", "pytorch-grad-cam fp32", 10.0),
           ("classifier training bf16 + channels-last >= 2x fp32 images/s",
            "train-cls bf16+cl", "train-cls fp32", 2.0))
VARIANTS = (("fp32", "fp32", False), ("bf16", "bf16", False), ("bf16+cl", "bf16", True))


@dataclass(frozen=True)
class Sizes:
    backbone: str
    segmenter: str
    image: int  # speed: square images of this side (px)
    batch: int
    check_image: int  # correctness: square images of this side
    check_batch: int
    classes: int  # foreground classes
    present: int  # present classes per image
    warmup: int
    iters: int


FULL = Sizes("resnet50", "deeplabv3_resnet50", 448, 32, 224, 4, 20, 3, 3, 10)
QUICK = Sizes("resnet18", "deeplabv3_resnet18", 64, 2, 64, 2, 5, 2, 1, 1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes (ResNet-18, 64 px, batch 2): a CPU smoke run")
    parser.add_argument("--write-results", type=Path,
                        help="also write the markdown report here (benchmarks/results/gpu.md)")
    return parser.parse_args(argv)


# -- helpers -----------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn: Callable[[], Any], device: torch.device, warmup: int,
                     iters: int) -> float:
    """Wall seconds per call of ``fn`` after ``warmup`` calls, the device synchronised before
    and after the timed calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / iters


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """cuDNN / cuBLAS TF32 on or off for the block (PyTorch's defaults restored after)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """max |value - reference| / max |reference| (both taken to CPU float64)."""
    value, reference = value.detach().cpu().double(), reference.detach().cpu().double()
    return float((value - reference).abs().max() / reference.abs().max().clamp_min(1e-30))


def classifier(sizes: Sizes, seed: int = 0) -> CamClassifier:
    """An untrained CAM classifier with random batch-norm statistics (varied maps), eval."""
    torch.manual_seed(seed)
    model = CamClassifier(build_backbone(sizes.backbone), sizes.classes)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                count = module.num_features
                module.running_mean.copy_(torch.rand(count, generator=generator) - 0.5)
                module.running_var.copy_(0.5 + torch.rand(count, generator=generator))
    return model.eval()


def batch(sizes: Sizes, count: int, side: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random images (normalised float and uint8) [N, 3, side, side], ``sizes.present``
    present classes per image (multi-hot [N, C]) and a random mask [N, side, side]."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.zeros(count, sizes.classes)
    for row in range(count):
        labels[row, torch.randperm(sizes.classes, generator=generator)[:sizes.present]] = 1
    pixels = torch.randint(0, 256, (count, 3, side, side), dtype=torch.uint8, generator=generator)
    mask = torch.randint(0, sizes.classes + 1, (count, side, side), generator=generator)
    present = torch.cat([torch.ones(count, 1, dtype=torch.bool), labels > 0], dim=1)
    return {"image": torch.randn(count, 3, side, side, generator=generator), "labels": labels,
            "pixels": pixels, "mask": mask, "present": present}


def row(name: str, value: float | None, bound: float | None, note: str = "") -> dict[str, Any]:
    passed = None if value is None or bound is None else bool(value <= bound)
    return {"check": name, "value": value, "bound": bound, "pass": passed, "note": note}


# -- correctness -------------------------------------------------------------------------------
def check_maps(sizes: Sizes, device: torch.device) -> list[dict[str, Any]]:
    """CAM / Grad-CAM (scales 1.0 and 0.75, flip) on ``device`` at fp32 and bf16 vs CPU
    float64."""
    method = get_method("cam")(sizes.classes)
    data = batch(sizes, sizes.check_batch, sizes.check_image)
    model = classifier(sizes)
    reference_model = classifier(sizes).double()
    rows = []
    for kind in ("cam", "gradcam"):
        options = {"kind": kind, "scales": (1.0, 0.75), "flip": True}
        reference = localization_maps(method, reference_model, data["image"].double(),
                                      data["labels"], **options)
        for precision in ("fp32", "bf16"):
            if not supported(device, precision):
                rows.append(row(f"maps {kind} {precision} vs CPU float64", None, None,
                                f"{precision} not supported on {device}"))
                continue
            with tf32(False):
                maps = localization_maps(method, model.to(device), data["image"].to(device),
                                         data["labels"], precision=precision, **options)
            dtype_ok = maps.dtype == torch.float32
            rows.append(row(f"maps {kind} {precision} vs CPU float64",
                            relative_error(maps, reference), BOUNDS[precision],
                            "" if dtype_ok else f"maps came back {maps.dtype}, not float32"))
            if not dtype_ok:
                rows[-1]["pass"] = False
    return rows


def check_pytorch_grad_cam(sizes: Sizes, device: torch.device) -> list[dict[str, Any]]:
    """Our Grad-CAM of every present class vs pytorch-grad-cam's GradCAM (fp32, TF32 off),
    both upsampled to the input and min-max normalised per map."""
    name = "Grad-CAM vs pytorch-grad-cam (fp32)"
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError as err:
        print(f"note: pytorch-grad-cam not importable ({err}); comparison skipped")
        return [row(name, None, None, "skipped: pytorch-grad-cam not importable")]
    data = batch(sizes, sizes.check_batch, sizes.check_image)
    model, images = classifier(sizes).to(device), data["image"].to(device)
    labels = data["labels"]
    with tf32(False):
        ours = gradcam_maps(model, images, labels.to(device))
        ours = torch.nn.functional.interpolate(ours, size=images.shape[-2:], mode="bilinear",
                                               align_corners=False).cpu()
        present = [labels[b].nonzero().flatten().tolist() for b in range(len(labels))]
        worst, compared = 0.0, 0
        with GradCAM(model=model, target_layers=[model.backbone.layer4]) as reference:
            for slot in range(sizes.present):
                classes = [p[slot] for p in present]
                ref = reference(input_tensor=images,
                                targets=[ClassifierOutputTarget(c) for c in classes])
                mine = torch.stack([ours[b, c] for b, c in enumerate(classes)]).numpy()
                live = mine.max(axis=(1, 2)) > 0
                low = mine[live].min(axis=(1, 2), keepdims=True)
                span = mine[live].max(axis=(1, 2), keepdims=True) - low
                mine_norm = (mine[live] - low) / np.maximum(span, 1e-12)
                if live.any():
                    worst = max(worst, float(np.abs(mine_norm - ref[live]).max()))
                worst = max(worst, float(np.abs(ref[~live]).max(initial=0.0)))
                compared += int(live.sum())
    return [row(name, worst, BOUNDS["pytorch-grad-cam"], f"{compared} maps compared")]


def gradients(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.detach().flatten().cpu().double() for p in model.parameters()
                      if p.grad is not None])


def check_training(sizes: Sizes, device: torch.device) -> list[dict[str, Any]]:
    """One classifier and one segmenter step (SGD, lr 0: the gradients are kept, the weights
    not moved) on ``device`` vs on the CPU in fp32: loss and all gradients."""
    method = get_method("cam")(sizes.classes)
    data = batch(sizes, sizes.check_batch, sizes.check_image)
    cfg = ExperimentConfig()
    rows = []
    for precision in ("fp32", "bf16"):
        if not supported(device, precision):
            continue
        results = []
        for where, prec in (("cpu", "fp32"), (device, precision)):
            model = classifier(sizes).train().to(where)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
            with tf32(False):
                loss, _ = classifier_step(method, model, data, optimizer,
                                          grad_scaler(where, prec), where, prec)
            results.append((torch.tensor(loss), gradients(model)))
        rows.append(row(f"classifier step loss {precision} vs CPU fp32",
                        relative_error(results[1][0], results[0][0]), BOUNDS[precision]))
        if precision == "fp32":
            rows.append(row("classifier step gradients fp32 vs CPU fp32",
                            float((results[1][1] - results[0][1]).norm() / results[0][1].norm()),
                            BOUNDS["grads_fp32"], "relative L2 over all parameters"))
    seg_batch = {"image": data["pixels"], "mask": data["mask"], "present": data["present"]}
    results = []
    for where in ("cpu", device):
        torch.manual_seed(1)
        model = build_segmenter(sizes.segmenter, sizes.classes + 1).train().to(where)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        with tf32(False):
            losses = segmenter_step(model, seg_batch, optimizer, grad_scaler(where, "fp32"), cfg,
                                    True, where)
            probs = predict_probs(model.eval(), seg_batch["image"].to(where))
        results.append((torch.tensor(losses["loss"]), gradients(model), probs))
    rows.append(row("segmenter step loss fp32 vs CPU fp32",
                    relative_error(results[1][0], results[0][0]), BOUNDS["fp32"]))
    rows.append(row("segmenter step gradients fp32 vs CPU fp32",
                    float((results[1][1] - results[0][1]).norm() / results[0][1].norm()),
                    BOUNDS["grads_fp32"], "relative L2 over all parameters"))
    rows.append(row("segmenter prediction fp32 vs CPU fp32",
                    relative_error(results[1][2], results[0][2]), BOUNDS["fp32"]))
    return rows


def random_walk_inputs(sizes: Sizes) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Maps [K, H, W] in [0, 1], affinities [P, h, w] on the stride-8 grid, offsets [P, 2]."""
    generator = torch.Generator().manual_seed(3)
    side, offsets = sizes.check_image, pair_offsets(5)
    maps = torch.rand(sizes.present, side, side, generator=generator)
    cells = -(-side // 8)
    affinities = torch.rand(len(offsets), cells, cells, generator=generator)
    return maps, affinities, offsets


def check_random_walk(sizes: Sizes, device: torch.device) -> list[dict[str, Any]]:
    maps, affinities, offsets = random_walk_inputs(sizes)
    reference = propagate(maps.double(), affinities.double(), offsets, 8.0, 16)
    walked = propagate(maps.to(device), affinities.to(device), offsets, 8.0, 16)
    return [row("random walk fp32 vs CPU float64", relative_error(walked, reference),
                BOUNDS["fp32"])]


def poison_allocator(device: torch.device) -> None:
    """Fill blocks of the CUDA caching allocator with NaN and free them, so a later output
    that is allocated but not fully written shows NaN (no-op on other devices)."""
    if device.type != "cuda":
        return
    blocks = [torch.full((size,), float("nan"), device=device)
              for size in [2 ** k for k in range(10, 28, 2)] for _ in range(3)]
    del blocks


def check_poisoned_outputs(sizes: Sizes, device: torch.device) -> list[dict[str, Any]]:
    """Every output of the paths above, computed after :func:`poison_allocator` with
    ``torch.utils.deterministic.fill_uninitialized_memory`` on: all must be finite."""
    method = get_method("cam")(sizes.classes)
    data = batch(sizes, sizes.check_batch, sizes.check_image)
    model = classifier(sizes).to(device)
    precision = "bf16" if supported(device, "bf16") else "fp32"
    outputs: dict[str, torch.Tensor] = {}
    torch.use_deterministic_algorithms(True, warn_only=True)  # fills torch.empty with NaN
    try:
        for kind in ("cam", "gradcam"):
            poison_allocator(device)
            outputs[f"{kind} maps"] = localization_maps(
                method, model, data["image"].to(device), data["labels"], kind=kind,
                scales=(1.0, 0.75), flip=True, precision=precision)
        poison_allocator(device)
        segmenter = build_segmenter(sizes.segmenter, sizes.classes + 1).to(device).eval()
        outputs["segmenter probabilities"] = predict_probs(segmenter, data["pixels"].to(device),
                                                           precision=precision)
        poison_allocator(device)
        maps, affinities, offsets = random_walk_inputs(sizes)
        outputs["random walk"] = propagate(maps.to(device), affinities.to(device), offsets, 8.0,
                                           16)
        poison_allocator(device)
        model.train()
        classifier_step(method, model, data, torch.optim.SGD(model.parameters(), lr=0.0),
                        grad_scaler(device, precision), device, precision)
        outputs["classifier gradients"] = gradients(model)
    finally:
        torch.use_deterministic_algorithms(False)
    return [row(f"poisoned outputs: {name} non-finite values",
                float((~torch.isfinite(value)).sum()), 0.0, f"{precision}, {value.numel()} values")
            for name, value in outputs.items()]


def supported(device: torch.device, precision: str) -> bool:
    try:
        check_precision(device, precision, "precision")
    except ValueError:
        return False
    return True


# -- speed -------------------------------------------------------------------------------------
def peak_memory_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2 ** 30


def measure(name: str, fn: Callable[[], Any], items: int, unit: str, device: torch.device,
            sizes: Sizes) -> dict[str, Any]:
    """Throughput of ``fn`` (``items`` per call) and its peak GPU memory (reset before)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    seconds = seconds_per_call(fn, device, sizes.warmup, sizes.iters)
    result = {"variant": name, "per_s": items / seconds, "unit": unit,
              "seconds_per_batch": seconds, "peak_gib": peak_memory_gib(device)}
    print(f"  {name:28s} {result['per_s']:10.1f} {unit}/s"
          + (f"  peak {result['peak_gib']:.1f} GiB" if result["peak_gib"] is not None else ""))
    return result


def speed(sizes: Sizes, device: torch.device) -> list[dict[str, Any]]:
    """Forward, CAM, Grad-CAM, classifier and segmenter training at every supported variant,
    and pytorch-grad-cam at fp32 (PyTorch's default TF32 setting, cuDNN autotuning on)."""
    torch.backends.cudnn.benchmark = True
    method = get_method("cam")(sizes.classes)
    data = {k: v.to(device) for k, v in batch(sizes, sizes.batch, sizes.image).items()}
    maps_per_batch = int(data["labels"].sum())
    cfg = ExperimentConfig()
    rows = []
    for label, precision, channels_last in VARIANTS:
        if not supported(device, precision):
            print(f"  {label}: not supported on {device}, skipped")
            continue
        model = to_memory_format(classifier(sizes).to(device), channels_last)
        images = to_memory_format(data["image"], channels_last)

        def forward() -> torch.Tensor:
            with torch.no_grad(), autocast(device, precision):
                return model(images)

        rows.append(measure(f"forward {label}", forward, sizes.batch, "images", device, sizes))
        for kind in ("cam", "gradcam"):
            rows.append(measure(
                f"{kind} {label}",
                lambda: localization_maps(method, model, images, data["labels"], kind=kind,
                                          precision=precision),
                maps_per_batch, "maps", device, sizes))
            rows[-1]["images_per_s"] = rows[-1]["per_s"] * sizes.batch / maps_per_batch
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        scaler = grad_scaler(device, precision)
        rows.append(measure(
            f"train-cls {label}",
            lambda: classifier_step(method, model, data, optimizer, scaler, device, precision,
                                    channels_last),
            sizes.batch, "images", device, sizes))
        del model, optimizer
        torch.manual_seed(0)
        segmenter = to_memory_format(
            build_segmenter(sizes.segmenter, sizes.classes + 1).to(device).train(), channels_last)
        seg_cfg = dataclasses.replace(cfg, segmenter=dataclasses.replace(
            cfg.segmenter, arch=sizes.segmenter, precision=precision,
            channels_last=channels_last))
        seg_optimizer = torch.optim.SGD(segmenter.parameters(), lr=1e-3, momentum=0.9)
        seg_batch = {"image": data["pixels"], "mask": data["mask"], "present": data["present"]}
        rows.append(measure(
            f"train-seg {label}",
            lambda: segmenter_step(segmenter, seg_batch, seg_optimizer, scaler, seg_cfg, True,
                                   device),
            sizes.batch, "images", device, sizes))
        del segmenter, seg_optimizer
    rows.extend(speed_pytorch_grad_cam(sizes, device, data))
    return rows


def speed_pytorch_grad_cam(sizes: Sizes, device: torch.device,
                           data: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    """pytorch-grad-cam's GradCAM over all present classes: one call per class slot (one
    target per image), as its API takes; its maps come back as numpy at input size."""
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError:
        print("  pytorch-grad-cam not importable: its speed is not measured")
        return []
    model = classifier(sizes).to(device)
    present = [data["labels"][b].nonzero().flatten().tolist() for b in range(sizes.batch)]
    targets = [[ClassifierOutputTarget(p[slot]) for p in present] for slot in range(sizes.present)]
    with GradCAM(model=model, target_layers=[model.backbone.layer4]) as reference:
        def run() -> None:
            for slot_targets in targets:
                reference(input_tensor=data["image"], targets=slot_targets)

        return [measure("pytorch-grad-cam fp32", run, sizes.batch * sizes.present, "maps",
                        device, sizes)]


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The speed targets of :data:`TARGETS`; CAM compares images/s with the forward pass."""
    found = {r["variant"]: r.get("images_per_s", r["per_s"]) if r["variant"].startswith("cam")
             else r["per_s"] for r in rows}
    out = []
    for name, top, bottom, minimum in TARGETS:
        if top in found and bottom in found:
            ratio = found[top] / found[bottom]
            out.append({"target": name, "ratio": ratio, "minimum": minimum,
                        "pass": bool(ratio >= minimum)})
        else:
            out.append({"target": name, "ratio": None, "minimum": minimum, "pass": None})
    return out


# -- report ------------------------------------------------------------------------------------
def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment(device: torch.device, quick: bool, argv: list[str]) -> dict[str, Any]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {"device": str(device), "device_name": name,
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "quick": quick,
            "command": "python benchmarks/gpu_check.py " + shlex.join(argv),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def _number(value: float | None, digits: str = ".2e") -> str:
    return "-" if value is None else format(value, digits)


def _verdict(passed: bool | None) -> str:
    return {True: "pass", False: "FAIL", None: "-"}[passed]


def markdown(results: dict[str, Any]) -> str:
    env = results["environment"]
    lines = [f"# GPU check: {env['device_name']} ({env['device']})", "",
             f"torch {env['torch']} (CUDA {env['cuda']}), Python {env['python']}, {env['date']}."
             + (" **Quick mode: tiny sizes, not a measurement.**" if env["quick"] else ""), "",
             f"    {env['command']}", "", "## Correctness", "",
             "| check | value | bound | result | note |", "|---|---:|---:|---|---|"]
    lines += [f"| {r['check']} | {_number(r['value'])} | {_number(r['bound'])} | "
              f"{_verdict(r['pass'])} | {r['note']} |" for r in results["correctness"]]
    lines += ["", "## Speed", "", "| variant | per second | seconds per batch | peak GiB |",
              "|---|---:|---:|---:|"]
    lines += [f"| {r['variant']} | {r['per_s']:.1f} {r['unit']} | {r['seconds_per_batch']:.4f} | "
              f"{_number(r['peak_gib'], '.2f')} |" for r in results["speed"]]
    lines += ["", "## Targets", "", "| target | ratio | minimum | result |", "|---|---:|---:|---|"]
    lines += [f"| {t['target']} | {_number(t['ratio'], '.2f')} | {t['minimum']} | "
              f"{_verdict(t['pass'])} |" for t in results["targets"]]
    return "\n".join(lines) + "\n"


def summary(results: dict[str, Any]) -> str:
    """The short table printed last: every check and target with its verdict."""
    lines = [f"{'check / target':62s} {'value':>10s} {'bound':>10s}  result"]
    for r in results["correctness"]:
        lines.append(f"{r['check'][:62]:62s} {_number(r['value']):>10s} {_number(r['bound']):>10s}"
                     f"  {_verdict(r['pass'])}")
    for t in results["targets"]:
        lines.append(f"{t['target'][:62]:62s} {_number(t['ratio'], '.2f'):>10s} "
                     f"{t['minimum']:>10}  {_verdict(t['pass'])}")
    env = results["environment"]
    lines.append(f"{env['device_name']} ({env['device']}), torch {env['torch']}"
                 + (", quick mode" if env["quick"] else ""))
    return "\n".join(lines)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    temporary.replace(path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    device = torch.device(args.device)
    sizes = QUICK if args.quick else FULL
    results: dict[str, Any] = {"environment": environment(device, args.quick, argv),
                               "sizes": sizes.__dict__}
    print(f"correctness on {device} ({sizes.backbone}, {sizes.check_image} px, batch "
          f"{sizes.check_batch})")
    correctness = []
    for check in (check_maps, check_pytorch_grad_cam, check_training, check_random_walk,
                  check_poisoned_outputs):
        correctness += check(sizes, device)
    results["correctness"] = correctness
    print(f"speed on {device} ({sizes.backbone} / {sizes.segmenter}, {sizes.image} px, batch "
          f"{sizes.batch}, {sizes.warmup} warm-up + {sizes.iters} timed iterations)")
    results["speed"] = speed(sizes, device)
    results["targets"] = targets(results["speed"])
    report = markdown(results)
    out = os.environ.get("OUT")
    if out:
        write(Path(out) / "gpu_check.json", json.dumps(results, indent=2) + "\n")
        write(Path(out) / "gpu_check.md", report)
    if args.write_results:
        write(args.write_results, report)
    print()
    print(summary(results))
    return results


if __name__ == "__main__":
    main()
