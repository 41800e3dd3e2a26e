"""Local paths are made absolute where options and configs are read (Ray storage, Ray workers
and a later ``--resume`` run in other folders); URIs are left as given."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from wsss.storage import absolute

ROOT = Path(__file__).resolve().parents[1]
URIS = ["s3://bucket/sweeps", "gs://bucket/data", "file:///srv/data", "http://127.0.0.1:5000",
        "https://mlflow.example.org", "sqlite:////srv/mlflow.db", "memory://probe/out"]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    """The test runs in ``tmp_path`` (resolved: the paths it expects are resolved too)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path.resolve()


@pytest.mark.parametrize("uri", URIS)
def test_uris_are_left_as_given(uri, in_tmp):
    assert absolute(uri) == uri


def test_relative_paths_and_sqlite_stores_become_absolute(in_tmp, monkeypatch):
    monkeypatch.setenv("HOME", str(in_tmp / "home"))
    assert absolute("rel_storage/ray") == str(in_tmp / "rel_storage/ray")
    assert absolute("./a/../b") == str(in_tmp / "b")
    assert absolute("~/data") == str(in_tmp / "home/data")
    assert absolute(in_tmp / "x") == str(in_tmp / "x")
    assert absolute("sqlite:///mlflow.db") == f"sqlite:///{in_tmp / 'mlflow.db'}"
    assert absolute("sqlite:///runs/m.db") == f"sqlite:///{in_tmp / 'runs/m.db'}"
    for text in ["rel", "sqlite:///m.db", *URIS]:  # a second call changes nothing
        assert absolute(absolute(text)) == absolute(text)


def test_config_paths_become_absolute_and_other_values_stay(in_tmp):
    from wsss.config import load_config

    (in_tmp / "exp.yaml").write_text("data:\n  root: data/voc\nmodel:\n  pretrained: w/r18.pt\n")
    cfg = load_config("exp.yaml", ["tracking.uri=sqlite:///mlflow.db",
                                   "segmenter.pretrained_backbone=imagenet"])
    assert cfg.data.root == str(in_tmp / "data/voc")
    assert cfg.model.pretrained == str(in_tmp / "w/r18.pt")
    assert cfg.tracking.uri == f"sqlite:///{in_tmp / 'mlflow.db'}"
    assert cfg.segmenter.pretrained_backbone == "imagenet"  # a name, not a path
    assert load_config(None).data.root == str(in_tmp / "data/synth")  # the default too
    cfg = load_config(None, ["data.root=s3://bucket/voc", "tracking.uri=http://127.0.0.1:5000",
                             "model.pretrained=imagenet"])
    assert (cfg.data.root, cfg.tracking.uri, cfg.model.pretrained) == (
        "s3://bucket/voc", "http://127.0.0.1:5000", "imagenet")
    assert cfg.segmenter.pretrained_backbone is None


def test_relative_tracking_store_from_the_environment_becomes_absolute(in_tmp, monkeypatch):
    from wsss.tracking import URI_ENV, resolve_tracking_uri

    monkeypatch.setenv(URI_ENV, "sqlite:///env.db")
    assert resolve_tracking_uri() == f"sqlite:///{in_tmp / 'env.db'}"
    assert resolve_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


class Reached(Exception):
    """Raised by a stand-in stage: what the command handed it."""


@pytest.mark.parametrize("command, stage, options, expected", [
    ("cam", "wsss.cli.run_cams",
     ["--checkpoint", "ck/model.pt", "--data", "synth", "--out", "cams"],
     ["ck/model.pt", "synth", "train", "cams"]),
    ("eval", "wsss.cli.run_eval", ["--cams", "cams", "--data", "synth", "--masks-out", "m"],
     ["cams", "synth", "train", None, "m"]),
    ("refine", "wsss.cli.run_refine",
     ["--cams", "cams", "--data", "synth", "--out", "masks"],
     ["cams", "synth", "train", "masks"]),
    ("predict", "wsss.cli.run_predict",
     ["--checkpoint", "seg.pt", "--data", "synth", "--out", "pred"],
     ["seg.pt", "synth", "val", "pred"]),
])
def test_cli_hands_absolute_paths_to_its_stage(command, stage, options, expected, in_tmp,
                                              monkeypatch):
    """Path options, the config file and a relative SQLite store reach the stage absolute
    (``None``: a config section, not a path)."""
    import wsss.cli as cli

    def stand_in(*args, **kwargs):
        raise Reached(args)

    module, name = stage.rsplit(".", 1)
    monkeypatch.setattr(f"{module}.{name}", stand_in)
    (in_tmp / "exp.yaml").write_text("refine:\n  bg_threshold: 0.3\n")
    with pytest.raises(Reached) as reached:
        cli.main([command, *options, "--config", "exp.yaml",
                  "--tracking-uri", "sqlite:///mlflow.db"])
    handed = reached.value.args[0]
    for value, given in zip(handed, expected):
        if given in ("train", "val"):
            assert value == given  # a split name stays a name
        elif given is not None:
            assert value == str(in_tmp / given)
    tracking = next(a for a in handed if type(a).__name__ == "TrackingConfig")
    assert tracking.uri == f"sqlite:///{in_tmp / 'mlflow.db'}"
    assert not (in_tmp / "mlflow.db").exists()  # the stage never ran


