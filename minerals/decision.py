"""The decision rule shared by training (threshold choice), prediction and evaluation, and their metrics.

The network outputs softmax probabilities over the 7 minerals and ``negative``. A patch's *confidence* is
the probability of its most likely mineral; the answer is that mineral when the confidence reaches the
threshold, else ``"unknown"``. A ``negative`` patch takes probability mass away from every mineral, so it
ends up below the threshold: one rule rejects both background/non-mineral patches and unsure minerals.
"""
from __future__ import annotations

import numpy as np

from minerals.config import CLASSES, MINERALS, NEGATIVE

UNKNOWN = "unknown"


def mineral_confidence(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``probs`` (N, 8) -> (confidence (N,), index of the most likely mineral (N,))."""
    m = probs[:, : len(MINERALS)]
    return m.max(axis=1), m.argmax(axis=1)


def mineral_metrics(probs: np.ndarray, labels: np.ndarray) -> dict:
    """Closed-set metrics on the mineral patches (``labels`` < 7): the most likely mineral against the true one
    (accuracy, macro-F1, per class, confusion matrix: ``common.metrics.classification_summary``)."""
    from common.metrics import classification_summary  # (scikit-learn: imported when used)

    pos = labels < len(MINERALS)
    return classification_summary(labels[pos].tolist(), mineral_confidence(probs[pos])[1].tolist(), MINERALS)


def answered_at(probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """On the mineral patches (``labels`` < 7) at ``threshold``: ``coverage`` (share answered with a mineral),
    ``mineral_accuracy`` (right and answered: an "unknown" counts as wrong) and ``answered_accuracy`` (right among
    those answered); NaN where there is nothing to count."""
    pos = labels < len(MINERALS)
    conf, idx = mineral_confidence(probs[pos])
    answered, right = conf >= threshold, idx == labels[pos]
    nan = float("nan")
    return {"coverage": float(answered.mean()) if pos.any() else nan,
            "mineral_accuracy": float((answered & right).mean()) if pos.any() else nan,
            "answered_accuracy": float(right[answered].mean()) if answered.any() else nan}


def decide(probs: np.ndarray, threshold: float, decimals: int | None = None) -> tuple[np.ndarray, list[str]]:
    """(confidence (N,), results: a mineral name or ``"unknown"``) for ``probs`` (N, 8).

    ``decimals``: round the confidences first and decide on the rounded values, so that a reported confidence
    never contradicts its result (0.4999996 shown as 0.5 but "unknown" at threshold 0.5)."""
    conf, idx = mineral_confidence(probs)
    conf = conf if decimals is None else np.round(conf.astype(np.float64), decimals)
    return conf, [MINERALS[i] if c >= threshold else UNKNOWN for c, i in zip(conf, idx)]


def calibrate(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax probabilities ``probs`` (N, 8) with their logits divided by ``temperature`` (temperature scaling,
    https://arxiv.org/abs/1706.04599): the same ranking, confidences that mean what they say when the temperature
    was fitted on held-out patches (:func:`fit_temperature`). ``log p`` equals the logits up to a constant per
    row, which the softmax ignores."""
    z = np.log(np.clip(probs.astype(np.float64), 1e-12, 1.0)) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(probs: np.ndarray, labels: np.ndarray, low: float = 0.05, high: float = 20.0) -> float:
    """The temperature in [``low``, ``high``] that minimises the negative log-likelihood of ``labels`` (indices into
    CLASSES) under ``calibrate(probs, T)``: a search over 241 log-spaced values (steps of 2.5 %). 1.0 when there
    are no patches."""
    if len(labels) == 0:
        return 1.0
    grid = np.exp(np.linspace(np.log(low), np.log(high), 241))
    rows = np.arange(len(labels))
    nll = [-np.log(np.clip(calibrate(probs, t)[rows, labels], 1e-12, 1.0)).mean() for t in grid]
    return float(grid[int(np.argmin(nll))])


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """How far the confidence (probability of the most likely mineral) is from the share of right answers, over all
    patches (a ``negative`` patch given a mineral is a wrong answer): the patch-weighted mean gap over ``bins``
    equal-width confidence bins (https://arxiv.org/abs/1706.04599). NaN without patches."""
    conf, idx = mineral_confidence(probs)
    right = idx == labels
    which = np.minimum((conf * bins).astype(int), bins - 1)
    gaps = [abs(conf[which == b].mean() - right[which == b].mean()) * (which == b).sum() for b in range(bins)
            if (which == b).any()]
    return float(sum(gaps) / len(labels)) if len(labels) else float("nan")


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> dict[str, list]:
    """Per equal-width confidence bin: its mean confidence, the share of right answers and the patch count (the
    reliability diagram of evaluate.py; empty bins are left out)."""
    conf, idx = mineral_confidence(probs)
    right = idx == labels
    which = np.minimum((conf * bins).astype(int), bins - 1)
    used = [b for b in range(bins) if (which == b).any()]
    return {"confidence": [float(conf[which == b].mean()) for b in used],
            "accuracy": [float(right[which == b].mean()) for b in used],
            "count": [int((which == b).sum()) for b in used], "bins": bins}


def threshold_problem(threshold: float | None) -> str | None:
    """Why ``threshold`` cannot be a confidence threshold (None when it can, or when it is not given): a
    confidence is a probability, so a value outside [0, 1] or NaN answers every patch alike."""
    if threshold is None or 0.0 <= threshold <= 1.0:
        return None
    return (f"{threshold} is not a probability in [0, 1] (below 0 every patch gets a mineral, above 1 or NaN every "
            "patch is 'unknown')")


def open_set_correct(probs: np.ndarray, labels: np.ndarray, threshold: float) -> np.ndarray:
    """Per patch: right mineral above the threshold, or a ``negative`` patch answered ``"unknown"``."""
    conf, idx = mineral_confidence(probs)
    accepted = conf >= threshold
    is_neg = labels == CLASSES.index(NEGATIVE)
    return np.where(is_neg, ~accepted, accepted & (idx == labels))


def choose_threshold(probs: np.ndarray, labels: np.ndarray, grid: np.ndarray | None = None) -> float:
    """The threshold with the best open-set accuracy on validation patches: the middle of the range of equally
    good grid values (of the longest such range, the lowest one if several are as long).

    ``labels`` are indices into :data:`CLASSES`. Both minerals and negatives count, in their natural
    proportion, so a threshold only goes up when it rejects more wrong answers than right ones. The validation
    patches leave a range of thresholds with the same score (e.g. 0.04-0.24): its lower edge sits just above
    the validation negatives' confidences and lets through most patches unlike anything seen in training, its
    middle keeps a margin on both sides (README: "Threshold choice").
    """
    grid = np.round(np.arange(0.0, 1.0, 0.01), 2) if grid is None else np.asarray(grid)
    scores = np.array([open_set_correct(probs, labels, t).mean() for t in grid])
    best = np.flatnonzero(scores == scores.max())
    ranges = np.split(best, np.flatnonzero(np.diff(best) > 1) + 1)
    widest = max(ranges, key=len)  # the first of the longest
    return float(grid[widest[(len(widest) - 1) // 2]])


def threshold_curve(probs: np.ndarray, labels: np.ndarray, grid: np.ndarray | None = None) -> dict[str, list]:
    """Accuracy and coverage against the threshold, on the mineral patches (``labels`` < 7).

    coverage = share of mineral patches answered with a mineral; accuracy = share of those that are right;
    open_set_accuracy counts negatives too (see :func:`open_set_correct`).
    """
    grid = np.round(np.arange(0.0, 1.0, 0.01), 2) if grid is None else grid
    conf, idx = mineral_confidence(probs)
    pos = labels < len(MINERALS)
    out = {"threshold": grid.tolist(), "accuracy": [], "coverage": [], "open_set_accuracy": []}
    for t in grid:
        acc = (conf >= t) & pos
        out["coverage"].append(float(acc.sum() / max(pos.sum(), 1)))
        out["accuracy"].append(float((idx[acc] == labels[acc]).mean()) if acc.any() else float("nan"))
        out["open_set_accuracy"].append(float(open_set_correct(probs, labels, t).mean()))
    return out
