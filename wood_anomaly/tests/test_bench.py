"""bench.py's record, on a hand-made run (a data folder in the real set's layout, predict.py-like outputs and a
config.json): one record of the current default, in exactly the shape the notebook and README read."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from common.io import save_image
from wood_anomaly import bench

KEYS = ["task", "what", "command", "steps", "config", "data", "machine", "load", "date_utc", "metrics", "timings",
        "protocols"]
VOTES = {"photo a": (3, 3), "photo b": (0, 3), "photo c": (2, 3)}  # stem -> (positive votes, votes)


def fake_real_run(root):
    """``(data, runs)``: 3 photos of 40x50 with masks and vote counts, and the outputs of a run on them."""
    data, runs = root / "data", root / "runs"
    (data / "masks" / "consensus").mkdir(parents=True)
    (runs / "pred").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for stem, (pos, _) in VOTES.items():
        mask = np.zeros((40, 50), bool)
        if pos:
            mask[10:20, 15:30] = True
        photo = np.full((40, 50, 3), 180, np.uint8) - (mask[..., None] * 120).astype(np.uint8)
        save_image(data / "images" / f"{stem}.png", photo)
        save_image(data / "masks" / "consensus" / f"{stem}.png", mask.astype(np.uint8) * 255)
        score = mask * 20.0 + rng.random(mask.shape)
        (runs / "pred" / stem).mkdir()
        np.save(runs / "pred" / stem / "anomaly_map.npy", score.astype(np.float16))
        save_image(runs / "pred" / stem / "preds.png", (score > 10).astype(np.uint8) * 255)
        rows.append({"image": f"{stem}.png", "score": f"{score.max() / 10:.4f}",
                     "label": "anomalous" if pos else "normal", "status": "ok"})
    with open(runs / "pred" / "predictions.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(data / "image_labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["stem", "n_votes", "n_positive_votes", "majority_label"])
        w.writerows([(s, n, p, int(2 * p > n)) for s, (p, n) in VOTES.items()])
    (runs / "config.json").write_text(json.dumps({"scale": 0.5, "sigma": 2.0, "deep_weight": 0.2}))
    return data, runs


@pytest.fixture
def record(tmp_path):
    data, runs = fake_real_run(tmp_path)
    bench.main(["--data", str(data), "--runs", str(runs), "--out", str(tmp_path / "wood.json"), "--reuse",
                "--protocols", "none"])
    return json.loads((tmp_path / "wood.json").read_text())


def test_record_holds_one_run_of_the_default(record):
    assert list(record) == KEYS
    m = record["metrics"]
    assert list(m) == ["pixel", "threshold_used", "image", "baseline_median_colour", "model_beats_baseline"]
    assert list(m["pixel"]) == list(bench.PIXEL_KEYS) and m["pixel"]["pixel_auroc"] == pytest.approx(1.0)
    assert m["image"]["image_auroc_majority"] == 1.0 and m["image"]["unanimous_anomalous_above_clean"] is True
    assert m["image"]["labels"] == {"photo a": "anomalous", "photo b": "normal", "photo c": "anomalous"}
    assert set(m["baseline_median_colour"]) == {"raw", "smoothed"}
    assert set(m["baseline_median_colour"]["smoothed"]) == {"pixel", "image"}
    assert record["config"]["deep_weight"] == 0.2 and record["data"]["photos"] == 3
    assert record["timings"] == {"reused_run": True}
    assert record["steps"]["train"].startswith("python wood_anomaly/train.py --data ")


def test_demo_data_is_not_benchmarked(tmp_path, capsys):
    data, runs = fake_real_run(tmp_path)
    (data / "DEMO_DATA.txt").write_text("generated")
    bench.main(["--data", str(data), "--runs", str(runs), "--out", str(tmp_path / "wood.json"), "--reuse",
                "--protocols", "none"])
    assert "demo data" in capsys.readouterr().out and not (tmp_path / "wood.json").exists()
