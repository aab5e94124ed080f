"""Session fixtures: one small synthetic image pair (never the real data), an untrained checkpoint of it (for fast
prediction tests) and one short training run on it (for the slow ones)."""
from __future__ import annotations

import pytest
import torch

from fcnn_rgb_gt import demo_data, train
from fcnn_rgb_gt.model import FCN, ModelConfig


@pytest.fixture(scope="session")
def pair_dir(tmp_path_factory):
    """A 160x200 demo pair (rgb.png RGBA, gt.png 0 = building) plus extra/demo_val/."""
    return demo_data.write(tmp_path_factory.mktemp("fcnn_data"), seed=1, size=(160, 200))


@pytest.fixture(scope="session")
def untrained_run(pair_dir, tmp_path_factory):
    """A run folder whose best.pt holds the default network with its initial weights (no training): what
    predict.py reads, in the format train.py writes."""
    out = tmp_path_factory.mktemp("fcnn_untrained")
    torch.manual_seed(0)
    model = FCN(ModelConfig(normalize=True, batch_norm=True, scales=(1, 2)))
    torch.save({"model": model.state_dict(), "model_config": model.cfg.to_dict(), "threshold": 0.5,
                "config": {"data": str(pair_dir), "rgb": "", "gt": ""}}, out / "best.pt")
    return out


@pytest.fixture(scope="session")
def trained_run(pair_dir, tmp_path_factory):
    """Two quick epochs of train.py on the demo pair; returns the run folder."""
    out = tmp_path_factory.mktemp("fcnn_run")
    code = train.main(["--data", str(pair_dir), "--out", str(out), "--epochs", "2", "--tile", "64",
                       "--batch-size", "4"])
    assert code == 0
    return out
