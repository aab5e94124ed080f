import numpy as np
import pytest
from sklearn import metrics as skm

from common import metrics as M


def test_binary_metrics_hand_computed():
    pred = np.array([[1, 1, 0, 0], [1, 0, 0, 0]])
    target = np.array([[1, 0, 0, 0], [1, 1, 1, 0]])
    # tp = 2, fp = 1, fn = 2, tn = 3
    assert M.iou(pred, target) == pytest.approx(2 / 5)
    assert M.dice(pred, target) == pytest.approx(4 / 7)
    r = M.precision_recall_f1(pred, target)
    assert r["precision"] == pytest.approx(2 / 3)
    assert r["recall"] == pytest.approx(2 / 4)
    assert r["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert r["accuracy"] == pytest.approx(5 / 8)
    # against scikit-learn
    assert r["f1"] == pytest.approx(skm.f1_score(target.ravel(), pred.ravel()))
    assert M.iou(pred, target) == pytest.approx(skm.jaccard_score(target.ravel(), pred.ravel()))


def test_empty_mask_conventions():
    empty = np.zeros((4, 4))
    some = np.eye(4)
    assert M.dice(empty, empty) == 1.0 and M.iou(empty, empty) == 1.0
    assert M.dice(some, empty) == 0.0 and M.iou(empty, some) == 0.0
    assert M.precision_recall_f1(empty, empty) == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "accuracy": 1.0}
    r = M.precision_recall_f1(empty, some)
    assert r["precision"] == 0.0 and r["recall"] == 0.0 and r["f1"] == 0.0
    r = M.precision_recall_f1(some, empty)
    assert r["precision"] == 0.0 and r["recall"] == 0.0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        M.iou(np.zeros((2, 2)), np.zeros((2, 3)))


def _box(y0, x0, y1, x1, shape=(20, 20)):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def test_f2_image_score_hand_computed():
    gt = [_box(0, 0, 4, 4), _box(10, 10, 14, 14)]
    # prediction 1: exact (IoU 1); prediction 2: shifted by one column -> IoU 12/20 = 0.6; prediction 3: false positive
    preds = [_box(0, 0, 4, 4), _box(10, 11, 14, 15), _box(16, 0, 18, 2)]
    # thresholds 0.50, 0.55 (IoU 0.6 > t): tp 2, fp 1, fn 0 -> 10/11;
    # thresholds 0.60..0.95 (8 of them): tp 1, fp 2, fn 1 -> 5/11
    expected = (2 * 10 / 11 + 8 * 5 / 11) / 10
    assert M.f2_image_score(preds, gt) == pytest.approx(expected)


def test_f2_empty_rules_and_dataset_mean():
    ship = [_box(0, 0, 3, 3)]
    assert M.f2_image_score([], []) == 1.0
    assert M.f2_image_score(ship, []) == 0.0
    assert M.f2_image_score([], ship) == 0.0
    assert M.f2_image_score(ship, ship) == 1.0
    assert M.airbus_score([([], []), (ship, []), (ship, ship)]) == pytest.approx(2 / 3)


def test_connected_components():
    m = np.zeros((6, 6), bool)
    m[0, 0] = m[1, 1] = True  # diagonal neighbours
    m[4:6, 4:6] = True
    assert len(M.connected_components(m, connectivity=2)) == 2
    assert len(M.connected_components(m, connectivity=1)) == 3
    for comp, idx in zip(M.connected_components(m), M.component_indices(m)):
        np.testing.assert_array_equal(np.flatnonzero(comp), idx)


def test_pixel_auroc_and_ap_match_sklearn():
    rng = np.random.default_rng(0)
    maps = [rng.random((16, 16)) for _ in range(3)]
    masks = [m > 0.8 for m in (rng.random((16, 16)) for _ in range(3))]
    s = np.concatenate([x.ravel() for x in maps])
    t = np.concatenate([x.ravel() for x in masks])
    assert M.pixel_auroc(maps, masks) == pytest.approx(skm.roc_auc_score(t, s))
    assert M.pixel_ap(maps, masks) == pytest.approx(skm.average_precision_score(t, s))
    assert np.isnan(M.pixel_auroc(maps[0], np.zeros((16, 16))))


