"""The label-free threshold fitted per folder (model.fit_threshold), what predict reports around it (margin,
heat map), the calibration warning, the generalization protocols' building blocks and the varied-wood
generator. Fast: synthetic score samples and small hand-made folders; one slow test runs a protocol end to end."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from common.io import list_images, read_mask, save_image
from wood_anomaly import demo_data, predict, protocols, train
from wood_anomaly.config import TrainConfig
from wood_anomaly.model import fit_threshold, upper_part


def mixture(rng, n: int, share: float, centre: float, spread: float) -> tuple[np.ndarray, np.ndarray]:
    """Scores like a fused map's: a log-normal normal texture (median 0.1 spread, heavy right tail) plus a
    ``share`` of defect scores, log-normal around ``centre`` spreads (``spread``: their log standard deviation)."""
    defect = rng.random(n) < share
    scores = np.exp(rng.normal(np.log(0.1), 1.0, n))
    scores[defect] = np.exp(rng.normal(np.log(centre), spread, defect.sum()))
    return scores, defect


def f1(scores, truth, threshold) -> float:
    tp = np.sum((scores > threshold) & truth)
    return 2 * tp / (np.sum(scores > threshold) + truth.sum())


def best_f1(scores, truth) -> float:
    order = np.argsort(-scores)
    tp = np.cumsum(truth[order])
    return float(np.max(2 * tp / (np.arange(1, scores.size + 1) + truth.sum())))


@pytest.mark.parametrize("share, centre, spread", [(0.003, 30.0, 0.4),  # rare, far: the 7 photos' knots
                                                   (0.04, 3.0, 0.8),  # common, broad, overlapping: stains
                                                   (0.01, 8.0, 0.6)])
def test_fitted_threshold_follows_the_defect_share_and_contrast(share, centre, spread):
    """Without labels, the fitted threshold keeps at least 0.8 of the best F1 whatever the defect share and
    contrast, where one fixed number of spreads cannot (10 spreads finds nothing of the overlapping defects)."""
    scores, truth = mixture(np.random.default_rng(0), 400_000, share, centre, spread)
    fit = fit_threshold(scores)
    assert f1(scores, truth, fit["threshold"]) >= 0.8 * best_f1(scores, truth)
    assert fit["threshold_band"][0] <= fit["threshold"] <= fit["threshold_band"][1]
    assert 0.3 * share < fit["threshold_share"] < 3 * share
    if centre < 10:  # a fixed 10 spreads loses much of it
        assert f1(scores, truth, 10.0) < 0.6 * best_f1(scores, truth)


def test_fitted_threshold_is_scale_free():
    """Scores in other units (another training spread) move the threshold by the same factor."""
    scores, _ = mixture(np.random.default_rng(1), 200_000, 0.02, 5.0, 0.5)
    assert fit_threshold(3 * scores)["threshold"] == pytest.approx(3 * fit_threshold(scores)["threshold"], rel=1e-6)


def test_a_folder_without_defects_gets_an_empty_mask_and_says_it_is_unsure():
    scores, _ = mixture(np.random.default_rng(2), 200_000, 0.0, 1.0, 1.0)
    fit = fit_threshold(scores)
    assert fit["threshold"] >= scores.max() and fit["threshold_sure"] is False and fit["threshold_share"] == 0
    assert "no defect population" in fit["threshold_rule"]


@pytest.mark.parametrize("scores", [np.zeros(0), np.ones(50), np.full(10_000, 0.5)])
def test_too_few_or_identical_scores_give_a_threshold_not_an_error(scores):
    fit = fit_threshold(scores)
    assert np.isfinite(fit["threshold"]) and fit["threshold_sure"] is False


def pooled_refit(train_scores: np.ndarray, inspected: np.ndarray) -> tuple[dict, dict]:
    """``(training fit, refit)``: the training scores kept as train.py keeps them (model.upper_part), pooled
    by predict.refit with an inspected folder's scores from the part's lowest value up, as predict's first pass
    keeps them."""
    fit = fit_threshold(train_scores)
    tail, count = upper_part(train_scores)
    ckpt = {"fit_tail": torch.from_numpy(tail), "fit_count": count}
    kept = [inspected[inspected >= tail[-1]]]
    return fit, predict.refit({**fit, "source": "training"}, ckpt, kept, inspected.size, 1)


def test_the_stored_upper_part_gives_the_training_fit_exactly():
    scores = mixture(np.random.default_rng(3), 300_000, 0.01, 8.0, 0.6)[0].astype(np.float32)
    tail, count = upper_part(scores)
    assert count == scores.size and tail.size == int(np.ceil(0.24 * scores.size)) and tail[0] == scores.max()
    assert fit_threshold(tail, count) == fit_threshold(scores)


def test_refit_on_a_folder_with_more_and_fainter_defects_lowers_the_threshold():
    """Training photos with rare, far defects (the fold whose training folder holds few defects) and inspected
    photos with a heavier tail of fainter ones: the training fit finds almost none of them, the refit on both
    folders pooled keeps most of the best F1 (no label used)."""
    rng = np.random.default_rng(0)
    train_scores = mixture(rng, 400_000, 0.003, 30.0, 0.4)[0].astype(np.float32)
    inspected, truth = mixture(rng, 200_000, 0.02, 5.0, 0.5)
    fit, pooled = pooled_refit(train_scores, inspected.astype(np.float32))
    assert pooled["threshold"] < 0.5 * fit["threshold"] and "pooled" in pooled["source"]
    assert f1(inspected, truth, fit["threshold"]) < 0.1 * best_f1(inspected, truth)
    assert f1(inspected, truth, pooled["threshold"]) >= 0.8 * best_f1(inspected, truth)
    assert pooled["training_threshold"] == fit["threshold"]


def test_refit_on_the_training_scores_again_gives_the_training_fit():
    """The training folder predicted again: the pooled scores are the same scores twice (predict draws the very
    samples of training), and the threshold moves only by the finer top of the range (within 2 %)."""
    scores = mixture(np.random.default_rng(4), 300_000, 0.01, 8.0, 0.6)[0].astype(np.float32)
    fit, pooled = pooled_refit(scores, scores)
    assert pooled["threshold"] == pytest.approx(fit["threshold"], rel=0.02)
    assert predict.refit(fit, {}, [], 0, 0) is fit  # no photo sampled: the training fit itself


def test_margin_in_units_of_the_band():
    """Inside one band width of the threshold |margin| < 1 (unsure), beyond it >= 1; no band: empty."""
    assert predict.margin(2.0, 2.0, [1.0, 4.0]) == "0.00"
    assert abs(float(predict.margin(3.0, 2.0, [1.0, 4.0]))) < 1 <= float(predict.margin(9.0, 2.0, [1.0, 4.0]))
    assert float(predict.margin(0.4, 2.0, [1.0, 4.0])) <= -1
    assert float(predict.margin(2.5, 2.0, [2.0, 2.0])) == pytest.approx(np.log(1.25) / np.log(1.5), abs=0.01)
    assert predict.margin(3.0, 2.0, None) == ""


def test_heatmap_uses_the_photo_own_range():
    """A map whose scores all lie far below a large threshold is not black: its own 1st-99.9th percentiles span
    the colours unless nothing reaches the threshold; the threshold contour is the mask's inner border."""
    score = np.tile(np.linspace(0, 1, 200, dtype=np.float32), (50, 1))
    bright = predict.colorize(score, threshold=0.5).mean(2)
    assert bright[:, -20:].mean() > 150 and bright[:, :20].mean() < 60
    dark = predict.colorize(score, threshold=20.0).mean(2)
    assert dark.max() < 60  # nothing near the threshold: a calm map
    mask = score > 0.5
    edge = predict.outline(mask)
    assert edge.any() and not (edge & ~mask).any() and edge.sum() < mask.sum()


