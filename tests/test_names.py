"""User-given names (run, experiment and split names, ids, class names) through the entry points:
each keeps its meaning and stays unique where it goes, or is refused with exit code 2 and a
message naming the option or file and the rule, before Ray starts and before an MLflow run is
opened. The rules live in ``wsss.names``; docs/reliability.md lists them."""

from __future__ import annotations

import re
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.utils.validation import _validate_metric_name
from PIL import Image

from wsss import names
from wsss.cli import main
from wsss.data.synthetic import generate_dataset
from wsss.data.errors import DatasetError
from wsss.data.dataset import VOCDataset
from wsss.data.reader import read_info, read_split

# name -> the rule it breaks, as the error says it (folders the project creates)
BAD_FOLDER_NAMES = {
    "a/b": "contains '/', a folder separator",
    "..": "is '..', which names a folder itself or its parent",
    ".": "is '.', which names a folder itself or its parent",
    "a\\b": "contains '\\\\', a folder separator",
    ".hidden": "starts with '.', which would make a hidden folder",
    "-x": "starts with '-', which reads as an option",
    " lead": "starts or ends with white space",
    "trail ": "starts or ends with white space",
    "nul\x00byte": "contains the control character(s) U+0000",
    "new\nline": "contains the control character(s) U+000A",
    "": "is empty",
    "x" * 300: "has 300 bytes in UTF-8; at most 200 fit in a file name",
    "é" * 101: "has 202 bytes in UTF-8; at most 200",  # 101 characters, 2 bytes each
    "🐄" * 51: "has 204 bytes in UTF-8; at most 200",  # 51 characters, 4 bytes each
}
# names every destination takes as they are
GOOD_NAMES = ["it's", 'say "hi"', "both ' and \"", "café", "水牛", "🐄", "a b", "a:b", "Cow",
              "x" * 200, "水" * 66]


@pytest.fixture
def no_compute(monkeypatch, tmp_path):
    """Record any start of Ray or of an MLflow run; the working folder is ``tmp_path/cwd``."""
    import wsss.cli
    import wsss.tracking
    import wsss.tune.tuner

    calls: list[str] = []
    for module in (wsss.cli, wsss.tune.tuner):  # where the commands and sweeps start Ray
        monkeypatch.setattr(module, "init_ray", lambda *a, **k: calls.append("ray"))
    monkeypatch.setattr(wsss.tracking, "start_run", lambda *a, **k: calls.append("mlflow"))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return calls


def _refused(argv: list[str], message: str, capsys, calls: list[str], out: Path) -> None:
    """``wsss argv`` exits 2 with ``message`` before any compute and writes nothing."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"wsss {argv[0]}: error: {message}" in err, err
    assert calls == [] and not out.exists() and list(Path.cwd().iterdir()) == []


@pytest.mark.parametrize("name", list(BAD_FOLDER_NAMES), ids=ascii)
@pytest.mark.parametrize("command", ["train-cls", "train-seg"])
def test_bad_run_names_are_refused_before_any_compute(command, name, tmp_path, capsys,
                                                      no_compute):
    data, out = small_dataset(tmp_path / "data"), tmp_path / "out"
    extra = ["--pseudo-masks", str(data)] if command == "train-seg" else []
    argv = [command, *extra, "--data", str(data), "--out", str(out), f"--run-name={name}"]
    _refused(argv, f"--run-name {names.shown(name)} {BAD_FOLDER_NAMES[name]}", capsys,
             no_compute, out)


@pytest.mark.parametrize("name", GOOD_NAMES, ids=ascii)
def test_good_names_work_as_folders_and_mlflow_run_and_experiment_names(name, tmp_path):
    """Names the rules accept really are one folder each and come back from MLflow as given."""
    from wsss.tracking import start_run

    assert names.folder_name_problem(name) is None and names.experiment_name_problem(name) is None
    folder = tmp_path / name
    folder.mkdir()
    assert [p.name for p in tmp_path.iterdir()] == [name]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with start_run(name, experiment=name, uri=uri) as run:
        run_id = run.info.run_id
    stored = mlflow.MlflowClient(uri).get_run(run_id)
    assert stored.info.run_name == name
    assert mlflow.MlflowClient(uri).get_experiment(stored.info.experiment_id).name == name


@pytest.mark.parametrize("name,problem", [
    ("", "is empty"),
    (" padded", "starts or ends with white space"),
    ("tab\there", "contains the control character(s) U+0009"),
    ("x" * 257, "has 257 characters; MLflow's SQL stores hold at most 256"),
], ids=ascii)
def test_bad_experiment_names_are_refused_before_any_compute(name, problem, tmp_path, capsys,
                                                             no_compute):
    data, out = small_dataset(tmp_path / "data"), tmp_path / "out"
    argv = ["cam", "--checkpoint", str(tmp_path / "c.pt"), "--data", str(data), "--out",
            str(out), f"--experiment={name}"]
    _refused(argv, f"--experiment {names.shown(name)} {problem}", capsys, no_compute, out)
    # the same name from a config value names the key
    argv = ["eval", "--masks", str(data), "--data", str(data), "--set",
            names_override("tracking.experiment", name)]
    _refused(argv, f"config value tracking.experiment={names.shown(name)} {problem}", capsys,
             no_compute, out)


def test_experiment_names_keep_slashes_and_quotes_where_only_mlflow_sees_them(tmp_path):
    """A stage's experiment only names an MLflow experiment, which takes '/', quotes and 256
    characters; a sweep's is also a folder and must be one path component."""
    for name in ("team/project", "it's \"ok\"", "e" * 256):
        assert names.experiment_name_problem(name) is None
    assert names.sweep_experiment_problem("team/project") == "contains '/', a folder separator"
    assert names.sweep_experiment_problem("e" * 256).startswith("has 256 bytes in UTF-8")


