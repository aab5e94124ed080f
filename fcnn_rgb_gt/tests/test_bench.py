"""bench.py: the skip rule, the checks before any training, the record's shape (no training), and one end-to-end
run on a small synthetic "real" layout (slow)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from fcnn_rgb_gt import bench, demo_data, train
from fcnn_rgb_gt.train import TrainConfig

RECORD_KEYS = {"task", "what", "command", "config", "data", "machine", "load", "date_utc", "metrics", "timings"}


def _report(iou: float) -> dict:
    return {"iou": iou, "f1": 0.5, "precision": 0.5, "recall": 0.5, "accuracy": 0.9}


def _score(val: float, a: float, b: float, epoch: int = 3) -> dict:
    return {"best_epoch": epoch, "val_iou": val, "epochs_run": 16, "train_loop_seconds": 10.0,
            "pairs": {"p1": _report(a), "p2": _report(b)}}


def test_the_record_has_one_shape_and_the_seed_means(tmp_path):
    from dataclasses import asdict

    scores = {0: _score(0.5, 0.3, 0.5), 1: _score(0.4, 0.4, 0.6, epoch=5), 2: _score(0.6, 0.2, 0.4)}
    predict = {"1x": {"threads": 2, "seconds": 1.0}, "4x_area": {"threads": 2, "seconds": 4.0}}
    r = bench.record(asdict(TrainConfig()), tmp_path, scores, {0: 100.0, 1: 110.0, 2: 120.0}, predict,
                     {"start": [1.0], "end": [2.0]})
    assert set(r) == RECORD_KEYS
    assert "data" not in r["config"] and "out" not in r["config"] and r["config"]["lr"] == TrainConfig.lr
    m = r["metrics"]
    assert m["iou_at_0.5"]["p1"] == {"mean": 0.3, "min": 0.2, "max": 0.4, "per_seed": [0.3, 0.4, 0.2]}
    assert m["iou_at_0.5"]["p2"]["mean"] == 0.5 and m["best_epoch_per_seed"] == [3, 5, 3]
    assert m["val_strip_iou_at_0.5"]["mean"] == 0.5 and m["target_met_on_every_pair"] is False
    assert set(m["seed0_report"]) == {"p1", "p2"}
    assert r["timings"]["train_seconds_per_seed"] == [100.0, 110.0, 120.0]
    json.dumps(r)  # JSON as it is


def test_bench_skips_demo_data(tmp_path, capsys):
    demo_data.write(tmp_path / "fcnn" / "train_substitute", seed=0, size=(160, 200))
    assert bench.main(["--data", str(tmp_path / "fcnn"), "--out", str(tmp_path / "b.json")]) == 0
    assert "skipped" in capsys.readouterr().out and not (tmp_path / "b.json").exists()


def test_bench_without_test_pairs_is_one_line_before_any_training(tmp_path, capsys, monkeypatch):
    train_dir = tmp_path / "fcnn" / "train_substitute"
    train_dir.mkdir(parents=True)
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(train_dir / "rgb.png")
    Image.fromarray(np.full((40, 40), 255, np.uint8)).save(train_dir / "gt.png")
    monkeypatch.setattr(bench, "train_run", lambda *a, **k: pytest.fail("trained"))
    args = ["--data", str(tmp_path / "fcnn"), "--out", str(tmp_path / "b.json"), "--runs", str(tmp_path / "runs")]
    for make_extra in (False, True):
        if make_extra:  # a pair folder without its gt.png cannot be scored either
            (tmp_path / "fcnn" / "extra" / "p1").mkdir(parents=True)
            Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "fcnn" / "extra" / "p1" / "rgb.png")
        assert bench.main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {tmp_path / 'fcnn' / 'extra'}: no test pair"), err
    assert not (tmp_path / "b.json").exists()


@pytest.mark.slow
def test_bench_end_to_end_writes_the_record_and_figures(pair_dir, tmp_path, monkeypatch):
    """Two seeds of a 1-epoch training (train_run shortened in-process) on a copy of the demo pair laid out as the
    real data (no demo marker), predict timed in fresh processes, the record and both figures written."""
    data = tmp_path / "fcnn"
    for sub, src in (("train_substitute", pair_dir), ("extra/p1", pair_dir / "extra" / "demo_val")):
        (data / sub).mkdir(parents=True)
        for name in ("rgb.png", "gt.png"):
            shutil.copy(src / name, data / sub / name)

    def short_run(train_dir, out, seed, threads=0):
        assert train.main(["--data", str(train_dir), "--out", str(out), "--seed", str(seed), "--epochs", "1",
                           "--tile", "64"]) == 0
        return 1.0

    monkeypatch.setattr(bench, "train_run", short_run)
    out, docs = tmp_path / "fcnn.json", tmp_path / "docs"
    assert bench.main(["--data", str(data), "--runs", str(tmp_path / "runs"), "--out", str(out),
                       "--docs", str(docs), "--seeds", "0", "1"]) == 0
    r = json.loads(out.read_text())
    assert set(r) == RECORD_KEYS and r["metrics"]["seeds"] == [0, 1]
    assert 0 <= r["metrics"]["iou_at_0.5"]["p1"]["mean"] <= 1 and set(r["timings"]["predict"]) == {"1x", "4x_area"}
    assert r["timings"]["predict"]["4x_area"]["size"] == [400, 320]
    for name in ("dubai_loss_vs_epochs.png", "dubai_prediction.png"):
        assert (docs / name).stat().st_size < 150_000, name
