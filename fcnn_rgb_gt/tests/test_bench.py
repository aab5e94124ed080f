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
    return {"iou": iou, "f1": 0.5, "precision": 0.5, "recall": 0.5, "accuracy": 0.9, "share": 0.1,
            "true_share": 0.12, "grid": [iou] * len(bench.GRID)}


def _score(val: float, **ious: float) -> dict:
    return {"epochs_run": 16, "val_iou": val, "threshold": 0.7, "train_loop_seconds": 10.0,
            "pairs": {name: _report(v) for name, v in ious.items()}}


def test_the_record_holds_the_cross_pair_matrix_its_worst_cell_and_the_other_source_apart(tmp_path):
    from dataclasses import asdict

    scores = {"a": {0: _score(0.5, b=0.3, c=0.5, x=0.1), 1: _score(0.4, b=0.5, c=0.7, x=0.3)},
              "b": {0: _score(0.6, a=0.2, c=0.4), 1: _score(0.6, a=0.4, c=0.4)},
              "c": {0: _score(0.6, a=0.6, b=0.6), 1: _score(0.6, a=0.6, b=0.8)}}
    predict = {"1x": {"threads": 2, "seconds": 1.0}, "4x_area": {"threads": 2, "seconds": 4.0}}
    r = bench.record(asdict(TrainConfig()), tmp_path, scores, ["a", "b", "c"], {}, predict,
                     {"start": [1.0], "end": [2.0]})
    assert set(r) == RECORD_KEYS
    assert "data" not in r["config"] and "out" not in r["config"] and r["config"]["lr"] == TrainConfig.lr
    m = r["metrics"]
    assert m["cells_iou"]["a->b"] == {"mean": 0.4, "min": 0.3, "max": 0.5, "per_seed": [0.3, 0.5]}
    assert len(m["cells_iou"]) == 6 and "a->x" not in m["cells_iou"]  # x is another source: apart
    assert m["other_source_iou"] == {"x": {"mean": 0.2, "min": 0.1, "max": 0.3, "per_seed": [0.1, 0.3]}}
    assert m["worst_cell"]["cell"] == "b->a" and m["worst_cell"]["mean"] == 0.3
    assert m["matrix_mean_iou"] == 0.5  # cells 0.4, 0.6, 0.3, 0.4, 0.6, 0.7
    assert m["matrix_mean_per_seed"]["per_seed"] == [0.4333, 0.5667]
    assert m["building_share"]["a->b"] == {"marked": 0.1, "truth": 0.12}
    assert m["target_met_on_every_cell"] is False and m["threshold"]["a"] == [0.7, 0.7]
    json.dumps(r)  # JSON as it is


def test_the_nested_figure_chooses_each_held_out_pairs_setting_on_the_other_pairs():
    def score(**grids: list[float]) -> dict:  # one run: its grid per test pair, the rest unused
        return {"pairs": {name: {"grid": g} for name, g in grids.items()}}

    n, a, b = len(bench.GRID), 0, bench.GRID.index((0.55, 0, 3))  # a = (0.5, 0, 0): threshold, limit, radius
    good_a, good_b = [0.0] * n, [0.0] * n
    good_a[a], good_b[b] = 0.6, 0.4
    # pairs x and y do best at setting a, pair z at b: z held out gets a, chosen on x's and y's cells
    scores = {"x": {0: score(y=good_a, z=good_a)}, "y": {0: score(x=good_a, z=good_a)},
              "z": {0: score(x=good_b, y=good_b)}}
    m = bench.nested(scores, ["x", "y", "z"], [0])
    assert m["chosen"]["z"] == {"threshold": 0.5, "max_share": 0, "clean_radius": 0}
    # x held out: y's cells (0.6 at a) beat z's (0.4 at b)
    assert m["chosen"]["x"] == m["chosen"]["y"] == {"threshold": 0.5, "max_share": 0, "clean_radius": 0}
    assert m["matrix_mean_iou"] == 0.4 and m["worst_cell"] == 0.0  # z's cells score 0 at a
    assert m["matrix_mean_by_setting"]["0.5/0/0"] == 0.4 and m["matrix_mean_by_setting"]["0.55/0/3"] == 0.1333


def test_the_pool_is_the_training_pair_and_its_own_source(tmp_path):
    for sub in ("train_substitute", "extra/dubai_x", "extra/dubai_y", "extra/other"):
        (tmp_path / sub).mkdir(parents=True)
        for name in ("rgb.png", "gt.png"):
            (tmp_path / sub / name).write_bytes(b"x")
    pool, others = bench.cross_pairs(tmp_path)
    assert [d.name for d in pool] == ["train_substitute", "dubai_x", "dubai_y"]
    assert [d.name for d in others] == ["other"]
    pool, others = bench.cross_pairs(tmp_path, ["other"])
    assert [d.name for d in pool] == ["train_substitute", "other"] and len(others) == 2
    with pytest.raises(bench.BenchError, match="no pair nope"):
        bench.cross_pairs(tmp_path, ["nope"])


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
    """The cross-pair protocol on copies of the demo pairs laid out as the real data (no demo marker): one
    1-epoch training per pool pair (train_run shortened in-process), the matrix, predict timed in fresh
    processes, the record and both figures written."""
    data = tmp_path / "fcnn"
    layout = {"train_substitute": pair_dir, "extra/p1": pair_dir / "extra" / "demo_val",
              "extra/p2": pair_dir / "extra" / "demo_val", "extra/q": pair_dir}
    for sub, src in layout.items():
        (data / sub).mkdir(parents=True)
        for name in ("rgb.png", "gt.png"):
            shutil.copy(src / name, data / sub / name)

    def short_run(train_dir, out, seed, threads=0, flags=()):
        assert flags == ("--tile", "64")
        assert train.main(["--data", str(train_dir), "--out", str(out), "--seed", str(seed), "--epochs", "1",
                           *flags]) == 0
        return 1.0

    monkeypatch.setattr(bench, "train_run", short_run)
    out, docs = tmp_path / "fcnn.json", tmp_path / "docs"
    assert bench.main(["--data", str(data), "--runs", str(tmp_path / "runs"), "--out", str(out),
                       "--docs", str(docs), "--seeds", "0", "--pool", "p1", "p2", "--train-args", "--tile 64"]) == 0
    r = json.loads(out.read_text())
    m = r["metrics"]
    assert set(r) == RECORD_KEYS and m["seeds"] == [0] and r["data"]["pool"] == ["train_substitute", "p1", "p2"]
    assert len(m["cells_iou"]) == 6 and set(m["other_source_iou"]) == {"q"} and 0 <= m["matrix_mean_iou"] <= 1
    assert r["config"]["tile"] == 64 and r["command"].endswith("--train-args '--tile 64'")
    assert set(m["nested"]["chosen"]) == {"train_substitute", "p1", "p2"} and 0 <= m["nested"]["worst_cell"] <= 1
    assert (tmp_path / "runs" / "p2" / "seed0" / "best.pt").is_file()
    assert set(r["timings"]["predict"]) == {"1x", "4x_area"}
    assert r["timings"]["predict"]["4x_area"]["size"] == [400, 320]
    for name in ("dubai_loss_vs_epochs.png", "dubai_prediction.png"):
        assert (docs / name).stat().st_size < 150_000, name