def test_best_f1():
    scores = np.array([0.1, 0.2, 0.8, 0.9])
    target = np.array([0, 0, 1, 1])
    r = M.best_f1(scores, target)
    assert r["f1"] == pytest.approx(1.0) and r["iou"] == pytest.approx(1.0)
    assert 0.2 < r["threshold"] <= 0.8


def test_aupro_perfect_random_and_hand_computed():
    mask = np.zeros((32, 32), bool)
    mask[4:8, 4:8] = True
    mask[20:30, 20:30] = True
    assert M.aupro(mask.astype(float), mask) == pytest.approx(1.0, abs=1e-6)
    assert M.aupro(-mask.astype(float), mask) == pytest.approx(0.0, abs=1e-6)
    # one region scored 1, the other tied with all normal pixels at 0: the curve goes from (FPR 0, PRO 0.5)
    # straight to (1, 1); up to FPR 0.3 the area is 0.3 * (0.5 + 0.65) / 2, normalised by 0.3 -> 0.575
    scores = np.zeros((32, 32))
    scores[4:8, 4:8] = 1.0
    assert M.aupro(scores, mask) == pytest.approx(0.575, abs=1e-6)
    # region overlap is averaged over regions, not pixels: the small region weighs as much as the big one
    scores = np.zeros((32, 32))
    scores[20:30, 20:30] = 1.0
    assert M.aupro(scores, mask) == pytest.approx(0.575, abs=1e-6)
    assert np.isnan(M.aupro(scores, np.zeros_like(mask)))


def test_aupro_partial_detection():
    """A ramp of scores over a region: PRO grows linearly while FPR stays 0, then FPR grows."""
    mask = np.zeros((10, 100), bool)
    mask[:, :10] = True
    scores = np.zeros((10, 100))
    scores[:, :10] = np.linspace(1, 0.5, 10)[None, :]
    scores[:, 10:] = np.linspace(0.4, 0.0, 90)[None, :]
    # PRO reaches 1 at FPR 0, so the area up to 0.3 is 1
    assert M.aupro(scores, mask, num_thresholds=500) == pytest.approx(1.0, abs=1e-3)


def test_image_auroc():
    assert M.image_auroc([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 1.0
    assert np.isnan(M.image_auroc([0.1, 0.2], [0, 0]))


def test_classification_summary():
    labels = ["a", "b", "c"]
    y_true = ["a", "a", "b", "c", "c", "c"]
    y_pred = ["a", "b", "b", "c", "c", "a"]
    s = M.classification_summary(y_true, y_pred, labels)
    assert s["accuracy"] == pytest.approx(4 / 6)
    assert s["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert s["per_class"]["b"]["precision"] == pytest.approx(0.5)
    assert s["per_class"]["c"]["recall"] == pytest.approx(2 / 3)
    assert s["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"))
    # indices work as well as names
    assert M.classification_summary([0, 1], [0, 0], labels)["accuracy"] == 0.5


def test_instance_ious():
    a, b, c = np.zeros((3, 8, 8), bool)
    a[:4, :4] = True  # 16 px
    b[:4, :2] = True  # covers half of a
    c[6:, 6:] = True
    np.testing.assert_allclose(M.instance_ious([b], [a, c]), [[0.5, 0.0]])
    np.testing.assert_allclose(M.instance_ious([b], [a, c]).max(axis=0, initial=0), [0.5, 0.0])
    assert M.instance_ious([], [a]).shape == (0, 1) and M.instance_ious([a], []).shape == (1, 0)
    np.testing.assert_allclose(M.instance_ious([], [a]).max(axis=0, initial=0), [0.0])
    assert M.f2_from_ious(M.instance_ious([b], [a, c])) == M.f2_image_score([b], [a, c])