@pytest.mark.parametrize("name", ["a/b", "..", ".x", "-x", "x" * 201, "🐄" * 51, "", "a\x00"],
                         ids=ascii)
def test_sweep_experiment_names_are_refused_before_any_compute(name, tmp_path, capsys,
                                                               no_compute):
    from wsss.tune.runner import Sweep
    from wsss.tune.tuner import main as sweep_main

    workdir = tmp_path / "work"
    code = sweep_main(Sweep("t"), [f"--experiment={name}", "--workdir", str(workdir),
                                   "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    err = capsys.readouterr().err
    problem = names.sweep_experiment_problem(name)
    assert code == 2 and problem
    assert f"t sweep: error: --experiment {names.shown(name)} {problem}" in err
    assert no_compute == [] and not workdir.exists() and not (tmp_path / "mlflow.db").exists()


def test_compare_needs_out_for_an_experiment_that_is_no_folder_name(tmp_path, capsys,
                                                                    no_compute):
    out = Path.cwd() / "runs"
    _refused(["compare", "--experiment", "../../up"],
             "--experiment '../../up' contains '/', a folder separator (without --out it names "
             "the folder runs/compare/<experiment>)", capsys, no_compute, out)


@pytest.mark.parametrize("split", ["../../etc/passwd", "..", "a\\b", "x" * 201, "", "t\x07"],
                         ids=ascii)
def test_split_names_cannot_leave_the_split_folder(split, tmp_path, capsys, no_compute):
    data, out = small_dataset(tmp_path / "data"), tmp_path / "out"
    problem = names.path_component_problem(split)
    assert problem
    for command in (["cam", "--checkpoint", "c.pt", "--out", str(out)],
                    ["pseudo-label", "--checkpoint", "c.pt", "--out", str(out)],
                    ["eval", "--masks", str(data)]):
        _refused([*command, "--data", str(data), f"--split={split}"],
                 f"--split {names.shown(split)} {problem}", capsys, no_compute, out)
    with pytest.raises(DatasetError, match=re.escape(f"split name {names.shown(split)} is not "
                                                     f"a plain file name: it {problem}")):
        read_split(data, split)
    _refused(["eval", "--masks", str(data), "--data", str(data), "--set",
              names_override("data.val_split", split)],
             f"config value data.val_split={names.shown(split)} {problem}", capsys,
             no_compute, out)


def test_long_and_repeated_ids_are_refused(tmp_path):
    """An id must fit a file name with the project's suffixes (200 bytes), and an id listed
    twice would have its outputs written twice."""
    data = small_dataset(tmp_path / "data")
    split = data / "ImageSets/Segmentation/odd.txt"
    ids = read_split(data, "train")
    long_id = "水" * 67  # 201 bytes
    split.write_text(f"{ids[0]}\n{long_id}\n")
    with pytest.raises(DatasetError, match=re.escape(
            f"{split}: id {names.shown(long_id)} is not a plain file name: it has 201 bytes in "
            f"UTF-8; at most 200 fit")):
        VOCDataset(data, "odd")
    split.write_text(f"{ids[0]}\n{ids[1]}\n\n{ids[0]} extra column\n")
    message = f"{split}: id {ids[0]!r} is listed twice (lines 1 and 4)"
    with pytest.raises(DatasetError, match=re.escape(message)):
        VOCDataset(data, "odd")
    from wsss.data.reader import DatasetReader

    with pytest.raises(DatasetError, match=re.escape(message)):
        DatasetReader.open(data).index("odd")
    split.write_text(f"{'水' * 66}\n{ids[0]}\n")  # 198 bytes: fits
    assert VOCDataset(data, "odd").ids == ["水" * 66, ids[0]]


# class name -> its part of the per-class metric keys (iou/<part>, ...)
KEY_PARTS = {
    "cow": "cow", " padded ": "padded", "potted plant": "potted plant", "it's": "it_s",
    'say "hi"': "say _hi_", "a/b": "a_b", "a:b": "a_b", "back\\slash": "back_slash",
    "café": "café", "e\u0301": "é", "水牛": "水牛", "🐄": "_", ".": "_", "..": "__",
    "...": "...", "-x": "-x", "x" * 240: "x" * 240,
}


@pytest.mark.parametrize("name", list(KEY_PARTS), ids=ascii)
def test_each_class_name_gives_a_valid_metric_key(name, tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    (root / "classes.txt").write_text(f"background\n{name}\n", encoding="utf-8")
    info = read_info(root)
    assert info.class_names == ("background", name.strip())
    part = KEY_PARTS[name]
    assert names.metric_key_part(info.class_names[1]) == part
    for prefix in names.PER_CLASS_METRICS:
        _validate_metric_name(f"{prefix}/{part}")  # MLflow's own check: raises if invalid


@pytest.mark.parametrize("classes,message", [
    (["Cow", "cow"], "class names 'Cow' and 'cow' give the metric keys 'iou/Cow' and 'iou/cow', "
                     "one key to stores that ignore case and accents"),
    (["café", "cafe"], "class names 'café' and 'cafe' give the metric keys"),
    (["a/b", "a_b"], "class names 'a/b' and 'a_b' both give the metric key 'iou/a_b'"),
    (["it's", "it_s"], "class names \"it's\" and 'it_s' both give the metric key 'iou/it_s'"),
    (["🐄", "🐑"], "class names '🐄' and '🐑' both give the metric key 'iou/_'"),
    (["\u00e9", "e\u0301"], "class names '\u00e9' and 'e\u0301' both give the metric key "
                            "'iou/\u00e9'"),
    (["x", "x"], "duplicate class names: 'x' listed more than once"),
    (["a\x00b"], "class name 'a\\x00b' contains the control character(s) U+0000"),
    (["a\tb"], "class name 'a\\tb' contains the control character(s) U+0009"),
    (["c" * 241], f"class name {names.shown('c' * 241)} has 241 characters; at most 240 fit in "
                  f"the metric key 'precision/<name>'"),
], ids=ascii)
def test_class_names_that_would_collide_or_not_fit_are_refused(classes, message, tmp_path,
                                                               capsys, no_compute):
    data, out = small_dataset(tmp_path / "data"), tmp_path / "out"
    (data / "classes.txt").write_text("\n".join(["background", *classes]) + "\n",
                                      encoding="utf-8")
    message = f"{data / 'classes.txt'}: {message}"
    with pytest.raises(DatasetError, match=re.escape(message)):
        read_info(data)
    _refused(["train-cls", "--data", str(data), "--out", str(out)], message, capsys,
             no_compute, out)


def test_a_byte_order_mark_does_not_become_part_of_the_first_class_name(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    (root / "classes.txt").write_bytes("background\ncat\n".encode("utf-8-sig"))
    info = read_info(root)
    assert info.class_names == ("background", "cat") and info.has_background


def test_per_class_iou_keys_keep_every_class_apart(tmp_path, capsys):
    """`wsss eval --masks` of the ground truth itself: every class present scores IoU 1 under
    its own metric key, and scores.txt maps the changed keys back to the class names."""
    data = small_dataset(tmp_path / "data")
    classes = ["background", "cow's tail", "a/b", "水牛", "🐄", ".."]
    parts = ["background", "cow_s tail", "a_b", "水牛", "_", "__"]
    (data / "classes.txt").write_text("\n".join(classes) + "\n", encoding="utf-8")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(["eval", "--masks", str(data / "SegmentationClass"), "--data", str(data),
                 "--split", "train", "--tracking-uri", uri])
    assert code == 0, capsys.readouterr().err
    present = sorted({int(v) for i in read_split(data, "train") for v in np.unique(
        np.array(Image.open(data / "SegmentationClass" / f"{i}.png"))) if v != 255})
    assert len(present) >= 4
    client = mlflow.MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("wsss").experiment_id])[0]
    iou = {k: v for k, v in run.data.metrics.items() if k.startswith("iou/")}
    assert iou == {f"iou/{parts[c]}": 1.0 for c in present}
    table = Path(client.download_artifacts(run.info.run_id, "scores.txt", str(tmp_path)))
    text = table.read_text(encoding="utf-8")
    for c in present:
        if parts[c] != classes[c]:
            assert f"metric keys iou/{parts[c]}, precision/{parts[c]}, recall/{parts[c]}: " \
                   f"class {classes[c]!r}" in text


@pytest.mark.parametrize("value", ["plain", "it's", 'say "hi"', "both ' and \"", "back\\slash",
                                   "Cow", "cow", "trailing ", "a%b", "a_b", "水牛 🐄"],
                         ids=ascii)
def test_sweep_runs_are_found_by_exact_tag_values(value, tmp_path):
    """find_runs quotes each value with the quote it does not hold (MLflow filters have no
    escape) and compares every run in Python too: one run per value, never another's."""
    from wsss.tune.tracking import ROLE, SWEEP, find_runs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("sweeps")
    others = ["plain", "it's", 'say "hi"', "both ' and \"", "back\\slash", "Cow", "cow",
              "trailing", "trailing ", "a%b", "a_b", "水牛 🐄", "x"]
    ids = {v: client.create_run(experiment, tags={ROLE: "sweep", SWEEP: v}).info.run_id
           for v in others}
    found = find_runs(uri, "sweeps", {ROLE: "sweep", SWEEP: value})
    assert [run.info.run_id for run in found] == [ids[value]]


@pytest.mark.parametrize("value,literal", [
    ("plain", "'plain'"), ("it's", '"it\'s"'), ('say "hi"', "'say \"hi\"'"),
    ("both ' and \"", None), ("back\\slash", "'back\\slash'"),
])
def test_filter_literals_use_the_quote_the_value_lacks(value, literal):
    assert names.filter_literal(value) == literal


def small_dataset(root: Path) -> Path:
    """A valid 6-image, 32 px synthetic dataset."""
    generate_dataset(root, n=6, seed=0, image_size=32)
    return root


def names_override(key: str, value: str) -> str:
    """A ``--set`` item giving ``key`` exactly ``value``."""
    from wsss.config import override

    return override(key, value)


def test_overrides_keep_any_text_exactly():
    """The CLI passes option values to the config as YAML: any text must come back as given."""
    from wsss.config import apply_overrides

    for text in ["🐄", "2024", "yes", "a: b", "#x", "x\x85y", "it's \"q\"", "a\\b", " x", "~"]:
        assert apply_overrides({}, [names_override("k", text)]) == {"k": text}
    assert names_override("train.epochs", 3) == "train.epochs=3"  # numbers stay numbers


def test_plot_captions_show_class_names_and_ids_as_text(tmp_path):
    """A '$' in a class name or an id does not start matplotlib's math mode (which fails on
    text such as '$\\frac{a$')."""
    from wsss.viz import overlay_grid

    image, mask = np.zeros((8, 8, 3), np.uint8), np.ones((8, 8), np.uint8)
    path = overlay_grid([image], [np.zeros((1, 8, 8))], [mask], None,
                        ["background", "$\\frac{a$"], tmp_path / "grid.png",
                        row_titles=["$x$_{"])
    assert Image.open(path).size[0] > 0
