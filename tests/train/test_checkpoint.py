"""Checkpoints: safe loading, round trip, and clear errors before any work."""

import pytest
import torch

from wsss.config import ExperimentConfig
from wsss.methods import get_method
from wsss.train.checkpoint import (CheckpointError, load_checkpoint_state, load_classifier,
                                   open_checkpoint, save_checkpoint)


def _save(path, method_name="cam", num_classes=3):
    method = get_method(method_name)(num_classes)
    model = method.build_model(ExperimentConfig().model)
    save_checkpoint(path, model=model, method=method, cfg=ExperimentConfig(),
                    class_names=["background", "a", "b", "c"], has_background=True, epoch=4)
    return model


def test_round_trip_restores_weights_and_method(tmp_path):
    model = _save(tmp_path / "m.pt", "gradcam")
    method, loaded, state = load_classifier(tmp_path / "m.pt", expect_classes=3)
    assert method.name == "gradcam" and state["epoch"] == 4 and not loaded.training
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k


def test_wrong_class_count_fails_before_any_work(tmp_path):
    _save(tmp_path / "m.pt", num_classes=3)
    with pytest.raises(CheckpointError, match="trained for 3 classes but the dataset has 20"):
        load_classifier(tmp_path / "m.pt", expect_classes=20)


def test_unsafe_pickle_is_refused(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"format": "wsss.classifier/1", "payload": object()}, evil)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint_state(evil)


def test_missing_and_foreign_checkpoints_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found.*none.pt"):
        load_checkpoint_state(tmp_path / "none.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt is not a wsss classifier checkpoint"):
        load_checkpoint_state(tmp_path / "other.pt")


def test_checkpoint_from_an_older_config_layout_still_loads(tmp_path):
    _save(tmp_path / "m.pt")
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    state["config"]["masks"] = {"bg_threshold": 0.3}  # a section that no longer exists
    torch.save(state, tmp_path / "old.pt")
    method, model, _ = load_classifier(tmp_path / "old.pt", expect_classes=3)
    assert method.name == "cam" and model.head.out_channels == 3


# -- the one loader: paths and URIs, kinds, one model per process ------------------------------
def _in_memory(path, name):
    """The file at ``path`` copied into fsspec's in-memory file system; its memory:// URI."""
    import fsspec

    fsspec.filesystem("memory").pipe(f"/ckpt-test/{name}", path.read_bytes())
    return f"memory:///ckpt-test/{name}"


def test_path_file_uri_and_fsspec_uri_read_the_same_checkpoint(tmp_path):
    _save(tmp_path / "m.pt")
    sources = [tmp_path / "m.pt", (tmp_path / "m.pt").as_uri(), _in_memory(tmp_path / "m.pt",
                                                                          "m.pt")]
    opened = [open_checkpoint(s, "classifier") for s in sources]
    assert {c.kind for c in opened} == {"classifier"}
    assert len({c.sha256 for c in opened}) == 1  # the content, whatever the path
    assert opened[1].source == sources[1]
    for c in opened[1:]:
        assert c.state["epoch"] == 4
        assert all(torch.equal(a, b) for a, b in zip(opened[0].state["state_dict"].values(),
                                                   c.state["state_dict"].values()))
    method, model, _ = load_classifier(sources[2], expect_classes=3)
    assert method.name == "cam" and not model.training


def test_a_model_is_built_once_per_process_and_again_when_the_file_changes(tmp_path):
    _save(tmp_path / "m.pt")
    uri = (tmp_path / "m.pt").as_uri()
    first = open_checkpoint(uri, "classifier").model()
    assert open_checkpoint(tmp_path / "m.pt", "classifier").model() is first
    assert load_classifier(uri)[1] is first
    import os
    import time

    time.sleep(0.01)
    _save(tmp_path / "m.pt", "gradcam")  # rewritten in place: another checkpoint
    os.utime(tmp_path / "m.pt")
    again = open_checkpoint(uri, "classifier")
    assert again.state["method"] == "gradcam" and again.model() is not first


@pytest.mark.parametrize("wanted, message", [
    ("segmenter", "is not a wsss segmenter checkpoint: it holds a classifier"),
    ("affinity", "is not a wsss affinity network checkpoint: it holds a classifier"),
])
def test_a_checkpoint_of_another_kind_is_named(tmp_path, wanted, message):
    _save(tmp_path / "m.pt")
    uri = _in_memory(tmp_path / "m.pt", "kind.pt")
    with pytest.raises(CheckpointError, match=f"{uri} {message}"):
        open_checkpoint(uri, wanted)
    with pytest.raises(CheckpointError, match="checkpoint not found: memory:///ckpt-test/no.pt"):
        open_checkpoint("memory:///ckpt-test/no.pt", "classifier")
