"""``segmenter.init_from`` (``wsss train-seg --init-from CLS_CKPT``): the segmenter's trunk starts
as an exact copy of a trained classifier's backbone; a classifier of another backbone is refused
before any work, naming both."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from wsss.config import ExperimentConfig, ModelConfig, load_config
from wsss.methods import get_method
from wsss.models.segmenter import build_segmenter
from wsss.train.checkpoint import CheckpointError, save_checkpoint
from wsss.train.segmenter import classifier_trunk_weights, scan_segmenter_data


def _classifier(path, backbone="resnet18", method_name="cam", **params):
    """A classifier checkpoint of random weights (nothing equals the segmenter's own init)."""
    torch.manual_seed(1)
    cfg = dataclasses.replace(ExperimentConfig(), model=ModelConfig(backbone=backbone))
    method = get_method(method_name)(3, params)
    model = method.build_model(cfg.model)
    save_checkpoint(path, model=model, method=method, cfg=cfg,
                    class_names=["background", "a", "b", "c"], has_background=True, epoch=1)
    return model


@pytest.mark.parametrize("backbone, arch", [("resnet18", "deeplabv3_resnet18"),
                                            ("resnet50", "deeplabv3_resnet50")])
def test_trunk_is_an_exact_copy_of_the_classifier_backbone(backbone, arch, tmp_path):
    classifier = _classifier(tmp_path / "cls.pt", backbone)
    torch.manual_seed(2)
    segmenter = build_segmenter(arch, 4)
    segmenter.trunk.load_state_dict(classifier_trunk_weights(tmp_path / "cls.pt", arch))
    source = classifier.backbone.state_dict()
    copied = segmenter.trunk.state_dict()
    assert len(copied) == len(source)
    # the same tensors in the same order (torchvision names conv1/bn1 what Backbone calls stem)
    for (name, a), (_, b) in zip(source.items(), copied.items()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("kind", ["file", "memory"])
def test_init_from_takes_a_uri(kind, tmp_path, synth_root):
    """``train-seg --init-from`` reads a ``file://`` or fsspec ``memory://`` checkpoint through
    the checkpoint loader, as a path; the scan before Ray checks it the same way."""
    import fsspec

    classifier = _classifier(tmp_path / "cls.pt")
    uri = (tmp_path / "cls.pt").as_uri()
    if kind == "memory":
        uri = f"memory:///init-from-test/{tmp_path.name}/cls.pt"
        fsspec.filesystem("memory").pipe(uri[len("memory://"):],
                                         (tmp_path / "cls.pt").read_bytes())
    weights = classifier_trunk_weights(uri, "deeplabv3_resnet18")
    source = classifier.backbone.state_dict()
    assert all(torch.equal(a, b) for a, b in zip(source.values(), weights.values()))
    cfg = load_config(None, [f"data.root={synth_root}", f"segmenter.init_from={uri}"])
    assert cfg.segmenter.init_from == uri  # a URI stays as given


def test_a_method_with_several_backbones_gives_its_first(tmp_path):
    classifier = _classifier(tmp_path / "cls.pt", method_name="adversarial_erasing", steps=2)
    weights = classifier_trunk_weights(tmp_path / "cls.pt", "deeplabv3_resnet18")
    first = classifier.rounds[0].backbone.state_dict()
    assert weights.keys() == first.keys()
    assert all(torch.equal(weights[k], first[k]) for k in first)


def test_another_backbone_is_refused_naming_both(tmp_path):
    _classifier(tmp_path / "cls.pt", "resnet34")
    with pytest.raises(CheckpointError, match=r"cls.pt: its classifier has a resnet34 backbone "
                                              r"but segmenter.arch=deeplabv3_resnet18 is built on "
                                              r"resnet18"):
        classifier_trunk_weights(tmp_path / "cls.pt", "deeplabv3_resnet18")


def test_a_checkpoint_that_does_not_fit_stops_the_scan_before_any_work(tmp_path, synth_root):
    """``train-seg`` scans before Ray and MLflow start: the checkpoint is checked there, even
    before the pseudo-mask folder (missing here) is read."""
    _classifier(tmp_path / "cls.pt", "resnet18")
    cfg = load_config(None, [f"data.root={synth_root}", "segmenter.arch=deeplabv3_resnet50",
                             f"segmenter.init_from={tmp_path / 'cls.pt'}"])
    with pytest.raises(CheckpointError, match="resnet18 backbone but segmenter.arch="
                                              "deeplabv3_resnet50 is built on resnet50"):
        scan_segmenter_data(cfg, tmp_path / "no-masks")
    segmenter_ckpt = tmp_path / "missing.pt"
    cfg = load_config(None, [f"segmenter.init_from={segmenter_ckpt}"])
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        scan_segmenter_data(cfg, tmp_path / "no-masks")
