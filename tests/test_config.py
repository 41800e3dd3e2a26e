"""Config: defaults, YAML, dotted overrides, and errors that list the valid choices."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from wsss.config import ConfigError, ExperimentConfig, flatten, from_dict, load_config


def test_defaults_validate_and_round_trip():
    cfg = ExperimentConfig().validate()
    assert from_dict(cfg.to_dict()) == cfg


def test_dotted_overrides_parse_yaml_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 3\nmethod:\n  name: gradcam\n")
    cfg = load_config(path, ["train.lr=0.05", "cams.scales=[0.5, 1.0]", "cams.flip=true",
                             "method.params.layer=layer3"])
    assert cfg.train.epochs == 3 and cfg.train.lr == 0.05
    assert cfg.cams.scales == (0.5, 1.0) and cfg.cams.flip is True
    assert cfg.method.name == "gradcam" and cfg.method.params == {"layer": "layer3"}


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"train\.epoch\b.*valid keys.*epochs"):
        load_config(None, ["train.epoch=3"])


def test_reading_a_config_imports_no_method_no_map_kind_and_no_torch():
    """The method and map-kind sections are checked by the layers that own them
    (``wsss.methods.check_method_config``, ``wsss.core.map_kinds.map_kind_for``)."""
    code = ("import json, sys; from wsss.config import load_config; "
            "load_config(None, ['method.name=gradcam', 'method.params.layer=layer3', "
            "'cams.kind=layercam']); "
            "print(json.dumps(sorted(m for m in sys.modules if m == 'torch' or "
            "m.startswith('wsss.'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    loaded = json.loads(done.stdout)
    assert "torch" not in loaded and not [m for m in loaded if "methods" in m or "core" in m]


@pytest.mark.parametrize("override, key", [
    ("train.epochs=0", "train.epochs"),
    ("train.lr=-1", "train.lr"),
    ("cams.scales=[]", "cams.scales"),
    ("model.backbone=vgg16", "model.backbone"),
    ("affinity.head=edges", "affinity.head"),
    ("refine.bg_threshold=1.5", "refine.bg_threshold"),
    ("refine.crf_iterations=0", "refine.crf_iterations"),
])
def test_out_of_range_values_are_refused(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(None, [override])


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_flatten_gives_dotted_keys():
    flat = flatten(ExperimentConfig().to_dict())
    assert flat["train.lr"] == 1e-3 and flat["data.crop_size"] == 112
    assert "method.params" in flat  # empty mapping kept as a value


def test_optimiser_recipe_follows_the_weights():
    """From random weights: AdamW one-cycle; from pretrained weights, each optimiser key the
    user leaves unset takes the fine-tuning recipe (SGD poly, 10x head for the classifier),
    the keys the user sets stay; the segmenter follows its own weights."""
    scratch = load_config(None)
    assert (scratch.train.optimizer, scratch.train.schedule, scratch.train.lr) == \
        ("adamw", "onecycle", 1e-3)
    tuned = load_config(None, ["model.pretrained=imagenet", "train.lr=0.05"])
    assert (tuned.train.optimizer, tuned.train.schedule, tuned.train.lr,
            tuned.train.head_lr_mult) == ("sgd", "poly", 0.05, 10.0)
    assert tuned.segmenter.optimizer == "adamw"  # its trunk still starts from random weights
    seg = load_config(None, ["segmenter.pretrained_backbone=imagenet"]).segmenter
    assert (seg.optimizer, seg.schedule, seg.lr, seg.weight_decay) == ("sgd", "poly", 0.01, 5e-4)
    kept = load_config(None, ["model.pretrained=imagenet", "train.optimizer=adamw"]).train
    assert (kept.optimizer, kept.schedule) == ("adamw", "poly")  # the unset keys still follow
    again = from_dict(tuned.to_dict())  # a saved config (every key set) rebuilds unchanged
    assert again == tuned


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_recipes_load_and_validate(path):
    """Every file in configs/ is a valid config a user can pass with ``--config``; the VOC
    recipe keeps irn's classifier numbers (ResNet-50 from ImageNet, 5 epochs, poly, lr 0.1,
    head 10x, a batch of 16 over its workers)."""
    cfg = load_config(path)
    if path.name == "voc12_resnet50_imagenet.yaml":
        train = cfg.train
        assert (cfg.model.backbone, cfg.model.pretrained) == ("resnet50", "imagenet")
        assert (train.epochs, train.schedule, train.lr, train.head_lr_mult) == (5, "poly", 0.1, 10)
        assert train.batch_size * train.num_workers == 16
