"""Frozen, validated configuration for every stage.

A config is a tree of frozen dataclasses. It is built from a plain dict (or a YAML file) and
accepts dotted overrides such as ``train.lr=0.01`` or ``method.params.hide_prob=0.5``. Unknown
keys and out-of-range values fail early with a message that lists the valid choices.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

import yaml

from wsss.crf_limits import crf_violation
from wsss.errors import ConfigError
from wsss.names import experiment_name_problem, path_component_problem, shown

from wsss.storage import absolute

T = TypeVar("T")

BACKBONES = ("resnet18", "resnet34", "resnet50")
# compute precision of training and map extraction (``wsss.core.precision``)
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class DataConfig:
    """Where the dataset lives and at what resolution the networks see it.

    ``image_scale`` is the resolution the classifier and the segmenter work at, as a factor of
    the image as loaded (at most ``max_image_side`` px a side): training rescales each image by
    ``image_scale`` x a factor drawn from ``scale_range`` and takes a ``crop_size`` (classifier)
    or ``segmenter.crop_size`` crop; maps and predictions are computed on whole images at the
    ``image_scale`` their checkpoint was trained at and upsampled to the loaded size, where
    they are scored (``wsss.data.transforms``). 0.5 halves the compute of every stage.
    """

    root: str = "data/synth"
    train_split: str = "train"
    val_split: str = "val"
    crop_size: int = 112
    image_scale: float = 1.0
    scale_range: tuple[float, ...] = (0.75, 1.25)
    max_image_side: int = 1024
    loader_workers: int = 0

    def validate(self) -> None:
        for key in ("train_split", "val_split"):  # files <root>/ImageSets/Segmentation/<x>.txt
            _check_name(f"data.{key}", getattr(self, key), path_component_problem)
        check_value(self.crop_size >= 16, "data.crop_size", self.crop_size, ">= 16")
        check_value(0 < self.image_scale <= 4, "data.image_scale", self.image_scale, "in (0, 4]")
        check_value(len(self.scale_range) == 2 and 0 < self.scale_range[0] <= self.scale_range[1],
                    "data.scale_range", self.scale_range, "[low, high] with 0 < low <= high")
        check_value(self.max_image_side >= self.crop_size, "data.max_image_side",
                    self.max_image_side, ">= data.crop_size")
        check_value(self.loader_workers >= 0, "data.loader_workers", self.loader_workers, ">= 0")


@dataclass(frozen=True)
class ModelConfig:
    """Backbone choice. ``pretrained`` is None, ``"imagenet"`` or a local checkpoint path."""

    backbone: str = "resnet18"
    pretrained: str | None = None

    def validate(self) -> None:
        _check_choice("model.backbone", self.backbone, BACKBONES)


@dataclass(frozen=True)
class MethodConfig:
    """A registered method name and its own knobs. The methods layer checks both
    (``wsss.methods.check_method_config``, with the method's ``Params``) where a method is
    trained; this module imports no method."""

    name: str = "cam"
    params: Mapping[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        check_value(bool(self.name), "method.name", self.name, "a registered method's name")


OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "poly", "onecycle")

# The optimiser recipe follows from where the weights start. The dataclass defaults below are
# the from-scratch recipe (AdamW, one-cycle, lr 1e-3, weight decay 1e-2: on MSRC-21 from
# random weights, benchmarks/results/quality.md). A config that starts from pretrained weights
# (``model.pretrained`` for ``train``, ``segmenter.pretrained_backbone`` for ``segmenter``)
# takes the fine-tuning recipe for each of these keys it does not set itself: SGD with poly
# decay (AffinityNet/SEAM's classifier: lr 0.01, 10x for the new head; mmsegmentation's
# DeepLabV3: lr 0.01, weight decay 5e-4).
FINE_TUNING = {
    "train": {"optimizer": "sgd", "schedule": "poly", "lr": 0.01, "weight_decay": 1e-4,
              "head_lr_mult": 10.0},
    "segmenter": {"optimizer": "sgd", "schedule": "poly", "lr": 0.01, "weight_decay": 5e-4,
                  "head_lr_mult": 1.0},
}
WEIGHTS_KEYS = {"train": ("model", "pretrained"), "segmenter": ("segmenter", "pretrained_backbone")}


def with_weights_recipe(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` (a nested config dict as written) with :data:`FINE_TUNING`'s values for the
    optimiser keys it leaves out of each section whose weights start pretrained."""
    out = {key: dict(value) if isinstance(value, Mapping) else value
           for key, value in data.items()}
    for section, (weights_section, weights_key) in WEIGHTS_KEYS.items():
        weights = out.get(weights_section)
        if isinstance(weights, Mapping) and weights.get(weights_key) is not None:
            given = out.setdefault(section, {})
            if isinstance(given, dict):
                out[section] = {**FINE_TUNING[section], **given}
    return out


def _check_recipe(prefix: str, section: Any) -> None:
    """The optimiser and schedule fields shared by ``train`` and ``segmenter`` (their meaning:
    ``wsss.train.optim``)."""
    check_value(section.epochs >= 1, f"{prefix}.epochs", section.epochs, ">= 1")
    check_value(section.lr > 0, f"{prefix}.lr", section.lr, "> 0")
    check_value(section.weight_decay >= 0, f"{prefix}.weight_decay", section.weight_decay, ">= 0")
    _check_choice(f"{prefix}.optimizer", section.optimizer, OPTIMIZERS)
    _check_choice(f"{prefix}.schedule", section.schedule, SCHEDULES)
    check_value(section.head_lr_mult > 0, f"{prefix}.head_lr_mult", section.head_lr_mult, "> 0")
    warmup = section.warmup_epochs
    if warmup is not None:  # one-cycle needs a rising phase
        onecycle = section.schedule == "onecycle"
        check_value((warmup > 0 if onecycle else warmup >= 0) and warmup < section.epochs,
                    f"{prefix}.warmup_epochs", warmup,
                    f"{'> 0' if onecycle else '>= 0'} and < {prefix}.epochs "
                    f"({section.epochs}) with schedule {section.schedule}, or null")


@dataclass(frozen=True)
class TrainConfig:
    """Classifier optimisation and Ray Train scaling. ``use_gpu=None`` means auto-detect.

    ``optimizer`` (sgd | adamw), ``schedule`` (cosine | poly | onecycle, stepped every batch),
    ``warmup_epochs`` (None: the schedule's own) and ``head_lr_mult`` (learning-rate factor of
    the parameters outside the backbone): see ``wsss.train.optim``. Defaults: the from-scratch
    recipe; with ``model.pretrained``, :data:`FINE_TUNING` for the keys not set.

    ``precision`` (fp32 | bf16 | fp16: autocast, with a gradient scaler for fp16; fp16 needs
    CUDA) and ``channels_last`` (the NHWC memory format): see ``wsss.core.precision``.
    """

    epochs: int = 8
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-2
    optimizer: str = "adamw"
    schedule: str = "onecycle"
    warmup_epochs: float | None = None
    head_lr_mult: float = 1.0
    num_workers: int = 2
    use_gpu: bool | None = None
    seed: int = 0
    max_failures: int = 2  # worker-group restarts (from the last checkpoint) before giving up
    precision: str = "fp32"
    channels_last: bool = False

    def validate(self) -> None:
        _check_recipe("train", self)
        _check_choice("train.precision", self.precision, PRECISIONS)
        check_value(self.batch_size >= 1, "train.batch_size", self.batch_size, ">= 1")
        check_value(self.num_workers >= 1, "train.num_workers", self.num_workers, ">= 1")
        check_value(self.max_failures >= -1, "train.max_failures", self.max_failures,
                    ">= -1 (-1: retry forever)")


@dataclass(frozen=True)
class CamConfig:
    """Localization-map extraction: the map kind, test-time scales and flip.

    ``kind``: a registered map kind (``wsss.core.map_kinds``: cam, gradcam, layercam...) or
    ``"auto"``; ``kind="auto"`` and ``layer=None`` take the method's own choice (``gradcam`` ->
    Grad-CAM). The core layer checks ``kind`` and ``layer`` against the registry and the
    checkpoint's method before any map is made (``wsss.core.map_kinds.map_kind_for``).
    ``precision`` and ``channels_last`` as in ``train`` (``wsss.core.precision``); maps are
    float32 whatever the precision.
    """

    kind: str = "auto"
    layer: str | None = None
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    batch_size: int = 16
    precision: str = "fp32"
    channels_last: bool = False

    def validate(self) -> None:
        check_value(bool(self.kind), "cams.kind", self.kind, "auto or a registered map kind")
        _check_choice("cams.precision", self.precision, PRECISIONS)
        check_value(len(self.scales) > 0 and all(s > 0 for s in self.scales), "cams.scales",
                    self.scales, "a non-empty list of positive numbers")
        check_value(self.batch_size >= 1, "cams.batch_size", self.batch_size, ">= 1")


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow destination. ``uri=None`` means $MLFLOW_TRACKING_URI or the local default store."""

    uri: str | None = None
    experiment: str = "wsss"

    def validate(self) -> None:
        _check_name("tracking.experiment", self.experiment, experiment_name_problem)


BG_MODES = ("threshold", "power")
CRF_UNARIES = ("scores", "labels")
SEGMENTER_ARCHS = ("deeplabv3_resnet18", "deeplabv3_resnet50")
AFFINITY_HEADS = ("feature", "boundary")  # AffinityNet's features, IRNet's boundary map
SEGMENTER_MODES = ("ce", "sec")


@dataclass(frozen=True)
class RefineConfig:
    """Maps -> pseudo-masks: background score, dense CRF and confidence marking.

    Background score (datasets with a background class): ``bg_mode="threshold"`` uses the
    constant ``bg_threshold``; ``"power"`` uses ``(1 - max_c map) ** bg_power``. The CRF
    (``crf_*``, pixel units for ``sxy``, RGB units for ``srgb``) runs over the present classes.
    ``crf_min_prob`` clips probabilities before the unary ``-log p``. ``crf_unary="scores"``
    takes ``p`` from the normalised scores; ``"labels"`` from their arg-max label alone, which
    gets probability ``crf_label_confidence`` > 0.5 (the rest share the remainder), so the CRF moves
    labels by image evidence without trusting the maps' poorly calibrated magnitudes. Pixels labelled
    foreground whose max map is below ``fg_confidence``, or background whose max map is above
    ``bg_confidence``, become 255 (ignored); the defaults mark nothing.

    Random walk (AffinityNet, Ahn & Kwak, CVPR 2018, Sec. 3.4): with ``affinity`` (the
    checkpoint of ``wsss train-affinity``), the maps are first propagated along the network's
    pixel affinities: transition matrix ``D^-1 A^rw_beta``, ``rw_iterations`` steps, at the
    network's feature resolution (``wsss.core.affinity.propagate``); the background score, CRF
    and confidence marking then work on the propagated maps. ``rw_iterations`` counts
    applications of T: the reference code squares T eight times (T^256) on 40x40-cell maps;
    each step here moves mass up to ``affinity.radius`` cells, so 16 steps of radius 5 cross a
    photo at stride 8 and half scale (20 x 14 cells).
    """

    bg_mode: str = "threshold"
    bg_threshold: float = 0.25
    bg_power: float = 4.0
    crf: bool = True
    crf_gaussian_sxy: float = 3.0
    crf_gaussian_compat: float = 3.0
    crf_bilateral_sxy: float = 80.0
    crf_bilateral_srgb: float = 13.0
    crf_bilateral_compat: float = 10.0
    crf_iterations: int = 10
    crf_min_prob: float = 1e-5
    crf_unary: str = "scores"
    crf_label_confidence: float = 0.7
    fg_confidence: float = 0.0
    bg_confidence: float = 1.0
    affinity: str | None = None
    rw_beta: float = 8.0
    rw_iterations: int = 16

    def validate(self) -> None:
        _check_choice("refine.bg_mode", self.bg_mode, BG_MODES)
        check_value(self.rw_beta > 0, "refine.rw_beta", self.rw_beta, "> 0")
        check_value(self.rw_iterations >= 1, "refine.rw_iterations", self.rw_iterations, ">= 1")
        check_value(0.0 <= self.bg_threshold <= 1.0, "refine.bg_threshold", self.bg_threshold,
                    "in [0, 1]")
        check_value(self.bg_power > 0, "refine.bg_power", self.bg_power, "> 0")
        self.check_crf()
        check_value(0.0 < self.crf_min_prob < 1.0, "refine.crf_min_prob", self.crf_min_prob,
                    "in (0, 1)")
        _check_choice("refine.crf_unary", self.crf_unary, CRF_UNARIES)
        # <= 0.5 would let a two-class image start from a uniform unary and come out one class
        check_value(0.5 < self.crf_label_confidence < 1.0, "refine.crf_label_confidence",
                    self.crf_label_confidence, "in (0.5, 1)")
        for key in ("fg_confidence", "bg_confidence"):
            check_value(0.0 <= getattr(self, key) <= 1.0, f"refine.{key}", getattr(self, key),
                        "in [0, 1]")

    def validate_for(self, max_image_side: int) -> None:
        """``validate``, and the CRF limits on images up to ``max_image_side`` px a side (what
        a stage checks before any work; raises ConfigError)."""
        self.validate()
        self.check_crf(max_image_side, max_image_side)

    def check_crf(self, width: int = 1, height: int = 1) -> None:
        """Raise ConfigError naming the first ``crf_*`` value that pydensecrf cannot compute
        correctly on images up to ``width`` x ``height`` px (limits: ``wsss.crf_limits``)."""
        found = crf_violation(dataclasses.asdict(self), width, height)
        if found is not None:
            check_value(False, f"refine.{found.key}", found.value, found.expected)


@dataclass(frozen=True)
class AffinityConfig:
    """The affinity network and the seeds it learns from (AffinityNet, Ahn & Kwak, CVPR 2018,
    Sec. 3.2-3.3; IRNet, Ahn et al., CVPR 2019, Sec. 3.1).

    Seeds come from confident maps (``wsss.core.affinity.seed_mask``): a pixel whose max map is
    at least ``fg_threshold`` takes its arg-max class, below ``bg_threshold`` it is background
    (datasets with one), and without a background class the arg-max must also lead the runner-up
    by ``margin``; all other pixels are ignored. With ``seed_crf`` (the default) a dense CRF with
    the ``refine.crf_*`` kernels moves the seeds' boundaries onto the image's edges
    (``wsss.core.affinity.crf_seed_mask``, IRNet Sec. 4.1). Pixel pairs within ``radius`` feature-map cells
    (stride 8) are labelled same / different from the seeds, and the network (the classifier's
    backbone plus a light head; ``wsss.models.affinity``) learns their affinity with Ray Train:
    from the L1 distance of its features (``head="feature"``, AffinityNet) or from the
    strongest boundary between the two cells (``head="boundary"``, IRNet Sec. 3.3),
    on ``crop_size`` px crops, with the recipe fields as in ``train`` (``wsss.train.optim``;
    ``head_lr_mult``: the new head learns faster than the trained backbone).
    """

    radius: int = 5
    fg_threshold: float = 0.30
    bg_threshold: float = 0.05
    margin: float = 0.1
    seed_crf: bool = True
    head: str = "feature"
    feature_dim: int = 448
    epochs: int = 8
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-2
    optimizer: str = "adamw"
    schedule: str = "onecycle"
    warmup_epochs: float | None = None
    head_lr_mult: float = 10.0
    crop_size: int = 112
    num_workers: int = 2
    use_gpu: bool | None = None
    seed: int = 0
    max_failures: int = 2  # worker-group restarts (from the last checkpoint) before giving up

    def validate(self) -> None:
        _check_recipe("affinity", self)
        check_value(1 <= self.radius <= 16, "affinity.radius", self.radius, "in [1, 16]")
        check_value(0.0 < self.fg_threshold <= 1.0, "affinity.fg_threshold",
                    self.fg_threshold, "in (0, 1]")
        check_value(0.0 <= self.bg_threshold <= self.fg_threshold, "affinity.bg_threshold",
                    self.bg_threshold, "in [0, affinity.fg_threshold]")
        check_value(0.0 <= self.margin < 1.0, "affinity.margin", self.margin, "in [0, 1)")
        _check_choice("affinity.head", self.head, AFFINITY_HEADS)
        check_value(self.feature_dim >= 8, "affinity.feature_dim", self.feature_dim, ">= 8")
        check_value(self.batch_size >= 1, "affinity.batch_size", self.batch_size, ">= 1")
        check_value(self.crop_size >= 32, "affinity.crop_size", self.crop_size, ">= 32")
        check_value(self.num_workers >= 1, "affinity.num_workers", self.num_workers, ">= 1")
        check_value(self.max_failures >= -1, "affinity.max_failures", self.max_failures,
                    ">= -1 (-1: retry forever)")


@dataclass(frozen=True)
class SegmenterConfig:
    """DeepLabV3 trained on pseudo-masks with Ray Train (``use_gpu=None``: auto-detect).

    ``mode="ce"``: cross-entropy on the pseudo-masks (255 ignored). ``mode="sec"``: the SEC
    losses (seeding on the masks' labelled pixels, expansion by global weighted rank pooling with
    ``sec_fg_decay`` / ``sec_bg_decay`` / ``sec_absent_decay``, constrain to the CRF of the
    output), computed at 1/``sec_downscale`` of the crop. ``init_from``: a classifier
    checkpoint whose backbone weights start the trunk (``wsss.train.segmenter.
    classifier_trunk_weights``; applied after ``pretrained_backbone``). ``optimizer``, ``schedule``,
    ``warmup_epochs`` and ``head_lr_mult`` (the DeepLab head's learning-rate factor) as in
    ``train`` (``wsss.train.optim``); with ``pretrained_backbone``, :data:`FINE_TUNING` for
    the keys not set. ``precision`` and ``channels_last`` as in ``train``
    (``wsss.core.precision``), for training, validation and prediction.
    """

    arch: str = "deeplabv3_resnet18"
    pretrained_backbone: str | None = None
    init_from: str | None = None
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-2
    optimizer: str = "adamw"
    schedule: str = "onecycle"
    warmup_epochs: float | None = None
    head_lr_mult: float = 1.0
    crop_size: int = 112
    num_workers: int = 2
    use_gpu: bool | None = None
    seed: int = 0
    mode: str = "ce"
    sec_downscale: int = 8
    sec_fg_decay: float = 0.996
    sec_bg_decay: float = 0.999
    sec_absent_decay: float = 0.0
    max_failures: int = 2  # worker-group restarts (from the last checkpoint) before giving up
    precision: str = "fp32"
    channels_last: bool = False

    def validate(self) -> None:
        _check_choice("segmenter.arch", self.arch, SEGMENTER_ARCHS)
        _check_choice("segmenter.precision", self.precision, PRECISIONS)
        _check_choice("segmenter.mode", self.mode, SEGMENTER_MODES)
        _check_recipe("segmenter", self)
        check_value(self.batch_size >= 1, "segmenter.batch_size", self.batch_size, ">= 1")
        check_value(self.crop_size >= 32, "segmenter.crop_size", self.crop_size, ">= 32")
        check_value(self.num_workers >= 1, "segmenter.num_workers", self.num_workers, ">= 1")
        check_value(self.max_failures >= -1, "segmenter.max_failures", self.max_failures,
                    ">= -1 (-1: retry forever)")
        check_value(1 <= self.sec_downscale <= self.crop_size // 4, "segmenter.sec_downscale",
                    self.sec_downscale, "in [1, crop_size / 4]")
        for key in ("sec_fg_decay", "sec_bg_decay", "sec_absent_decay"):
            check_value(0.0 <= getattr(self, key) <= 1.0, f"segmenter.{key}", getattr(self, key),
                        "in [0, 1]")


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything a stage needs; each stage reads the sections it uses."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cams: CamConfig = field(default_factory=CamConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    affinity: AffinityConfig = field(default_factory=AffinityConfig)
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)

    def validate(self) -> "ExperimentConfig":
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if hasattr(section, "validate"):
                section.validate()
        side = self.data.max_image_side  # the largest image any stage refines
        self.refine.check_crf(side, side)
        return self

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def with_overrides(self, overrides: Sequence[str]) -> "ExperimentConfig":
        return from_dict(apply_overrides(self.to_dict(), overrides))


def to_dict(cfg: Any) -> Any:
    """Turn a config tree into plain dicts/lists (YAML/JSON-able)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, Mapping):
        return {k: to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    return cfg


def from_dict(data: Mapping[str, Any] | None, cls: type[T] = ExperimentConfig,
              prefix: str = "") -> T:
    """Build a (validated, when top level) config of type ``cls`` from a nested dict."""
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; "
                          f"valid keys under '{prefix or '<root>'}': {', '.join(sorted(fields))}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        f = fields[name]
        sub = _dataclass_type(f)
        if sub is not None:
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key '{prefix}{name}' must be a mapping, got {value!r}")
            kwargs[name] = from_dict(value, sub, prefix=f"{prefix}{name}.")
        else:
            kwargs[name] = typed_value(f"{prefix}{name}", value, str(f.type))
    cfg = cls(**kwargs)
    if cls is ExperimentConfig:
        cfg.validate()
    return cfg


# Keys naming local files or folders; values that are not paths are left as they are.
PATH_KEYS = ("data.root", "model.pretrained", "segmenter.pretrained_backbone",
             "segmenter.init_from", "refine.affinity", "tracking.uri")
NOT_PATHS = ("imagenet",)


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read a YAML config (or the defaults when ``path`` is None) and apply dotted overrides;
    optimiser keys left unset follow the weights (:data:`FINE_TUNING`); relative paths under
    :data:`PATH_KEYS` made absolute (``wsss.storage.absolute``), as Ray workers run elsewhere.
    ConfigError names a missing file, a bad key or value."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        loaded = yaml.safe_load(path.read_text())
        if loaded is not None and not isinstance(loaded, Mapping):
            raise ConfigError(f"{path}: top level must be a mapping")
        data = dict(loaded or {})
    return _absolute_paths(from_dict(with_weights_recipe(apply_overrides(data, overrides))))


def _absolute_paths(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with the text values of :data:`PATH_KEYS` made absolute."""
    for key in PATH_KEYS:
        section_name, name = key.split(".")
        section = getattr(cfg, section_name)
        value = getattr(section, name)
        if isinstance(value, str) and value not in NOT_PATHS:
            section = dataclasses.replace(section, **{name: absolute(value)})
            cfg = dataclasses.replace(cfg, **{section_name: section})
    return cfg


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings to a nested dict; values are parsed as YAML scalars/lists."""
    out = to_dict(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key.path=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return out


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten a nested dict into dotted keys (for MLflow params)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


_TYPE_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false",
                    "str": "a string", "Mapping[str, Any]": "a mapping"}
_PLURALS = {"int": "integers", "float": "numbers", "bool": "booleans", "str": "strings"}


def typed_value(key: str, value: Any, annotation: str) -> Any:
    """``value`` checked against a dataclass field's annotation (as written in the class).

    Lists become tuples for ``tuple[X, ...]`` fields; a number given as a string (PyYAML reads
    ``1e-3`` as one) becomes a float. Raises ConfigError naming ``key`` and the expected type.
    Annotations it does not know pass the value through unchecked.
    """
    optional = annotation.endswith(" | None")
    kind = annotation.removesuffix(" | None")
    if value is None and optional:
        return None
    if kind == "float" and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if kind.startswith("tuple[") and kind.endswith(", ...]"):
        item = kind[len("tuple["):-len(", ...]")]
        if isinstance(value, (list, tuple)) and all(_type_ok(v, item) for v in value):
            return tuple(value)
        expected = f"a list of {_PLURALS.get(item, item)}"
    elif kind not in _TYPE_NAMES or _type_ok(value, kind):
        return value
    else:
        expected = _TYPE_NAMES[kind]
    expected += " or null" if optional else ""
    raise ConfigError(f"config value {key}={value!r} has the wrong type: expected {expected}")


def _type_ok(value: Any, kind: str) -> bool:
    """Whether ``value`` is of the simple annotation ``kind`` (bools are not numbers here)."""
    if kind in ("int", "float") and isinstance(value, bool):
        return False
    if kind == "int":
        return isinstance(value, numbers.Integral)
    if kind == "float":
        return isinstance(value, numbers.Real)
    types = {"bool": bool, "str": str, "Mapping[str, Any]": Mapping}
    return kind not in types or isinstance(value, types[kind])


def _dataclass_type(f: dataclasses.Field) -> type | None:
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
    return type(default) if dataclasses.is_dataclass(default) else None


def check_value(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"config value {key}={value!r} is out of range: expected {expected}")


def _check_name(key: str, value: str, rule: Callable[[str], str | None]) -> None:
    """ConfigError naming ``key`` when ``rule`` (from ``wsss.names``) finds ``value`` unfit."""
    problem = rule(value)
    if problem:
        raise ConfigError(f"config value {key}={shown(value)} {problem}")


def override(key: str, value: Any) -> str:
    """The ``key=value`` override (see :func:`apply_overrides`) that sets ``key`` to exactly
    ``value``: text is written as a double-quoted YAML scalar, so a folder called ``2024``,
    ``yes`` or ``a: b`` stays that text (any character, emoji included, reads back the same)."""
    if isinstance(value, str):
        text = yaml.safe_dump(value, default_style='"', width=float("inf"), allow_unicode=False)
        return f"{key}={text.strip().removesuffix('...').strip()}"
    return f"{key}={value}"


def _check_choice(key: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"config value {key}={value!r} is not valid; choose one of: "
                          f"{', '.join(choices)}")
