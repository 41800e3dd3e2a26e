"""The `wsss` command end to end: synth -> train-cls -> cam -> eval, as a user runs it."""

import json
import subprocess
import sys

import mlflow
import pytest

from wsss.cli import build_parser, command_paths, main
from wsss.core.maps import load_maps


def test_every_subcommand_has_help(capsys):
    commands = [list(path) for path in command_paths(build_parser())]
    assert ["data", "convert-masks"] in commands and ["train-seg"] in commands
    for command in commands:
        with pytest.raises(SystemExit) as done:
            main([*command, "--help"])
        assert done.value.code == 0, command
        assert "usage: wsss" in capsys.readouterr().out, command


def test_help_lists_the_examples_one_a_line_and_shows_defaults(capsys, monkeypatch):
    """``wsss --help`` ends with every example of the module doc, one a line (not run into a
    paragraph); a subcommand's --help shows its own examples and its options' defaults."""
    from wsss.cli import EXAMPLES

    monkeypatch.setenv("COLUMNS", "100")
    assert len(EXAMPLES) == 13
    with pytest.raises(SystemExit):
        main(["--help"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[lines.index("examples:") + 1:] == [f"  {line}" for line in EXAMPLES]
    with pytest.raises(SystemExit):
        main(["data", "synth", "--help"])
    out = capsys.readouterr().out
    assert "images (default: 300)" in out and "(default: 112)" in out
    assert "  wsss data synth --out data/synth --n 300 --seed 0" in out.splitlines()
    assert "train-cls" not in out and "(default: None)" not in out


def test_sweep_script_help_keeps_its_examples_and_shows_defaults(capsys, monkeypatch):
    """A sweep script's --help: its doc as written (each example command a line of its own),
    each option's default, and no ``(default: None)`` or ``(default: False)``."""
    import runpy
    from pathlib import Path

    monkeypatch.setenv("COLUMNS", "100")
    script = Path(__file__).resolve().parents[1] / "sweeps" / "erasing.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(script), run_name="__main__")
    assert done.value.code == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "    python sweeps/erasing.py --smoke-test" in lines
    assert "    python sweeps/erasing.py --num-samples 24 --max-concurrent 2 --data " \
           "VOCdevkit/VOC2012" in lines
    text = " ".join(out.split())  # the help as one line, whatever argparse wrapped
    assert "trials to run (default 12; smoke 3)" in text and "(default: asha)" in text
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "and 3 trials, 2 at once (unless --num-samples" in text


def test_the_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "wsss.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "usage: wsss" in out


def test_missing_dataset_is_a_clear_error(tmp_path, capsys):
    code = main(["eval", "--cams", str(tmp_path), "--data", str(tmp_path / "nope")])
    assert code == 2
    assert "dataset folder not found" in capsys.readouterr().err


def test_unknown_config_key_lists_valid_ones(tmp_path, capsys):
    code = main(["eval", "--cams", str(tmp_path), "--data", str(tmp_path),
                 "--set", "refine.threshold=0.3"])
    assert code == 2 and "unknown config key(s) refine.threshold" in capsys.readouterr().err


def test_train_seg_on_ground_truth_masks_reads_the_datasets_own(synth_root, monkeypatch,
                                                                 capsys):
    """``--masks-from-ground-truth``: the fully supervised reference trains the same segmenter
    on ``<data>/SegmentationClass``; it excludes ``--pseudo-masks``."""
    import wsss.cli
    from wsss.train.segmenter import TrainResult

    given = {}

    def train(cfg, masks, out, run_name=None, data=None):
        given.update(masks=masks, ids=data.train.ids)
        return TrainResult(out, {}, [], [], 0.0)

    monkeypatch.setattr(wsss.cli, "init_ray", lambda address=None: None)
    monkeypatch.setattr(wsss.cli, "run_train_segmenter", train)
    assert main(["train-seg", "--masks-from-ground-truth", "--data", str(synth_root)]) == 0
    assert given["masks"] == synth_root / "SegmentationClass"
    train_ids = (synth_root / "ImageSets/Segmentation/train.txt").read_text().split()
    assert given["ids"] == train_ids  # every training image has its ground-truth mask
    with pytest.raises(SystemExit):
        main(["train-seg", "--masks-from-ground-truth", "--pseudo-masks", "x", "--data", "y"])
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.slow
def test_pipeline_end_to_end(ray_session, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["data", "synth", "--out", "synth", "--n", "24", "--image-size", "64"]) == 0
    assert main(["train-cls", "--data", "synth", "--epochs", "1", "--crop-size", "64",
                 "--run-name", "e2e"]) == 0
    ckpt = tmp_path / "runs/classifier/e2e/model.pt"
    assert f"checkpoint: {ckpt}" in capsys.readouterr().out
    assert main(["cam", "--checkpoint", str(ckpt), "--data", "synth", "--out", "cams",
                 "--kind", "gradcam", "--scales", "1", "0.5", "--flip"]) == 0
    ids = (tmp_path / "synth/ImageSets/Segmentation/train.txt").read_text().split()
    report = json.loads((tmp_path / "cams/report.json").read_text())
    assert report["done"] == len(ids) and report["failed"] == []
    maps, class_ids = load_maps(tmp_path / f"cams/{ids[0]}.npz")
    assert maps.shape[0] == len(class_ids) and maps.shape[1:] == (64, 64)
    # maps are in [0, 1]: each scale's map is scaled by its peak before the scales and the
    # flip are averaged (so a peak may fall below 1 where they disagree, and a class with no
    # positive evidence after 1 epoch stays 0)
    assert maps.min() >= 0 and 0.25 - 1e-3 <= maps.max() <= 1.0 + 1e-3  # 4 maps averaged
    # a re-run of the same job reuses every map already written; other settings are refused
    capsys.readouterr()
    assert main(["cam", "--checkpoint", str(ckpt), "--data", "synth", "--out", "cams"]) == 2
    assert "cams.scales: [1.0, 0.5] -> [1.0]" in capsys.readouterr().err
    assert main(["cam", "--checkpoint", str(ckpt), "--data", "synth", "--out", "cams",
                 "--kind", "gradcam", "--scales", "1", "0.5", "--flip"]) == 0
    assert "0 done" in capsys.readouterr().out
    assert main(["eval", "--cams", "cams", "--data", "synth", "--masks-out", "masks"]) == 0
    out = capsys.readouterr().out
    assert "mIoU" in out and f"{len(ids)} done" in out
    assert len(list((tmp_path / "masks").glob("synth_*.png"))) == len(ids)
    assert main(["refine", "--cams", "cams", "--data", "synth", "--out", "refined"]) == 0
    assert len(list((tmp_path / "refined").glob("synth_*.png"))) == len(ids)
    assert main(["train-seg", "--pseudo-masks", "refined", "--data", "synth", "--epochs", "1",
                 "--crop-size", "64", "--run-name", "seg", "--init-from", str(ckpt)]) == 0
    seg = tmp_path / "runs/segmenter/seg/model.pt"
    assert main(["predict", "--checkpoint", str(seg), "--data", "synth", "--split", "val",
                 "--out", "pred"]) == 0
    val_ids = (tmp_path / "synth/ImageSets/Segmentation/val.txt").read_text().split()
    assert len(list((tmp_path / "pred").glob("synth_*.png"))) == len(val_ids)
    assert main(["predict", "--checkpoint", str(seg), "--data", "synth", "--split", "val",
                 "--out", "pred-crf", "--crf", "--set", "refine.crf_iterations=3"]) == 0
    assert len(list((tmp_path / "pred-crf").glob("synth_*.png"))) == len(val_ids)
    capsys.readouterr()
    assert main(["eval", "--masks", "pred", "--data", "synth", "--split", "val"]) == 0
    assert f"{len(val_ids)} done" in capsys.readouterr().out
    runs = mlflow.search_runs(experiment_names=["wsss"],
                              filter_string="attributes.status = 'FINISHED'")
    assert sorted(runs["tags.stage"]) == ["cam", "cam", "eval", "eval", "predict", "predict",
                                          "refine", "train-cls", "train-seg"]
