"""Segmentation, anomaly and classification metrics (numpy, scipy, scikit-learn; no deep-learning framework).

Empty-mask conventions (binary metrics)
---------------------------------------
* ``dice`` and ``iou``: prediction and target both empty -> 1.0 (nothing to find, nothing found);
  exactly one of them empty -> 0.0.
* ``precision``: no predicted positives -> 1.0 if the target is empty too, else 0.0.
  ``recall``: no target positives -> 1.0 if nothing was predicted, else 0.0. ``f1`` follows from them
  (0 when both are 0). These match Kaggle's treatment of empty images.
* Every binary metric takes boolean-like arrays of equal shape; anything > 0 is positive.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from sklearn import metrics as skm


# ------------------------------------------------------------------------------------------ binary masks
def _binary_counts(pred: np.ndarray, target: np.ndarray) -> tuple[int, int, int, int]:
    """``(tp, fp, fn, tn)`` of two same-shape masks (any shape)."""
    pred, target = np.asarray(pred) > 0, np.asarray(target) > 0
    if pred.shape != target.shape:
        raise ValueError(f"shape mismatch: pred {pred.shape} vs target {target.shape}")
    tp = int(np.count_nonzero(pred & target))
    fp = int(np.count_nonzero(pred & ~target))
    fn = int(np.count_nonzero(~pred & target))
    return tp, fp, fn, pred.size - tp - fp - fn


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice = 2|P∩T| / (|P|+|T|) in [0, 1]; 1.0 when both masks are empty."""
    tp, fp, fn, _ = _binary_counts(pred, target)
    denom = 2 * tp + fp + fn
    return 1.0 if denom == 0 else 2 * tp / denom


def iou(pred: np.ndarray, target: np.ndarray) -> float:
    """Intersection over union |P∩T| / |P∪T| in [0, 1]; 1.0 when both masks are empty."""
    tp, fp, fn, _ = _binary_counts(pred, target)
    denom = tp + fp + fn
    return 1.0 if denom == 0 else tp / denom