def test_calibration_warning_names_the_short_sample():
    cfg = TrainConfig()
    full = {"held_out": np.zeros((4000, 2))}
    assert train.calibration_warning([full, full], cfg) is None
    short = {"held_out": np.zeros((2096, 2))}
    text = train.calibration_warning([full, short, {"index": 3, "error": "bad"}], cfg)
    assert "1 of 2 photos" in text and "fewest 2096" in text and "6096 cells" in text


def test_defect_crops_pick_the_most_defective_without_overlap():
    mask = np.zeros((64, 96), bool)
    mask[5:15, 5:15] = True  # 100 px in the top-left crop
    mask[40:44, 70:74] = True  # 16 px
    crops = protocols.defect_crops(mask, 32, 0.01)
    assert crops[0] == (0, 0) and all(mask[y:y + 32, x:x + 32].mean() >= 0.01 for y, x in crops)
    assert all(abs(a[0] - b[0]) >= 32 or abs(a[1] - b[1]) >= 32 for a in crops for b in crops if a != b)
    assert protocols.defect_crops(np.zeros((64, 64), bool), 32, 0.01) == []


def test_leave_one_board_out_keeps_the_two_photos_of_one_board_together(tmp_path):
    data = tmp_path / "data"
    stems = ["x_004_51", "x_001_85", "x_001_101", "x_004_156"]
    for s in stems:
        save_image(data / "images" / f"{s}.jpg", np.full((8, 8, 3), 120, np.uint8))
        save_image(data / "masks" / "consensus" / f"{s}.png", np.zeros((8, 8), np.uint8))
    folds = protocols.lobo_folds(data, tmp_path / "work")
    tests = [sorted(p.stem for p in list_images(test / "images")) for _, test in folds]
    assert sorted(tests) == [["x_001_101", "x_001_85"], ["x_004_156"], ["x_004_51"]]
    for train_dir, test_dir in folds:
        held = {p.stem for p in list_images(test_dir / "images")}
        assert held.isdisjoint(p.stem for p in list_images(train_dir / "images"))
        assert {p.stem for p in list_images(test_dir / "masks" / "consensus")} == held


def test_varied_woods_have_the_asked_defect_share_and_layout(tmp_path):
    out = demo_data.write(tmp_path / "varied", seed=4, surface="varied", size=(128, 128), n_images=3, clean_every=0)
    labels = {r["stem"]: r["label"] for r in csv.DictReader(open(out / "image_labels.csv"))}
    assert set(labels.values()) == {"anomalous"}
    for p in list_images(out / "images"):
        share = (read_mask(out / "masks" / "consensus" / f"{p.stem}.png", {0: 0, 255: 1}) > 0).mean()
        assert 0.01 <= share < 0.25


@pytest.mark.slow
def test_a_protocol_runs_end_to_end(tmp_path):
    """demo_wood: train + predict in the brief's setting, scored: every figure the README table reads."""
    result = protocols.run("demo_wood", tmp_path, tmp_path / "work", [], "cpu")
    for key in ("pixel_auroc", "pixel_ap", "aupro_0.3", "best_f1", "mask_f1", "mask_f1_over_best"):
        assert 0 <= result[key] <= 1, key
    assert result["pixel_auroc"] > 0.95 and result["photos"] == 6 and result["folds"] == 1
    assert result["mask_f1_over_best"] >= 0.8 and result["defective_labelled_anomalous"] == "3 of 3"
