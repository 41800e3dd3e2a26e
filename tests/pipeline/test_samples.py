"""The step picture (``sample_grid``): what it hands the overlay grid from the steps' rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wsss.data.reader import SampleRef
from wsss.pipeline import samples
from wsss.pipeline.columns import objects
from wsss.pipeline.steps import Step

NAMES = ["background", "red_spot", "blue_stripes"]


def _fake_step(batch: dict[str, np.ndarray], maps: bool, gt: bool) -> dict[str, np.ndarray]:
    """Rows as the map and mask steps give them: two classes in the first image, one in the
    second; ground truth only when ``gt``."""
    n = len(batch["id"])
    size = (12, 16)
    out = {"id": batch["id"], "image": objects([np.zeros((*size, 3), np.uint8)] * n),
           "gt": objects([np.ones(size, np.uint8) if gt else np.zeros((0, 0), np.uint8)] * n),
           "error": np.asarray([""] * n, dtype=object),
           "mask": objects([np.full(size, i % 3, np.uint8) for i in range(n)])}
    if maps:
        out["maps"] = objects([np.ones((2 - i % 2, *size), np.float16) for i in range(n)])
        out["class_ids"] = objects([np.array([1, 2][:2 - i % 2]) for i in range(n)])
    return out


def test_the_picture_names_the_classes_of_the_maps_and_skips_absent_columns(tmp_path: Path,
                                                                          monkeypatch) -> None:
    """With maps, each row's map classes reach the grid (for its map title); without
    maps (masks read back) there is no map column, and without any ground truth no ground
    truth column."""
    drawn = {}

    def spy(*args, **kwargs):
        drawn.update(args=args, kwargs=kwargs)
        return real(*args, **kwargs)

    real = samples.overlay_grid
    monkeypatch.setattr(samples, "overlay_grid", spy)
    refs = [SampleRef(f"s{i}", f"s{i}.jpg", "") for i in range(2)]
    path = samples.sample_grid(refs, [Step(_fake_step, {"maps": True, "gt": True})], NAMES,
                               tmp_path / "a.png")
    assert path.is_file()
    images, maps, masks, gts = drawn["args"][:4]
    assert drawn["kwargs"]["map_classes"] == [[1, 2], [1]]
    assert drawn["kwargs"]["row_titles"] == ["s0", "s1"]
    assert len(maps) == 2 and gts is not None
    samples.sample_grid(refs, [Step(_fake_step, {"maps": False, "gt": False})], NAMES,
                        tmp_path / "b.png")
    images, maps, masks, gts = drawn["args"][:4]
    assert maps is None and gts is None and drawn["kwargs"]["map_classes"] is None
    assert [m[0, 0] for m in masks] == [0, 1]
