"""Background scores (constant threshold, power form) and confidence marking with 255."""

from __future__ import annotations

import numpy as np
import pytest

from wsss.config import RefineConfig
from wsss.data.palette import IGNORE_INDEX
from wsss.core.masks import class_scores, masks_from_maps, pseudo_mask

ROW = np.array([[[0.1, 0.3, 0.6, 0.45, 0.22]]], dtype=np.float32)  # one class, [1, 1, 5]


def _cfg(**kw: object) -> RefineConfig:
    return RefineConfig(crf=False, **kw)


def test_threshold_scores_put_background_last() -> None:
    scores, ids = class_scores(ROW, [5], True, _cfg(bg_threshold=0.25))
    assert ids.tolist() == [5, 0]
    assert np.allclose(scores[0], ROW[0]) and np.allclose(scores[1], 0.25)
    mask = pseudo_mask(None, ROW, [5], True, _cfg(bg_threshold=0.25))
    assert mask.tolist() == [[0, 5, 5, 5, 0]]


def test_power_background_on_hand_values() -> None:
    scores, ids = class_scores(ROW, [5], True, _cfg(bg_mode="power", bg_power=2.0))
    assert np.allclose(scores[1], (1.0 - ROW[0]) ** 2)  # 0.81 0.49 0.16 0.3025 0.6084
    mask = pseudo_mask(None, ROW, [5], True, _cfg(bg_mode="power", bg_power=2.0))
    assert mask.tolist() == [[0, 0, 5, 5, 0]]
    two = np.stack([ROW[0], 0.5 * ROW[0][:, ::-1]])  # bg from the max over both classes
    scores, _ = class_scores(two, [2, 7], True, _cfg(bg_mode="power", bg_power=3.0))
    assert np.allclose(scores[2], (1.0 - two.max(axis=0)) ** 3)


def test_threshold_itself_is_foreground() -> None:
    maps = np.full((1, 1, 1), 0.25, dtype=np.float32)
    assert pseudo_mask(None, maps, [3], True, _cfg(bg_threshold=0.25))[0, 0] == 3


def test_masks_from_maps_is_the_plain_threshold_case() -> None:
    rng = np.random.default_rng(0)
    maps = rng.random((3, 16, 16)).astype(np.float32) ** 3
    for has_bg in (True, False):
        expected = masks_from_maps(maps, [2, 9, 4], has_bg, bg_threshold=0.3)
        got = pseudo_mask(None, maps, [2, 9, 4], has_bg, _cfg(bg_threshold=0.3))
        assert (got == expected).all()
    max_map = maps.max(axis=0)
    assert ((masks_from_maps(maps, [2, 9, 4], True, 0.3) == 0) == (max_map < 0.3)).all()


def test_confidence_band_marks_uncertain_pixels() -> None:
    cfg = _cfg(bg_threshold=0.25, fg_confidence=0.5, bg_confidence=0.2)
    mask = pseudo_mask(None, ROW, [5], True, cfg)
    # 0.1: confident background; 0.3 and 0.45: weak foreground; 0.6: confident; 0.22: weak bg
    assert mask.tolist() == [[0, IGNORE_INDEX, 5, IGNORE_INDEX, IGNORE_INDEX]]


def test_confidence_without_background_class() -> None:
    maps = np.stack([ROW[0], 0.5 * np.ones_like(ROW[0])])
    mask = pseudo_mask(None, maps, [0, 6], False, _cfg(fg_confidence=0.55))
    # class 6 wins where ROW < 0.5 but its evidence (0.5) is below 0.55
    assert mask.tolist() == [[IGNORE_INDEX, IGNORE_INDEX, 0, IGNORE_INDEX, IGNORE_INDEX]]
    assert (pseudo_mask(None, maps, [0, 6], False, _cfg()) != IGNORE_INDEX).all()


def test_no_present_classes() -> None:
    empty = np.zeros((0, 2, 3), dtype=np.float32)
    power = _cfg(bg_mode="power", fg_confidence=0.5, bg_confidence=0.1)
    assert (pseudo_mask(None, empty, [], True, power) == 0).all()
    assert (pseudo_mask(None, empty, [], False, power) == IGNORE_INDEX).all()


def test_unknown_mode_and_bad_ids() -> None:
    with pytest.raises(ValueError, match="bg_mode"):
        class_scores(ROW, [5], True, RefineConfig(bg_mode="sigmoid"))
    with pytest.raises(ValueError, match="duplicate"):
        class_scores(np.zeros((2, 1, 1)), [5, 5], True, RefineConfig())
