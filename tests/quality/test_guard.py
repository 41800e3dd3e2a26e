"""The quality guard (``guard.py``): the pinned pseudo-mask and segmenter mIoU of a small
deterministic end-to-end run hold, and a moved row is reported with both numbers."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location("quality_guard",
                                               Path(__file__).with_name("guard.py"))
guard = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(guard)


@pytest.mark.slow
def test_the_guarded_numbers_hold(tmp_path):
    problems, text = guard.check(tmp_path)
    assert not problems, (
        "the quality guard moved (reference vs this code, mIoU %):\n" + text + "\n\n"
        + "\n".join(problems) + "\n\nIf the change is meant to move quality, re-measure "
        "benchmarks/results/quality.md and pin the new figures with `make quality-reference` "
        "(state them in the commit).")


def test_the_reference_pins_the_chain_rows():
    reference = json.loads(guard.REFERENCE.read_text())
    rows = reference["rows"]
    assert {"maps: cam", "maps + CRF: cam", "segmenter, from the classifier (val)"} <= set(rows)
    assert all(0.0 < value < 1.0 for value in rows.values())
    assert 0.0 < reference["tolerance"] <= 0.001
    assert set(reference["numerics_tolerance"]) == set(rows)
    assert len(reference["numerics"]) == 16


REFERENCE = {"tolerance": 0.0005, "numerics": "0123456789abcdef",
             "numerics_tolerance": {"maps: cam": 0.03, "segmenter (val)": 0.1, "gone": 0.1},
             "rows": {"maps: cam": 0.40, "segmenter (val)": 0.30, "gone": 0.2}}


def test_a_moved_row_is_named_with_old_and_new():
    tolerances, how = guard.tolerance_for(REFERENCE, REFERENCE["numerics"])
    assert "computes like the reference's" in how and set(tolerances.values()) == {0.0005}
    measured = {"maps: cam": 0.4004, "segmenter (val)": 0.32, "new": 0.1}
    assert guard.compare(REFERENCE, measured, tolerances | {"new": 0.0005}) == [
        "gone: 0.2 -> None (row gone)", "new: None -> 0.1 (row added)",
        "segmenter (val): 30.00 -> 32.00 (+2.00 mIoU points)"]
    table = guard.side_by_side(REFERENCE, measured)
    assert "30.00" in table and "32.00" in table and "+2.00" in table


def test_a_machine_that_rounds_differently_gets_the_measured_spread():
    tolerances, how = guard.tolerance_for(REFERENCE, "fedcba9876543210")
    assert "rounds differently" in how and tolerances["segmenter (val)"] == 0.1
    measured = {"maps: cam": 0.42, "segmenter (val)": 0.25, "gone": 0.2}
    assert guard.compare(REFERENCE, measured, tolerances) == []
    assert guard.compare(REFERENCE, measured | {"maps: cam": 0.45}, tolerances) == [
        "maps: cam: 40.00 -> 45.00 (+5.00 mIoU points)"]
