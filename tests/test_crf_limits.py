"""Dense CRF limits (wsss.crf_limits): values pydensecrf cannot compute correctly are refused by
every entry point before any work, a value at the limit runs on the largest image, and the
derivation matches what pydensecrf does (its lattice keys wrap exactly where predicted)."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import numpy as np
import pytest

from wsss.cli import main
from wsss.config import ConfigError, ExperimentConfig, RefineConfig, load_config
from wsss.crf_limits import MAX_PIXELS, crf_violation, size_violation
from wsss.data.synthetic import generate_dataset
from wsss.core.native_crf import MeanFieldJob, mean_field
from wsss.core.masks import dense_crf
from wsss.knobs import Knob
from wsss.tune.spaces import CRF_KNOBS, Space, check_space

WHY = "narrower kernels overflow the 16-bit keys of pydensecrf's permutohedral lattice"
# (key, value given to --set, how the message shows it, what it expects)
BAD_VALUES = [
    ("crf_bilateral_srgb", "1e-6", "1e-06", ">= 0.0342 for the bilateral kernel"),
    ("crf_bilateral_srgb", "0.034", "0.034", ">= 0.0342 for the bilateral kernel"),
    ("crf_bilateral_srgb", "0", "0", "> 0"),
    ("crf_bilateral_srgb", "-13", "-13", "> 0"),
    ("crf_bilateral_srgb", ".nan", "nan", "a finite number"),
    ("crf_bilateral_srgb", ".inf", "inf", "a finite number"),
    ("crf_bilateral_sxy", "0.1", "0.1", ">= 0.171 for the bilateral kernel on images up to "
                                        "1024x1024 px with refine.crf_bilateral_srgb=13"),
    ("crf_bilateral_sxy", "-80", "-80", "> 0"),
    ("crf_bilateral_sxy", ".nan", "nan", "a finite number"),
    ("crf_gaussian_sxy", "0.08", "0.08", ">= 0.0854 for the Gaussian kernel on images up to "
                                         "1024x1024 px"),
    ("crf_gaussian_sxy", "0", "0", "> 0"),
    ("crf_gaussian_sxy", "-.inf", "-inf", "a finite number"),
    ("crf_gaussian_compat", "-1", "-1", "in [0, 1e+27]"),
    ("crf_gaussian_compat", "1e30", "1e+30", "in [0, 1e+27]"),
    ("crf_gaussian_compat", ".nan", "nan", "a finite number"),
    ("crf_bilateral_compat", "-10", "-10", "in [0, 1e+27]"),
    ("crf_bilateral_compat", ".inf", "inf", "a finite number"),
    ("crf_iterations", "0", "0", "in [1, 100]"),
    ("crf_iterations", "-5", "-5", "in [1, 100]"),
    ("crf_iterations", "101", "101", "in [1, 100]"),
    ("crf_iterations", "3000000000", "3000000000", "in [1, 100]"),
]


def _small_dataset(tmp_path) -> Path:
    generate_dataset(tmp_path / "data", n=4, seed=0, image_size=32)
    return tmp_path / "data"


def _no_ray(*args, **kwargs):
    raise AssertionError("Ray was started")


def _command(name: str, tmp_path) -> list[str]:
    data, out = _small_dataset(tmp_path), tmp_path / "out"
    return {"refine": ["refine", "--cams", tmp_path, "--data", data, "--out", out],
            "pseudo-label": ["pseudo-label", "--checkpoint", tmp_path / "model.pt", "--data",
                             data, "--out", out],
            "eval": ["eval", "--cams", tmp_path, "--data", data, "--masks-out", out]}[name]


@pytest.mark.parametrize("command", ["refine", "pseudo-label", "eval"])
@pytest.mark.parametrize("key, value, shown, expected", BAD_VALUES)
def test_cli_refuses_crf_values_out_of_range(command, key, value, shown, expected, tmp_path,
                                            capsys, monkeypatch):
    monkeypatch.setattr("wsss.cli.init_ray", _no_ray)
    argv = _command(command, tmp_path) + ["--set", f"refine.{key}={value}", "--tracking-uri",
                                          f"sqlite:///{tmp_path / 'mlflow.db'}"]
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"wsss {command}: error: config value refine.{key}={shown} is out "
                          f"of range: expected {expected}"), err
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()


def test_config_file_values_are_checked_like_overrides(tmp_path, capsys):
    config = tmp_path / "refine.yaml"
    config.write_text("refine:\n  crf_bilateral_srgb: 1.0e-6\n")
    code = main([str(a) for a in _command("refine", tmp_path) + ["--config", config]])
    assert code == 2
    assert ("config value refine.crf_bilateral_srgb=1e-06 is out of range: expected >= 0.0342"
            in capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_width_limits_scale_with_the_largest_image():
    """0.3 px is a valid Gaussian width up to 1024 px but overflows the keys at 4096 px."""
    assert load_config(None, ["refine.crf_gaussian_sxy=0.3"]).refine.crf_gaussian_sxy == 0.3
    with pytest.raises(ConfigError, match=re.escape(
            "refine.crf_gaussian_sxy=0.3 is out of range: expected >= 0.342 for the Gaussian "
            f"kernel on images up to 4096x4096 px ({WHY})")):
        load_config(None, ["refine.crf_gaussian_sxy=0.3", "data.max_image_side=4096"])


def test_stage_functions_check_the_refine_config_before_any_work(tmp_path, monkeypatch):
    """Python callers of the batch stages get the same error, before any file is read."""
    from wsss.pipeline.pseudo_label import PipelineOptions, run_pseudo_label
    from wsss.pipeline.pseudo_label import rescore_maps
    from wsss.pipeline.masks import run_refine

    monkeypatch.setattr("wsss.cli.init_ray", _no_ray)
    cfg = RefineConfig(crf_gaussian_sxy=0.05)  # fine on small images, too narrow at 1024 px
    message = re.escape("config value refine.crf_gaussian_sxy=0.05 is out of range: expected "
                        ">= 0.0854 for the Gaussian kernel on images up to 1024x1024 px")
    missing, out = tmp_path / "missing", tmp_path / "out"
    with pytest.raises(ConfigError, match=message):
        run_refine(missing, missing, "train", out, cfg, max_image_side=1024)
    with pytest.raises(ConfigError, match=message):
        run_pseudo_label(missing, missing, "train", out, refine_cfg=cfg,
                         options=PipelineOptions(max_image_side=1024))
    with pytest.raises(ConfigError, match=message):
        next(rescore_maps(missing, missing, "train", ["a"], cfg, "cam", max_image_side=1024))
    assert not out.exists()
    cfg.validate_for(64)  # 0.05 px is valid on images up to 64 px: no error


def _at_the_limit(side: int) -> RefineConfig:
    """Every kernel width lowered to the smallest value the check accepts on side x side
    images: each refusal names the next width to raise and the value it needs."""
    cfg = RefineConfig(crf_gaussian_sxy=1e-3, crf_bilateral_sxy=1e-3, crf_bilateral_srgb=1e-3,
                       crf_iterations=2)
    for _ in range(10):
        found = crf_violation(dataclasses.asdict(cfg), side, side)
        if found is None:
            return cfg
        need = float(re.match(r">= ([0-9.e+-]+) ", found.expected).group(1))
        cfg = dataclasses.replace(cfg, **{found.key: need})
    raise AssertionError("the widths did not settle")


def test_widths_at_the_limit_run_on_the_largest_image_and_just_below_are_refused():
    side = 1024
    cfg = _at_the_limit(side)
    assert (cfg.crf_gaussian_sxy, cfg.crf_bilateral_srgb) == (0.0854, 0.0342)
    assert 0.75 < cfg.crf_bilateral_sxy < 0.77  # shares the key range with the colours
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    image[0, 0], image[-1, -1] = 0, 255  # the coordinate extremes occur
    probs = rng.random((2, side, side), dtype=np.float32)
    refined = dense_crf(image, probs, cfg)
    assert refined.shape == (2, side, side) and np.isfinite(refined).all()
    assert np.allclose(refined.sum(axis=0), 1.0, atol=1e-4)
    # 1 % narrower is refused; the bilateral widths share one bound, so lowering sxy asks for
    # a little more srgb (the width whose term dominates is named)
    refusals = {
        "crf_gaussian_sxy": "refine.crf_gaussian_sxy=0.084546 is out of range: expected >= "
                            "0.0854 for the Gaussian kernel on images up to 1024x1024 px",
        "crf_bilateral_sxy": "refine.crf_bilateral_srgb=0.0342 is out of range: expected >= "
                             "0.0343 for the bilateral kernel on images up to 1024x1024 px "
                             "with refine.crf_bilateral_sxy=0.75141",
        "crf_bilateral_srgb": "refine.crf_bilateral_srgb=0.033858 is out of range: expected "
                              ">= 0.0342 for the bilateral kernel on any image with "
                              "refine.crf_bilateral_sxy=0.759"}
    for key, message in refusals.items():
        below = dataclasses.replace(cfg, **{key: getattr(cfg, key) * 0.99})
        with pytest.raises(ValueError, match=re.escape(message)):
            dense_crf(image, probs, below)


def _row_crf(sxy: float) -> np.ndarray:
    """Labels of a 150 x 1 image whose pixels 0..49 are surely class 0 and 50..149 weakly
    class 1; a Gaussian kernel only, in pydensecrf directly (no checks)."""
    probs = np.empty((2, 1, 150), np.float32)
    probs[0, :, :50], probs[0, :, 50:] = 0.95, 0.4
    probs[1] = 1.0 - probs[0]
    unary = np.ascontiguousarray(-np.log(probs).reshape(2, -1))
    job = MeanFieldJob(np.zeros((1, 150, 3), np.uint8), unary, (sxy, 10.0), (80.0, 13.0, 0.0),
                       10)
    return mean_field(job).argmax(axis=0)


def test_past_the_limit_lattice_keys_wrap_and_distant_pixels_merge():
    """The derivation's lattice coordinate of x is sqrt(3) x / sxy; keys are 16-bit and lattice
    points are multiples of 3, so pixels 100 px apart get the same key when sqrt(3) 100 / sxy
    is 3 * 65536: then pixels 100..149 copy the labels of 0..49 although a kernel this narrow
    couples no two pixels. At the narrowest allowed width nothing merges."""
    merging = math.sqrt(3) * 100 / (3 * 65536)
    assert (_row_crf(merging)[100:] == 0).all()  # all 50 flipped: wrong, silently
    assert (_row_crf(merging * 1.0001)[100:] == 1).all()  # keys differ again
    cfg = RefineConfig(crf_gaussian_sxy=merging)
    with pytest.raises(ValueError, match="refine.crf_gaussian_sxy=.* is out of range: "
                                         "expected >= 0.00788 for the Gaussian kernel on "
                                         "images up to 150x1 px"):
        dense_crf(np.zeros((1, 150, 3), np.uint8), np.full((2, 1, 150), 0.5, np.float32), cfg)
    assert (_row_crf(0.00788)[50:] == 1).all()


def test_non_finite_probabilities_are_refused_before_the_crf():
    probs = np.full((2, 8, 8), 0.5, np.float32)
    probs[0, 3, 3] = np.nan  # pydensecrf would make every pixel NaN (all labelled 0)
    with pytest.raises(ValueError, match="contain NaN or infinity"):
        dense_crf(np.zeros((8, 8, 3), np.uint8), probs, RefineConfig())


def test_problem_size_limit_of_the_32_bit_lattice_indices():
    assert size_violation(1024, 1024, 255) is None
    assert size_violation(MAX_PIXELS, 1, 2) is None
    assert size_violation(MAX_PIXELS + 1, 1, 2) == (
        f"a {MAX_PIXELS + 1}x1 image with 2 labels is too large for pydensecrf: its lattice "
        "indexes (6 * W * H + 2) * labels = 2147483656 values with 32-bit ints (at most "
        "2147483647)")
    assert size_violation(8192, 8192, 6) is not None  # 2.4e9 values


def test_crf_sweep_space_proposes_only_valid_configs():
    check_space(Space(CRF_KNOBS, {"refine.crf": True}), ExperimentConfig())
    wider = Space(CRF_KNOBS, overrides=[Knob("refine.crf_bilateral_srgb", 1e-6, 30.0)])
    with pytest.raises(ConfigError, match=r"the search space can propose an invalid config "
                                          r"\(.*refine.crf_bilateral_srgb=1e-06.*\): config "
                                          r"value refine.crf_bilateral_srgb=1e-06 is out of"):
        check_space(wider, ExperimentConfig())


def test_crf_sweep_refuses_a_space_too_narrow_for_its_images(tmp_path, capsys, monkeypatch):
    """At data.max_image_side=12000 the Gaussian width's low end (1 px) overflows the keys:
    the sweep stops before Ray starts."""
    import runpy

    from wsss.tune.tuner import main as sweep_main

    monkeypatch.setattr("wsss.tune.tuner.init_ray", _no_ray)
    sweep = runpy.run_path(str(Path(__file__).parents[1] / "sweeps/crf.py"))["SWEEP"]
    code = sweep_main(sweep, ["--data", str(_small_dataset(tmp_path)), "--workdir",
                              str(tmp_path / "work"), "--set", "data.max_image_side=12000",
                              "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "crf sweep: error: the search space can propose an invalid config" in err
    assert ("config value refine.crf_gaussian_sxy=1.0 is out of range: expected >= 1.01 for "
            "the Gaussian kernel on images up to 12000x12000 px") in err
