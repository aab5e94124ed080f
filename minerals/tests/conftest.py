"""Session fixtures: tiny demo photos, their extracted samples and a tiny trained checkpoint (tmp dirs only)."""
from __future__ import annotations

import pytest
import torch

from minerals import bench, demo_data, train
from minerals.extract_samples import extract

# one thread: the tests are tiny, and on a busy shared machine two OpenMP threads mostly wait for each other
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def photos(tmp_path_factory):
    """7 classes x 5 synthetic specimen photos (+ manifest.csv, boxes_truth.csv)."""
    return demo_data.write(tmp_path_factory.mktemp("photos"), seed=1, per_class=5, size=(120, 160))


@pytest.fixture(scope="session")
def samples(photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("samples")
    extract(photos, out, patch_size=64, seed=0)
    return out


@pytest.fixture(scope="session")
def run(samples, tmp_path_factory):
    """A 2-epoch OreNet run at 48 px: best.pt, last.pt, logs, ONNX graph."""
    out = tmp_path_factory.mktemp("run")
    train.main(["--data", str(samples), "--out", str(out), "--epochs", "2", "--img-size", "48",
                "--batch-size", "16", "--width", "0.5", "--threads", "1"])
    return out


@pytest.fixture
def bench_record() -> dict:
    """A benchmark record of made-up figures, in the shape bench.py writes (tests never read the committed one)."""
    results = {k: {"accuracy": 0.8 + 0.01 * k, "macro_f1": 0.7 + 0.01 * k} for k in range(5)}
    fold0 = {"accuracy": 0.8, "macro_f1": 0.7}
    metrics = {name: bench.model_metrics(name, fold0, results) for name in bench.DEFAULT_MODELS}
    timings = {name: {"train_minutes": 1.0, "inference_patches_per_s": 100.0} for name in bench.DEFAULT_MODELS}
    return bench.record(metrics, timings, {"scratch": {}, "transfer": {}},
                        {"path": "data/minerals", "photos": 35, "patches": 50}, 5, ["--folds", "5"],
                        {"start": [1, 1, 1], "end": [1, 1, 1]}, "made up")
