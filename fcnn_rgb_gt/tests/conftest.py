"""Session fixtures: one small synthetic image pair (never the real data) and one short training run on it."""
from __future__ import annotations

import pytest

from fcnn_rgb_gt import demo_data, train


@pytest.fixture(scope="session")
def pair_dir(tmp_path_factory):
    """A 160x200 demo pair (rgb.png RGBA, gt.png 0 = building) plus extra/demo_val/."""
    return demo_data.write(tmp_path_factory.mktemp("fcnn_data"), seed=1, size=(160, 200))


@pytest.fixture(scope="session")
def trained_run(pair_dir, tmp_path_factory):
    """Two quick epochs of train.py on the demo pair; returns the run folder."""
    out = tmp_path_factory.mktemp("fcnn_run")
    code = train.main(["--data", str(pair_dir), "--out", str(out), "--epochs", "2", "--tile", "64",
                       "--batch-size", "4", "--normalize", "--batch-norm"])
    assert code == 0
    return out