@pytest.mark.parametrize("command, stage, options", [
    ("cam", "run_cams", ["--checkpoint", "ck/model.pt", "--out", "cams"]),
    ("eval", "run_eval", ["--cams", "cams"]),
    ("eval", "run_eval_masks", ["--masks", "masks"]),
    ("refine", "run_refine", ["--cams", "cams", "--out", "masks"]),
    ("pseudo-label", "run_pseudo_label", ["--checkpoint", "ck/model.pt", "--out", "masks"]),
    ("predict", "run_predict", ["--checkpoint", "seg.pt", "--out", "pred"]),
])
def test_every_command_reads_its_data_from_the_config(command, stage, options, in_tmp,
                                                      monkeypatch):
    """Without --data / --split, the config file's data.root, split and max_image_side reach
    the stage (a YAML recipe names its dataset once)."""
    import wsss.cli as cli

    def stand_in(*args, **kwargs):
        raise Reached((args, kwargs))

    monkeypatch.setattr(cli, stage, stand_in)
    monkeypatch.setattr(cli, "init_ray", lambda *a, **k: None)
    (in_tmp / "exp.yaml").write_text("data:\n  root: msrc\n  train_split: trainval\n"
                                     "  val_split: test\n  max_image_side: 512\n")
    with pytest.raises(Reached) as reached:
        cli.main([command, *options, "--config", "exp.yaml",
                  "--tracking-uri", "sqlite:///mlflow.db"])
    args, kwargs = reached.value.args[0]
    assert args[1] == str(in_tmp / "msrc")
    assert args[2] == ("test" if command == "predict" else "trainval")
    side = kwargs.get("max_image_side", next((a for a in args if isinstance(a, int)), None))
    if command == "pseudo-label":
        side = args[7].max_image_side  # in the pipeline options
    assert side == 512


def test_sweep_options_become_absolute(in_tmp, monkeypatch):
    from wsss.tune.runner import parse_options

    monkeypatch.delenv("WSSS_STORAGE_PATH", raising=False)
    sweep = runpy.run_path(str(ROOT / "sweeps/crf.py"))["SWEEP"]
    args = parse_options(sweep, ["--data", "synth", "--storage-path", "rel_storage/ray",
                                 "--tracking-uri", "sqlite:///mlflow.db",
                                 "--checkpoint", "ck/model.pt"])
    assert args.data == str(in_tmp / "synth")
    assert args.storage_path == str(in_tmp / "rel_storage/ray")
    assert args.workdir == str(in_tmp / "runs/sweeps")  # the default, resolved here
    assert args.tracking_uri == f"sqlite:///{in_tmp / 'mlflow.db'}"
    assert args.checkpoint == str(in_tmp / "ck/model.pt")  # the CRF sweep's own option
    args = parse_options(sweep, ["--storage-path", "s3://bucket/sweeps",
                                 "--tracking-uri", "http://127.0.0.1:5000"])
    assert (args.storage_path, args.tracking_uri) == ("s3://bucket/sweeps",
                                                      "http://127.0.0.1:5000")
    monkeypatch.setenv("WSSS_STORAGE_PATH", "shared/ray")  # a relative default as well
    assert parse_options(sweep, []).storage_path == str(in_tmp / "shared/ray")


def test_a_sweep_reads_a_dataset_uri_as_given(in_tmp, synth_root):
    """``--data s3://...`` (here ``file://``) stays a URI in the base config every trial reads,
    and the driver scans it and picks the scored images there (a ``Path`` would make it
    ``file:/...``, a folder under the working directory)."""
    from wsss.train.classifier import scan_training_data
    from wsss.tune.runner import base_config, dataset_root, parse_options, select_train_eval_ids

    sweep = runpy.run_path(str(ROOT / "sweeps/erasing.py"))["SWEEP"]
    uri = synth_root.as_uri()
    args = parse_options(sweep, ["--data", uri])
    assert dataset_root(args, Path(args.workdir)) == uri
    cfg = base_config(args, dataset_root(args, Path(args.workdir)))
    assert cfg.data.root == uri
    assert scan_training_data(cfg).train.ids
    assert len(select_train_eval_ids(cfg, 4, 0)) == 4
