"""Precision and memory format: refused where the device cannot compute them, and maps that
do not depend on the memory format and stay float32 under bf16 autocast."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wsss.config import load_config
from wsss.core.maps import localization_maps
from wsss.core.precision import autocast, check_precision, grad_scaler, to_memory_format
from wsss.errors import ConfigError
from wsss.methods import get_method
from wsss.models import CamClassifier, build_backbone

LABELS = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 0, 0, 1], [1, 1, 1, 0, 0]], dtype=torch.float32)


def test_fp16_on_cpu_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"train\.precision=fp16 needs a CUDA device"):
        check_precision("cpu", "fp16", "train.precision")
    with pytest.raises(ConfigError, match=r"cams\.precision='fp8'.*fp32, bf16, fp16"):
        check_precision("cpu", "fp8", "cams.precision")
    check_precision("cpu", "bf16", "train.precision")  # CPU autocast does bfloat16
    check_precision("cpu", "fp32", "train.precision")


@pytest.mark.parametrize("key", ["train.precision", "segmenter.precision", "cams.precision"])
def test_config_takes_the_three_precisions_and_refuses_others(key):
    section, name = key.split(".")
    for precision in ("fp32", "bf16", "fp16"):
        cfg = load_config(None, [f"{key}={precision}", f"{section}.channels_last=true"])
        assert getattr(getattr(cfg, section), name) == precision
        assert getattr(cfg, section).channels_last is True
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [f"{key}=fp64"])


def test_map_stage_refuses_fp16_on_cpu_before_any_work(tmp_path):
    from wsss.config import CamConfig
    from wsss.pipeline.maps import run_cams

    with pytest.raises(ConfigError, match=r"cams\.precision=fp16 needs a CUDA device"):
        run_cams(tmp_path / "no-checkpoint.pt", tmp_path / "no-data", "train", tmp_path / "out",
                 CamConfig(precision="fp16"), device="cpu")


def test_scaler_scales_fp16_only():
    assert not grad_scaler("cpu", "fp32").is_enabled()
    assert not grad_scaler("cpu", "bf16").is_enabled()
    if torch.cuda.is_available():
        assert grad_scaler("cuda", "fp16").is_enabled()


def test_autocast_casts_convolutions_to_bfloat16_and_fp32_is_untouched():
    conv, x = nn.Conv2d(3, 4, 3), torch.randn(1, 3, 8, 8)
    with autocast("cpu", "bf16"):
        assert conv(x).dtype == torch.bfloat16
    with autocast("cpu", "fp32"):
        assert conv(x).dtype == torch.float32


@pytest.mark.parametrize("kind", ["cam", "gradcam"])
def test_channels_last_gives_the_same_maps(model, images, kind):
    method = get_method("cam")(5)
    plain = localization_maps(method, model, images, LABELS, kind=kind)
    nhwc_model = to_memory_format(CamClassifier(build_backbone("resnet18"), 5), True).eval()
    nhwc_model.load_state_dict(model.state_dict())
    nhwc_images = to_memory_format(images, True)
    assert nhwc_images.is_contiguous(memory_format=torch.channels_last)
    assert nhwc_model.head.weight.is_contiguous(memory_format=torch.channels_last)
    nhwc = localization_maps(method, nhwc_model, nhwc_images, LABELS, kind=kind)
    assert plain.amax() == pytest.approx(1.0, abs=1e-3)  # normalised: absolute = relative error
    assert torch.allclose(plain, nhwc, rtol=0, atol=1e-5), (plain - nhwc).abs().max()


@pytest.mark.parametrize("kind", ["cam", "gradcam"])
def test_bf16_maps_are_float32_and_close_to_fp32(model, images, kind):
    method = get_method("cam")(5)
    reference = localization_maps(method, model, images, LABELS, kind=kind)
    low = localization_maps(method, model, images, LABELS, kind=kind, precision="bf16")
    assert low.dtype == torch.float32
    assert torch.equal(low[LABELS == 0], torch.zeros_like(low[LABELS == 0]))
    assert (low - reference).abs().max() < 5e-2  # bfloat16 keeps 8 bits of mantissa


def test_float64_maps_stay_float64(model, images):
    method = get_method("cam")(5)
    model64 = CamClassifier(build_backbone("resnet18"), 5).double().eval()
    model64.load_state_dict(model.state_dict())
    maps = localization_maps(method, model64, images.double(), LABELS, kind="gradcam")
    assert maps.dtype == torch.float64
    reference = localization_maps(method, model, images, LABELS, kind="gradcam")
    assert (maps.float() - reference).abs().max() < 1e-4
