"""The studies in fcnn_rgb_gt/studies/: the ladder's table (no training) and the seam check (a trained model)."""
from __future__ import annotations

import pytest

from fcnn_rgb_gt.studies import ladder, seams


def _row(val: float, a: float, b: float) -> dict:
    return {"flags": "--x", "threshold": 0.7, "val_iou": val, "pairs": {"p1": {"iou": a}, "p2": {"iou": b}}}


def test_the_ladder_table_has_a_row_per_run_and_the_seed_spread():
    md = ladder.table({"v": _row(0.3, 0.2, 0.4), "v_seed1": _row(0.5, 0.4, 0.6), "w": _row(0.1, 0.1, 0.1)})
    assert "| v | `--x` | 0.7 | 0.3 | 0.2 | 0.4 |" in md
    assert "| v, 2 seeds | | | 0.400 [0.300-0.500] | 0.300 [0.200-0.400] | 0.500 [0.400-0.600] |" in md
    assert "| w, " not in md  # one seed: no spread line


@pytest.mark.slow
def test_seam_check_compares_tiles_with_one_untiled_pass(trained_run, pair_dir):
    r = seams.seam_check(trained_run / "best.pt", pair_dir / "rgb.png", tile=64, overlap=16)
    assert r["size"] == [200, 160] and r["blended"]["pixels"] == r["plain"]["pixels"] == 200 * 160
    assert r["plain"]["max_abs_diff"] > 0.3  # zero padding at plain tile borders, with trained weights
    assert r["blended"]["max_abs_diff"] < r["plain"]["max_abs_diff"] / 6
    assert r["blended"]["pixels_changed_class"] <= r["plain"]["pixels_changed_class"]
