"""Cross-validation (bench.py --folds, cv.py), the image-level and size-binned recall of metrics.Scores, and how
train.py says that its training ended."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest


def box(y, x, h=4, w=6, size=32):
    m = np.zeros((size, size), bool)
    m[y:y + h, x:x + w] = True
    return m


def test_image_recall_precision_and_recall_by_ship_size():
    """Four hand-made images: image recall 1/2 (one ship image predicted empty), precision 1/2 (one false ship
    on a ship-free image); recall by size from a 24 px ship found exactly, a 24 px ship covered half by a
    prediction twice its size (IoU 0.2) and a 1,200 px ship untouched."""
    from airbus_ships.metrics import Scores

    scores = Scores()
    scores.add([box(2, 2, size=64), box(12, 10, 8, 6, 64)], [box(2, 2, size=64), box(10, 10, 4, 6, 64)], (64, 64))
    scores.add([], [box(0, 0, 30, 40, 64)], (64, 64))
    scores.add([box(40, 40, size=64)], [], (64, 64))
    scores.add([], [], (64, 64))
    s = scores.summary()
    assert (s["image_recall"], s["image_precision"]) == (0.5, 0.5)
    small, mid, large = s["recall_by_size"]
    assert (small["pixels"], mid["pixels"], large["pixels"]) == ("0-99", "100-999", ">=1000")
    assert (small["ships"], small["recall_iou_0.5"], small["recall_covered_half"]) == (2, 0.5, 1.0)
    assert (mid["ships"], mid["recall_iou_0.5"]) == (0, None)
    assert (large["ships"], large["recall_iou_0.5"], large["recall_covered_half"]) == (1, 0.0, 0.0)
    empty = Scores()
    empty.add([], [], (8, 8))
    assert empty.image_recall_precision() == (None, None)


def test_folds_are_stratified_and_hold_each_image_once():
    from airbus_ships.cv import fold_of_images

    frame = pd.DataFrame({"ImageId": [f"{i}.jpg" for i in range(23)], "n_ships": [1] * 15 + [0] * 8})
    folds = fold_of_images(frame, 4, seed=0)
    assert len(folds) == 23 and set(folds) == {0, 1, 2, 3}
    for k in range(4):  # 15 ship and 8 ship-free images: 3-4 and 2 per fold
        assert (frame["n_ships"][folds == k] > 0).sum() in (3, 4) and (frame["n_ships"][folds == k] == 0).sum() == 2
    assert (fold_of_images(frame, 4, seed=0) == folds).all()
    with pytest.raises(ValueError, match="at least 9 images with ships and 9 without"):
        fold_of_images(frame, 9, seed=0)


def test_each_fold_is_scored_with_the_rule_chosen_on_the_other_folds(strict_json, tmp_path):
    """Six 64x64 maps in three folds: a true ship at 0.9 on the ship images, a faint false blob (peak 0.6) on the
    ship-free ones. Every fold's rule, chosen on the other four maps, keeps the ship and drops the blob (a peak
    of at least 0.7), so every fold scores 1; the record is strict JSON."""
    from airbus_ships.cv import score_folds, summary_lines
    from common.io import rle_encode, write_json

    maps, rles, folds = {}, {}, {}
    for i in range(6):
        prob = np.full((64, 64), 0.01, np.float32)
        ship = box(10 + 5 * i, 20, 5, 9, 64)
        if i % 2 == 0:
            prob[ship] = 0.9
            rles[f"{i}.jpg"] = rle_encode(ship)
        else:
            prob[box(30, 30, 6, 6, 64)] = 0.6
            rles[f"{i}.jpg"] = ""
        maps[f"{i}.jpg"], folds[f"{i}.jpg"] = prob.astype(np.float16), i // 2
    result = score_folds(maps, rles, folds)
    assert [f["fold"] for f in result["folds"]] == [0, 1, 2]
    for f in result["folds"]:
        assert f["kaggle_score"] == 1.0 and f["image_recall"] == 1.0 and f["image_precision"] == 1.0
        assert 0.6 < f["rule"]["min_confidence"] <= 0.9 and f["rule"]["threshold"] < 0.9
    assert result["over_folds"]["kaggle_score"] == {"mean": 1.0, "std": 0.0, "min": 1.0, "max": 1.0, "folds": 3}
    assert result["over_folds"]["image_precision"]["folds"] == 3
    assert result["pooled"]["images"] == 6 and result["pooled"]["recall_iou_0.5_0-99px"] == 1.0
    assert result["rule_all_folds"]["kaggle_score_on_all_oof"] == 1.0
    assert "3-fold cross-validation" in summary_lines(result)[0]
    write_json(tmp_path / "cv.json", result)
    assert strict_json((tmp_path / "cv.json").read_text()) == json.loads(json.dumps(result))
    from airbus_ships.figures import plot_ships_by_size  # the README figure reads a cross-validation record too
    plot_ships_by_size({"metrics": result}, tmp_path / "ships_by_size.png")
    assert (tmp_path / "ships_by_size.png").stat().st_size > 1000


@pytest.mark.parametrize("budget_after, early_epoch, ended_by, after", [
    (None, 0, "epochs", 10), (None, 3, "early_stopping", 4), (6, 0, "time_budget", 6)])
def test_how_training_ended_is_said_and_saved(budget_after, early_epoch, ended_by, after, capsys):
    import tensorflow as tf

    from airbus_ships.callbacks import ResumableEarlyStopping, TimeBudget, how_training_ended

    budget = TimeBudget(0, tf.distribute.get_strategy())
    budget.stopped_after = budget_after
    early = ResumableEarlyStopping(monitor="val_loss", patience=2)
    early.stopped_epoch, early.best = early_epoch, 0.25
    ended = how_training_ended([early, budget], epochs=10, patience=2)
    assert (ended["ended_by"], ended["ended_after_epoch"], ended["cut_short"]) == (ended_by, after, after < 10)
    assert ended["epochs_planned"] == 10
    err = capsys.readouterr().err
    assert ("early stopping ended the training after epoch 4 of 10" in err) == (ended_by == "early_stopping")


def test_training_has_no_time_budget_by_default():
    from airbus_ships.train import parse_args
    assert parse_args([]).time_budget_min == 0


@pytest.mark.slow
def test_cross_validation_end_to_end_on_demo_data(demo_dir, tmp_path, strict_json):
    """bench.run_folds with a tiny scratch U-Net: 3 folds trained by train.py, each fold's images predicted once
    (oof_probs.npz), the record's figures per fold and over the folds; stopped after one fold, a second call goes
    on with the others; run again, no fold is trained again; run with other train.py options into the same folder,
    refused."""
    from airbus_ships.bench import run_folds
    from common.io import write_json

    args = ["--encoder", "scratch", "--widths", "4,8", "--batch-size", "2", "--steps-per-epoch", "2",
            "--val-steps", "1", "--epochs", "1", "--val-fraction", "0.25", "--calib-images", "2"]
    assert run_folds(demo_dir, tmp_path, 3, args, stop_after=1) is None  # --stop-after 1: fold 0 only, no record
    assert (tmp_path / "fold0" / "oof_probs.npz").is_file() and not (tmp_path / "fold1").exists()
    result = run_folds(demo_dir, tmp_path, 3, args)
    folds = pd.read_csv(tmp_path / "folds.csv")
    assert len(folds) == 12 and sorted(folds["fold"].unique()) == [0, 1, 2]
    for k in range(3):
        with np.load(tmp_path / f"fold{k}" / "oof_probs.npz") as maps:
            assert sorted(maps.files) == sorted(folds.loc[folds["fold"] == k, "ImageId"])
            assert all(maps[f].shape == (768, 768) and maps[f].dtype == np.float16 for f in maps.files)
        train_ids = set(pd.read_csv(tmp_path / f"fold{k}" / "train.csv")["ImageId"])
        assert train_ids == set(folds.loc[folds["fold"] != k, "ImageId"])  # never its own images
    assert [f["images"] for f in result["metrics"]["folds"]] == result["data"]["fold_images"]
    assert sum(result["data"]["fold_images"]) == 12
    assert set(result["metrics"]["over_folds"]["kaggle_score"]) == {"mean", "std", "min", "max", "folds"}
    assert [t["ended_by"] for t in result["timings"]["folds"]] == ["epochs"] * 3
    write_json(tmp_path / "record.json", result)
    assert strict_json((tmp_path / "record.json").read_text()) == json.loads(json.dumps(result))
    stamp = (tmp_path / "fold1" / "model" / "best.keras").stat().st_mtime_ns
    again = run_folds(demo_dir, tmp_path, 3, args)
    assert (tmp_path / "fold1" / "model" / "best.keras").stat().st_mtime_ns == stamp
    assert again["metrics"]["over_folds"] == result["metrics"]["over_folds"]
    # maps predicted without flips (a fold from before train.py's --predict-flips default): predicted again with
    # them, as the fold's model config says, without training again
    fold_json = json.loads((tmp_path / "fold1" / "fold.json").read_text())
    assert fold_json["oof_flips"] is True
    write_json(tmp_path / "fold1" / "fold.json", {k: v for k, v in fold_json.items() if k != "oof_flips"})
    maps_stamp = (tmp_path / "fold1" / "oof_probs.npz").stat().st_mtime_ns
    run_folds(demo_dir, tmp_path, 3, args)
    assert (tmp_path / "fold1" / "model" / "best.keras").stat().st_mtime_ns == stamp
    assert (tmp_path / "fold1" / "oof_probs.npz").stat().st_mtime_ns != maps_stamp
    assert json.loads((tmp_path / "fold1" / "fold.json").read_text())["oof_flips"] is True
    with pytest.raises(SystemExit, match="fold0 holds a fold of another cross-validation"):
        run_folds(demo_dir, tmp_path, 3, args + ["--seed", "1"])  # other settings: the saved folds are not mixed in


def test_a_fold_cut_off_mid_training_is_resumed_not_restarted(demo_dir, tmp_path, monkeypatch):
    """A fold whose training left its state (model/train_state.json) but no train_summary.json was cut off:
    bench.run_folds calls train.py --resume on it; a fold with nothing on disk is trained from the start."""
    from airbus_ships import bench

    calls = []

    def stop_at_train(cmd):
        calls.append(cmd)
        raise RuntimeError("stop before predicting")

    monkeypatch.setattr(bench, "run_measured", stop_at_train)
    (tmp_path / "fold0" / "model").mkdir(parents=True)
    (tmp_path / "fold0" / "model" / "train_state.json").write_text('{"epochs_done": 3}')
    with pytest.raises(RuntimeError):
        bench.run_folds(demo_dir, tmp_path, 3, ["--epochs", "5"])
    assert calls[-1][-1] == "--resume" and calls[-1][calls[-1].index("--out") + 1] == str(tmp_path / "fold0")
    (tmp_path / "fold0" / "model" / "train_state.json").unlink()
    with pytest.raises(RuntimeError):
        bench.run_folds(demo_dir, tmp_path, 3, ["--epochs", "5"])
    assert "--resume" not in calls[-1] and calls[-1][-2:] == ["--epochs", "5"]
