"""K-fold cross-validation of train.py (``bench.py --folds K``): folds by image, out-of-fold ship maps, the ship
rule chosen on out-of-fold maps, and the mean and spread of the scores over the folds.

Every image is in exactly one fold (the mask table has one row per image, so the folds are grouped by image), the
folds are stratified ship / no ship (scikit-learn's ``StratifiedKFold``). Fold ``i``'s model is train.py's
default trained on the other folds (train.py keeps its own validation share of them for early stopping); it
predicts the probability maps of fold ``i``'s images (``oof_probs.npz``, float16). Fold ``i`` is then scored with
the ship rule chosen on the out-of-fold maps of the *other* folds (so no image chooses the rule it is scored
with); the rule chosen on all out-of-fold maps is the one a model trained on all images would use. bench.py run
again on a finished folder scores the saved maps again without training (e.g. after a change of the rule's grid).
"""
from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

import numpy as np

from common.io import atomic_path, atomic_write

OOF_FILE = "oof_probs.npz"  # in a fold's folder: {ImageId: (768, 768) float16 ship probabilities}
# the figures of each fold kept in the record, and summarised over the folds (mean, spread)
FOLD_KEYS = ("kaggle_score", "image_recall", "image_precision", "dice_ship_images_mean", "ship_no_ship_accuracy")


def fold_of_images(frame, k: int, seed: int) -> np.ndarray:
    """Fold number (0..k-1) of every row (image) of ``frame`` (a ``data.MaskTable.frame``), stratified by ship /
    no ship and seeded. ValueError when either kind has fewer than ``k`` images."""
    from sklearn.model_selection import StratifiedKFold

    has_ship = (frame["n_ships"] > 0).to_numpy()
    fewest = min(int(has_ship.sum()), int((~has_ship).sum()))
    if k < 2 or fewest < k:
        raise ValueError(f"{k} folds need k >= 2 and at least {k} images with ships and {k} without; the data has "
                         f"{int(has_ship.sum())} and {int((~has_ship).sum())}")
    folds = np.zeros(len(frame), int)
    for i, (_, test) in enumerate(StratifiedKFold(k, shuffle=True, random_state=seed).split(has_ship, has_ship)):
        folds[test] = i
    return folds