def precision_recall_f1(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Pixel precision, recall, F1 and accuracy of a binary prediction, with the empty conventions above."""
    tp, fp, fn, tn = _binary_counts(pred, target)
    precision = tp / (tp + fp) if tp + fp else float(tp + fp + fn == 0)
    recall = tp / (tp + fn) if tp + fn else float(tp + fp == 0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "accuracy": (tp + tn) / (tp + fp + fn + tn)}


def segmentation_report(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """``iou``, ``dice``, ``precision``, ``recall``, ``f1`` and pixel ``accuracy`` in one dict."""
    return {"iou": iou(pred, target), "dice": dice(pred, target), **precision_recall_f1(pred, target)}


# ------------------------------------------------------------------------------------------ instances
def _label(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    structure = ndimage.generate_binary_structure(2, connectivity)
    return ndimage.label(np.asarray(mask) > 0, structure=structure)


def connected_components(mask: np.ndarray, connectivity: int = 2) -> list[np.ndarray]:
    """Split a ``(H, W)`` binary mask into instance masks (``connectivity`` 1 = 4-, 2 = 8-neighbours)."""
    labels, n = _label(mask, connectivity)
    return [labels == i for i in range(1, n + 1)]


def component_indices(mask: np.ndarray, connectivity: int = 2) -> list[np.ndarray]:
    """Flat pixel indices of each connected component of a ``(H, W)`` mask, without a full mask per component."""
    labels, n = _label(mask, connectivity)
    flat = labels.reshape(-1)
    order = np.argsort(flat, kind="stable")
    bounds = np.cumsum(np.bincount(flat, minlength=n + 1))
    return [order[bounds[i - 1]:bounds[i]] for i in range(1, n + 1)]


KAGGLE_IOU_THRESHOLDS = np.round(np.arange(0.5, 1.0, 0.05), 2)  # 0.50, 0.55, ..., 0.95


def instance_ious(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray]) -> np.ndarray:
    """IoU of every predicted ship with every true ship.

    Args:
        preds, gts: lists of ``(H, W)`` binary masks, one per ship (either may be empty).
    Returns:
        ``(len(preds), len(gts))`` float64; the best IoU of each true ship is ``.max(axis=0, initial=0)``.
    """
    if not len(preds) or not len(gts):
        return np.zeros((len(preds), len(gts)))
    # float64 so that an IoU of exactly 0.6 compares with the 0.6 threshold as Kaggle's Python scorer does
    p = np.stack([np.asarray(m).reshape(-1) > 0 for m in preds]).astype(np.float64)
    g = np.stack([np.asarray(m).reshape(-1) > 0 for m in gts]).astype(np.float64)
    inter = p @ g.T
    union = p.sum(1)[:, None] + g.sum(1)[None, :] - inter
    return inter / np.maximum(union, 1)


def f2_from_ious(ious: np.ndarray, thresholds: np.ndarray = KAGGLE_IOU_THRESHOLDS) -> float:
    """Kaggle Airbus F2 of one image from its ``(n_pred, n_true)`` IoU matrix (see :func:`f2_image_score`)."""
    n_pred, n_true = ious.shape
    if n_pred == 0 or n_true == 0:
        return float(n_pred == n_true)  # both empty -> 1.0; exactly one side empty -> 0.0
    hits = ious[None] > np.asarray(thresholds)[:, None, None]  # (thresholds, pred, true)
    # each prediction matches at most one truth and vice versa (true for disjoint masks at t >= 0.5)
    tp = np.minimum(hits.any(axis=2).sum(axis=1), hits.any(axis=1).sum(axis=1))
    return float(np.mean(5 * tp / (5 * tp + 4 * (n_true - tp) + (n_pred - tp))))


def f2_image_score(
    pred_instances: Sequence[np.ndarray],
    gt_instances: Sequence[np.ndarray],
    thresholds: np.ndarray = KAGGLE_IOU_THRESHOLDS,
) -> float:
    """Kaggle Airbus score of one image: F2 = 5TP / (5TP + 4FN + FP), averaged over IoU thresholds.

    A predicted ship is a true positive at threshold t when its IoU with a still unmatched true ship
    exceeds t (greedy, highest IoU first; ships are disjoint, so at t >= 0.5 matching is unique).
    No true ships and no predictions -> 1.0; exactly one side empty -> 0.0.

    Args:
        pred_instances, gt_instances: lists of ``(H, W)`` binary masks, one per ship.
    Returns:
        score in [0, 1].
    """
    return f2_from_ious(instance_ious(pred_instances, gt_instances), thresholds)


def airbus_score(images: Sequence[tuple[Sequence[np.ndarray], Sequence[np.ndarray]]]) -> float:
    """Mean of :func:`f2_image_score` over ``[(pred_instances, gt_instances), ...]``, one pair per image."""
    return float(np.mean([f2_image_score(p, g) for p, g in images])) if images else float("nan")


# ------------------------------------------------------------------------------------------ anomaly maps
def _flat_scores(scores, target) -> tuple[np.ndarray, np.ndarray]:
    s = np.concatenate([np.asarray(x, dtype=np.float64).reshape(-1) for x in _as_list(scores)])
    t = np.concatenate([(np.asarray(x) > 0).reshape(-1) for x in _as_list(target)])
    if s.shape != t.shape:
        raise ValueError(f"scores ({s.size} values) and target ({t.size}) differ in size")
    return s, t


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def pixel_auroc(scores, target) -> float:
    """Area under the ROC curve of per-pixel anomaly scores.

    Args:
        scores: ``(H, W)`` array or list of them (any real values, higher = more anomalous).
        target: same shapes, binary ground truth.
    Returns:
        AUROC in [0, 1]; NaN when the target holds only one class.
    """
    s, t = _flat_scores(scores, target)
    return float(skm.roc_auc_score(t, s)) if 0 < t.sum() < t.size else float("nan")


def pixel_ap(scores, target) -> float:
    """Average precision (area under precision-recall) of per-pixel scores; NaN without positives."""
    s, t = _flat_scores(scores, target)
    return float(skm.average_precision_score(t, s)) if t.any() else float("nan")


def best_f1(scores, target) -> dict[str, float]:
    """Best pixel F1 over all thresholds, with its threshold and the IoU at that threshold (F1 = 2IoU/(1+IoU))."""
    s, t = _flat_scores(scores, target)
    if not t.any():
        return {"f1": float("nan"), "iou": float("nan"), "threshold": float("nan")}
    precision, recall, thr = skm.precision_recall_curve(t, s)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    i = int(np.argmax(f1[:-1])) if len(thr) else 0
    return {"f1": float(f1[i]), "iou": float(f1[i] / (2 - f1[i])), "threshold": float(thr[i]) if len(thr) else 0.0}


def aupro(scores, target, fpr_limit: float = 0.3, num_thresholds: int = 200) -> float:
    """Area under the per-region-overlap curve up to ``fpr_limit``, normalised to [0, 1] (MVTec AD definition).

    For each threshold, PRO is the mean over all ground-truth connected components (8-connectivity, over all
    images) of the fraction of the component's pixels predicted anomalous; FPR is the fraction of normal
    pixels predicted anomalous. The PRO-vs-FPR curve is integrated from 0 to ``fpr_limit`` (linear
    interpolation at the limit) and divided by ``fpr_limit``. Thresholds are ``num_thresholds`` quantile
    steps of the scores plus the extremes, as in Bergmann et al., IJCV 2021.

    Args:
        scores: ``(H, W)`` map or list of maps; target: binary masks of the same shapes.
    Returns:
        AUPRO in [0, 1]; NaN when no image has an anomalous region.
    """
    maps = [np.asarray(s, dtype=np.float64) for s in _as_list(scores)]
    masks = [np.asarray(m) > 0 for m in _as_list(target)]
    regions = []  # (image index, flat indices of one component)
    for k, m in enumerate(masks):
        regions += [(k, idx) for idx in component_indices(m)]
    if not regions:
        return float("nan")
    normal = np.concatenate([s[~m] for s, m in zip(maps, masks)])
    all_s = np.concatenate([s.reshape(-1) for s in maps])
    thresholds = np.unique(np.quantile(all_s, np.linspace(0, 1, num_thresholds)))[::-1]
    thresholds = np.concatenate([[np.inf], thresholds, [-np.inf]])
    normal_sorted = np.sort(normal)
    # FPR(t) = share of normal pixels with score >= t; PRO(t) = mean over regions of share >= t
    fpr = 1.0 - np.searchsorted(normal_sorted, thresholds, side="left") / max(normal.size, 1)
    region_scores = [np.sort(maps[k].reshape(-1)[idx]) for k, idx in regions]
    pro = np.mean([1.0 - np.searchsorted(rs, thresholds, side="left") / rs.size for rs in region_scores], axis=0)
    # integrate up to the limit with the point at exactly fpr_limit interpolated
    keep = fpr <= fpr_limit
    x, y = fpr[keep], pro[keep]
    if x[-1] < fpr_limit and (~keep).any():
        j = int(np.argmax(~keep))
        x0, x1, y0, y1 = fpr[j - 1], fpr[j], pro[j - 1], pro[j]
        y_lim = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0) if x1 > x0 else y1
        x, y = np.append(x, fpr_limit), np.append(y, y_lim)
    return float(np.trapezoid(y, x) / fpr_limit)


def image_auroc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Image-level AUROC (labels 1 = anomalous); NaN when only one class is present."""
    labels = np.asarray(labels)
    return float(skm.roc_auc_score(labels, scores)) if 0 < labels.sum() < labels.size else float("nan")


# ------------------------------------------------------------------------------------------ classification
def classification_summary(y_true: Sequence, y_pred: Sequence, labels: Sequence[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix.

    Args:
        y_true, y_pred: class names or indices into ``labels``.
        labels: class names, in the order of the confusion matrix rows (truth) and columns (prediction).
    Returns:
        ``{"accuracy", "macro_f1", "per_class": {name: {...}}, "confusion_matrix": [[...]], "labels"}``.
    """
    labels = list(labels)
    y_true = [labels[y] if isinstance(y, (int, np.integer)) else y for y in y_true]
    y_pred = [labels[y] if isinstance(y, (int, np.integer)) else y for y in y_pred]
    report = skm.classification_report(y_true, y_pred, labels=labels, output_dict=True, zero_division=0)
    return {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "macro_f1": float(skm.f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "per_class": {c: {k: float(v) for k, v in report[c].items()} for c in labels},
        "confusion_matrix": skm.confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "labels": labels,
    }
