"""End-to-end: train on demo photos, predict a folder with a corrupt file, a constant photo and spaces in names."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from common.io import read_mask
from common.metrics import pixel_auroc
from wood_anomaly import predict

pytestmark = pytest.mark.slow  # trains and predicts on demo photos


def rows_of(folder, name="predictions.csv"):
    with open(folder / name, newline="") as f:
        return {r["image"]: r for r in csv.DictReader(f)}


def test_training_writes_model_and_log(trained_run, demo_dir):
    ckpt = torch.load(trained_run / "model.pt", weights_only=True)
    assert ckpt["bank"].ndim == 2 and ckpt["bank"].shape[0] == 4 * 600
    assert ckpt["bank_image"].tolist() == [i for i in range(4) for _ in range(600)]
    assert ckpt["deep_q95"] > ckpt["deep_q50"] > 0 and ckpt["colour_q95"] > ckpt["colour_q50"] >= 0
    assert ckpt["config"]["threshold_spreads"] == 0 and ckpt["threshold_rule"].startswith("fitted")
    low, high = ckpt["threshold_band"]  # fitted to the training photos' own maps, in training spreads
    assert 0 < low <= ckpt["threshold"] <= high and 0 < ckpt["threshold_share"] < 0.12
    # for predict's pooled refit: the upper 24 % of the 4 x 192 x 256 map pixels sampled (every one of them here)
    assert ckpt["fit_count"] == 4 * 192 * 256 and len(ckpt["fit_tail"]) == int(np.ceil(0.24 * 4 * 192 * 256))
    assert ckpt["train_images"] == sorted(p.name for p in (demo_dir / "images").iterdir())
    assert len(set(ckpt["train_ids"])) == 4 and ckpt["config"]["tile"] == 128
    config = json.loads((trained_run / "config.json").read_text())
    assert config["bank_size"] == 2400 and config["tile"] == 128
    log = (trained_run / "log.csv").read_text().splitlines()
    assert log[0] == "image,height,width,patches,kept,seconds" and len(log) == 5


def test_label_free_threshold_separates_clean_texture(demo_dir, predicted):
    """The threshold fitted to the training photos' maps leaves clean texture below it and puts every planted
    defect's photo above it; the labels follow, each with a margin (in threshold bands) that says how sure."""
    rows = rows_of(predicted)
    for p in sorted((demo_dir / "masks" / "consensus").glob("*.png")):
        truth = read_mask(p, {0: 0}, default=1) > 0
        predicted_mask = read_mask(predicted / p.stem / "preds.png", {0: 0, 255: 1}) > 0
        assert predicted_mask[~truth].mean() < 0.01
        assert rows[p.stem + ".jpg"]["label"] == ("anomalous" if truth.any() else "normal")
        assert (float(rows[p.stem + ".jpg"]["score"]) > 1) == truth.any()
        assert (float(rows[p.stem + ".jpg"]["margin"]) > 0) == truth.any()


def test_planted_defects_score_higher_than_clean_texture(demo_dir, predicted):
    maps, masks = [], []
    for p in sorted((demo_dir / "masks" / "consensus").glob("*.png")):
        maps.append(np.load(predicted / p.stem / "anomaly_map.npy").astype(np.float32))
        masks.append(read_mask(p, {0: 0}, default=1) > 0)
    defect = np.concatenate([m[t] for m, t in zip(maps, masks)])
    clean = np.concatenate([m[~t] for m, t in zip(maps, masks)])
    assert defect.size and np.median(defect) > np.quantile(clean, 0.99)
    assert pixel_auroc(maps, masks) > 0.95
    rows = rows_of(predicted)
    scores = {name: float(r["score"]) for name, r in rows.items() if r["status"] == "ok" and "demo" in name}
    labels = {p.stem + ".jpg": t.any() for p, t in zip(sorted((demo_dir / "masks" / "consensus").glob("*.png")), masks)}
    assert min(s for n, s in scores.items() if labels[n]) > max(s for n, s in scores.items() if not labels[n])


def test_outputs_exist_for_every_readable_input_including_spaces(predict_dir, predicted):
    rows = rows_of(predicted)
    assert set(rows) == {p.name for p in predict_dir.iterdir()}
    for name, r in rows.items():
        stem = name.rsplit(".", 1)[0]
        if name == "broken photo.jpg":
            assert r["status"] != "ok" and "broken photo.jpg" in r["status"] and r["label"] == "error"
            assert not (predicted / stem).exists()
            continue
        assert " " in stem and r["status"] == "ok" and r["label"] in ("anomalous", "normal")
        for f in ("preds.png", "heatmap.jpg", "overlay.jpg", "anomaly_map.npy"):
            assert (predicted / stem / f).stat().st_size > 0
        mask = read_mask(predicted / stem / "preds.png", {0: 0, 255: 1})
        assert int(r["anomalous_area_px"]) == int(mask.sum())


def test_constant_image_gives_a_flat_map(trained_run, predicted):
    m = np.load(predicted / "constant photo" / "anomaly_map.npy").astype(np.float32)
    threshold = torch.load(trained_run / "model.pt", weights_only=True)["threshold"]
    assert m.max() - m.min() < 0.05 * threshold  # tile-border effects of the CNN stay tiny
    assert rows_of(predicted)["constant photo.png"]["label"] == "normal"


def test_constant_image_flat_without_self_reference(trained_run):
    model, cfg, ckpt = predict.load_model(trained_run / "model.pt", torch.device("cpu"))
    cfg.self_patches = 0
    m = predict.anomaly_map(model, np.full((200, 300, 3), 128, np.uint8), cfg, torch.device("cpu"), ckpt)
    threshold = torch.load(trained_run / "model.pt", weights_only=True)["threshold"]
    assert m.shape == (200, 300) and m.max() - m.min() < 0.05 * threshold


def test_the_training_folder_predicted_again_keeps_the_training_fit(trained_run, demo_dir, tmp_path, capsys):
    """The default refit on the training scores pooled with those of the photos predicted: for the training
    photos themselves the same scores twice, so about the threshold of training; recorded in threshold.json."""
    predict.main(["--data", str(demo_dir), "--model", str(trained_run / "model.pt"), "--out", str(tmp_path / "p")])
    used = json.loads((tmp_path / "p" / "threshold.json").read_text())
    trained = torch.load(trained_run / "model.pt", weights_only=True)["threshold"]
    assert used["threshold"] == pytest.approx(trained, rel=0.05) and used["training_threshold"] == trained
    assert "pooled with those of the 4 photo(s)" in used["source"] and "depend on the photos" in capsys.readouterr().err


def test_an_older_model_without_training_scores_uses_the_training_fit(trained_run, demo_dir, tmp_path, capsys):
    ckpt = torch.load(trained_run / "model.pt", weights_only=True)
    del ckpt["fit_tail"], ckpt["fit_count"]
    torch.save(ckpt, tmp_path / "old.pt")
    predict.main(["--data", str(demo_dir), "--model", str(tmp_path / "old.pt"), "--out", str(tmp_path / "p")])
    used = json.loads((tmp_path / "p" / "threshold.json").read_text())
    assert used["threshold"] == ckpt["threshold"] and "older model.pt" in used["source"]
    assert "stores no training scores" in capsys.readouterr().err
    rows = rows_of(tmp_path / "p")
    assert all(r["status"] == "ok" and r["margin"] for r in rows.values())