def write_rows(masks_csv: Path, image_ids: set[str], path: Path) -> Path:
    """``path``: the header and the rows of ``image_ids`` from the mask table ``masks_csv`` (written atomically)."""
    with open(masks_csv, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    with atomic_write(path, "w", newline="") as f:
        csv.writer(f).writerows([rows[0]] + [r for r in rows[1:] if r and r[0] in image_ids])
    return path


def predict_maps(model_path: Path, rows, flips: bool) -> tuple[dict[str, np.ndarray], list[str]]:
    """``({ImageId: float16 probability map}, problems)`` of the images of ``rows`` (a MaskTable frame), predicted
    as test.py predicts (whole image, with or without test-time ``flips``); an unreadable or wrongly sized image is
    named in ``problems`` and left out."""
    from tqdm import tqdm

    from airbus_ships.inference import calibration_image, open_model, predict_probs

    model = open_model(model_path)
    maps, problems = {}, []
    for row in tqdm(list(rows.itertuples()), desc="out-of-fold maps", unit="img", file=sys.stdout, mininterval=30):
        image, why = calibration_image(row.path)
        if image is None:
            problems.append(f"{why}; left out of the cross-validation")
            print(f"warning: {problems[-1]}", file=sys.stderr)
            continue
        maps[row.ImageId] = predict_probs(model, image, "auto", flips).astype(np.float16)
    return maps, problems


def save_maps(path: Path, maps: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **maps)


def load_maps(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as saved:
        return {k: saved[k] for k in saved.files}


def fold_figures(summary: dict) -> dict:
    """The figures of one fold's :meth:`metrics.Scores.summary` kept in the record."""
    out = {k: summary[k] for k in FOLD_KEYS}
    for row in summary["recall_by_size"]:
        out[f"recall_iou_0.5_{row['pixels']}px"] = row["recall_iou_0.5"]
        out[f"recall_covered_half_{row['pixels']}px"] = row["recall_covered_half"]
    return out


def spread(values: list[float | None]) -> dict:
    """Mean, sample standard deviation, min and max of the values that are not None (None where there are none;
    the standard deviation needs two)."""
    v = np.array([x for x in values if x is not None], float)
    if not v.size:
        return {"mean": None, "std": None, "min": None, "max": None, "folds": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else None, "min": float(v.min()),
            "max": float(v.max()), "folds": int(v.size)}


def score_folds(maps: dict[str, np.ndarray], rles: dict[str, str], folds: dict[str, int]) -> dict:
    """Score the out-of-fold ``maps`` against the true ships (``rles``: a MaskTable's ``rle`` per ImageId): each
    fold with the rule chosen on the other folds' maps. Returns, for the ship rule train.py chooses (threshold,
    smallest ship, smallest peak), per fold its figures and rule, their mean and spread over the folds, the
    figures of all images pooled (each scored with its fold's rule) and the rule chosen on all out-of-fold
    maps."""
    from airbus_ships.data import ship_instances
    from airbus_ships.inference import best_rule, rule_table, ships_from_probs
    from airbus_ships.metrics import Scores

    start = time.time()
    ids = sorted(maps)
    truths = [ship_instances(rles[i], size=maps[i].shape[0]) for i in ids]  # maps are square (768 px)
    fold = np.array([folds[i] for i in ids])
    rules, f2 = rule_table([maps[i] for i in ids], truths)
    pooled, per_fold = Scores(), []
    for k in sorted(set(fold)):
        rule, score_elsewhere = best_rule(rules, f2, fold != k)
        scores = Scores()
        for j in np.flatnonzero(fold == k):
            ships = ships_from_probs(np.asarray(maps[ids[j]], np.float32), rule)
            for s in (scores, pooled):
                s.add(ships, truths[j], maps[ids[j]].shape, ids[j])
        per_fold.append({"fold": int(k), "images": int((fold == k).sum()), **fold_figures(scores.summary()),
                         "rule": vars(rule), "rule_kaggle_on_other_folds": score_elsewhere})
    rule_all, score_all = best_rule(rules, f2)
    keys = [k for k in per_fold[0] if k not in ("fold", "images", "rule", "rule_kaggle_on_other_folds")]
    pooled_summary = pooled.summary()
    return {"folds": per_fold, "over_folds": {k: spread([f[k] for f in per_fold]) for k in keys},
            "pooled": {**fold_figures(pooled_summary), "images": len(ids),
                       "ships_by_size": pooled_summary["ships_by_size"], "per_image": pooled_summary["per_image"]},
            "rule_all_folds": {**vars(rule_all), "kaggle_score_on_all_oof": score_all},
            "scoring_seconds": time.time() - start}


def summary_lines(result: dict) -> list[str]:
    """The printed report of :func:`score_folds`: mean +- spread over the folds of each figure, and the rule chosen
    on all out-of-fold maps."""
    def show(s):
        if s["mean"] is None:
            return "n/a"
        return f"{s['mean']:.3f}" + (f" +- {s['std']:.3f}" if s["std"] is not None else "") + \
            f" ({s['min']:.3f}-{s['max']:.3f})"
    lines = [f"{len(result['folds'])}-fold cross-validation, mean +- standard deviation (min-max) over the folds:"]
    lines += [f"  {k}: {show(s)}" for k, s in result["over_folds"].items()]
    r = result["rule_all_folds"]
    lines.append(f"ship rule chosen on all {result['pooled']['images']} out-of-fold maps: "
                 + ", ".join(f"{k} {r[k]}" for k in ("threshold", "min_size", "min_confidence"))
                 + f" (Kaggle {r['kaggle_score_on_all_oof']:.3f} there)")
    return lines
