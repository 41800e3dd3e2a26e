"""Contract every registered method must keep (build, train step, maps, params) and a guard that
each one also has its own behaviour tests."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator

import pytest
import torch
from torch import nn

from wsss.core.maps import gradcam_maps, localization_maps
from wsss.config import ConfigError, ModelConfig, load_config
from wsss.methods import METHODS, Method, check_method_config
from wsss.models import Backbone

NUM_CLASSES = 3
# Methods whose behaviour tests live in a file not named after them.
BEHAVIOUR_FILES = {"gradcam": "test_cam.py"}


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    """These tensors are tiny: extra intra-op threads only add contention on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _build(name: str) -> tuple[Method, nn.Module]:
    torch.manual_seed(0)
    method = METHODS[name](NUM_CLASSES)
    model = method.build_model(ModelConfig(backbone="resnet18", pretrained=None))
    return method, model


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 64, 64, generator=generator)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    return images, labels


@pytest.mark.parametrize("name", sorted(METHODS))
def test_training_loss_is_finite_and_reaches_backbone(name: str) -> None:
    method, model = _build(name)
    images, labels = _batch()
    model.train()
    loss, logs = method.training_loss(model, images, labels, epoch=0)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert all(isinstance(v, float) for v in logs.values())
    loss.backward()
    backbones = [m for m in model.modules() if isinstance(m, Backbone)]
    grads = [p.grad for b in backbones for p in b.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_maps_and_logits_have_the_expected_shapes(name: str) -> None:
    method, model = _build(name)
    images, _ = _batch()
    model.eval()
    with torch.no_grad():
        maps = method.class_maps(model, images)
        logits = model(images)
    assert maps.shape == (2, NUM_CLASSES, 4, 4) and torch.isfinite(maps).all()
    assert logits.shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_gradcam_contract(name: str) -> None:
    """Methods offering Grad-CAM expose ``backbone`` and ``maps_from_features`` whose spatial
    mean are the logits."""
    method, model = _build(name)
    images, labels = _batch()
    if "gradcam" not in method.supported_map_kinds:  # refused with a clear error instead
        with pytest.raises(ValueError, match=f"method '{name}' gives cam maps only"):
            localization_maps(method, model, images, labels, kind="gradcam")
        return
    model.eval()
    with torch.no_grad():
        raw = model.maps_from_features(model.backbone(images))
        logits = model(images)
    assert raw.shape == (2, NUM_CLASSES, 4, 4)
    torch.testing.assert_close(logits, raw.mean(dim=(2, 3)))
    assert gradcam_maps(model, images, labels, method.map_layer).shape[:2] == (2, NUM_CLASSES)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_params_round_trip(name: str) -> None:
    cls = METHODS[name]
    params = cls.parse_params(None)
    assert cls.parse_params(dataclasses.asdict(params)) == params
    assert cls(NUM_CLASSES, dataclasses.asdict(params)).params == params


@pytest.mark.parametrize("name", sorted(METHODS))
def test_unknown_param_lists_valid_ones(name: str) -> None:
    cls = METHODS[name]
    valid = [f.name for f in dataclasses.fields(cls.Params)] or ["(none)"]
    with pytest.raises(ConfigError, match="no_such_knob") as err:
        cls.parse_params({"no_such_knob": 1})
    assert all(v in str(err.value) for v in valid)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_has_behaviour_tests(name: str) -> None:
    path = Path(__file__).parent / BEHAVIOUR_FILES.get(name, f"test_{name}.py")
    assert path.is_file(), f"method '{name}' has no behaviour tests ({path.name} missing)"
    assert "def test_" in path.read_text(), f"{path.name} defines no test"


# -- the method section of a config, checked by the methods layer (wsss.config imports none) --
def test_unknown_method_lists_registered_methods():
    with pytest.raises(ConfigError, match="unknown method 'nope'.*cam.*gradcam"):
        check_method_config(load_config(None, ["method.name=nope"]).method)


def test_unknown_method_param_lists_valid_params():
    with pytest.raises(ConfigError, match="no parameter.*hide.*valid: layer"):
        check_method_config(load_config(None, ["method.name=gradcam",
                                               "method.params.hide=0.5"]).method)


def test_out_of_range_method_param_is_refused():
    with pytest.raises(ConfigError, match="gradcam layer"):
        check_method_config(load_config(None, ["method.name=gradcam",
                                               "method.params.layer=fc"]).method)
