"""Scores of predicted ship instances against the true ones, per image and over a set: dice / IoU, the Kaggle
score (F2 over IoU 0.50:0.95), ship / no-ship accuracy and where the score is lost (per image, per ship size).
Used by test.py (and so by bench.py's record) and the studies.
"""
from __future__ import annotations

import numpy as np

SHIP_SIZE_BINS = (0, 100, 300, 1000, 3000)  # pixels; a true ship falls in the last bin whose lower edge it reaches
RECALL_SIZE_BINS = (0, 100, 1000)  # the coarser bins of the recall by ship size (small, mid-size, large ships)
# scores.csv: an image's Kaggle F2, its true and predicted ship counts, and per true ship (space-separated, in the
# order of the mask table) its area in pixels and its best IoU with a predicted ship
SCORE_COLUMNS = ("ImageId", "f2", "true_ships", "predicted_ships", "true_ship_pixels", "best_iou")


class Scores:
    """Accumulates dice / IoU (all pixels and per ship image), Kaggle F2, ship / no-ship accuracy, and per true
    ship its area, its best IoU with a predicted one and that one's area (for the breakdown by ship size)."""

    def __init__(self):
        self.tp = self.fp = self.fn = 0
        self.f2, self.dice_ship, self.iou_ship, self.correct = [], [], [], []
        self.has_ships = []                     # per image, beside f2 and correct
        self.predicted = []                     # per image: at least one ship predicted
        self.ship_covered = []                  # per true ship: share of its pixels inside predicted ships
        self.true_ships = self.pred_ships_on_ship_images = 0
        self.ship_area, self.ship_best_iou = [], []  # per true ship
        self.ship_match_ratio = []  # per true ship: area of its best-IoU predicted ship / its area (nan: untouched)
        self.image_rows = []        # per image: the row of scores.csv (SCORE_COLUMNS)

    def add(self, pred_ships: list[np.ndarray], true_ships: list[np.ndarray], shape, image_id: str = "") -> None:
        pred = np.any(pred_ships, axis=0) if pred_ships else np.zeros(shape, bool)
        true = np.any(true_ships, axis=0) if true_ships else np.zeros(shape, bool)
        tp, fp, fn = int((pred & true).sum()), int((pred & ~true).sum()), int((~pred & true).sum())
        self.tp, self.fp, self.fn = self.tp + tp, self.fp + fp, self.fn + fn
        from common.metrics import f2_from_ious, instance_ious  # here: it loads scikit-learn (slow for --help)

        ious = instance_ious(pred_ships, true_ships)  # (predicted, true): for F2 and the size breakdown
        self.f2.append(f2_from_ious(ious))
        self.correct.append(bool(pred_ships) == bool(true_ships))
        self.has_ships.append(bool(true_ships))
        self.predicted.append(bool(pred_ships))
        best_iou = ious.max(axis=0, initial=0.0) if true_ships else np.zeros(0)  # 0 for a ship nothing touches
        areas = [int(t.sum()) for t in true_ships]
        self.image_rows.append([image_id, f"{self.f2[-1]:.4f}", len(true_ships), len(pred_ships),
                                " ".join(map(str, areas)), " ".join(f"{v:.3f}" for v in best_iou)])
        if true_ships:
            self.dice_ship.append(2 * tp / (2 * tp + fp + fn))
            self.iou_ship.append(tp / (tp + fp + fn))
            self.true_ships += len(true_ships)
            self.pred_ships_on_ship_images += len(pred_ships)
            self.ship_area += areas
            self.ship_best_iou += best_iou.tolist()
            self.ship_covered += [int((t & pred).sum()) / max(a, 1) for t, a in zip(true_ships, areas)]
            pred_area = [int(p.sum()) for p in pred_ships]
            self.ship_match_ratio += [pred_area[ious[:, j].argmax()] / area if best_iou[j] > 0 else np.nan
                                      for j, area in enumerate(areas)]

    def by_ship_size(self) -> list[dict]:
        """Per size bin of the true ships: how many, how many found at IoU > 0.5 (the lowest Kaggle threshold),
        the median best IoU (0 for a ship no prediction touches) and, over the ships a prediction touches, the
        median area of the best-IoU predicted ship relative to the true one (above 1: predicted too large, e.g.
        with the ship's wake or merged with its neighbours; None when none is touched)."""
        area, best = np.array(self.ship_area), np.array(self.ship_best_iou)
        ratio = np.array(self.ship_match_ratio, float)
        edges = SHIP_SIZE_BINS + (np.inf,)
        rows = []
        for lo, hi in zip(edges[:-1], edges[1:]):
            inside = (area >= lo) & (area < hi)
            rows.append({"pixels": f"{lo}-{hi - 1}" if np.isfinite(hi) else f">={lo}", "ships": int(inside.sum()),
                         "found_iou_0.5": int((best[inside] > 0.5).sum()),
                         "median_best_iou": float(np.median(best[inside])) if inside.any() else None,
                         "median_area_ratio": (float(np.nanmedian(ratio[inside]))
                                               if np.isfinite(ratio[inside]).any() else None)})
        return rows

    def recall_by_size(self, edges=RECALL_SIZE_BINS) -> list[dict]:
        """Per size bin of the true ships: how many, the share found at IoU > 0.5 (what the Kaggle score needs)
        and the share covered at least half by predicted ships (found, though maybe too large or merged)."""
        area, best, covered = np.array(self.ship_area), np.array(self.ship_best_iou), np.array(self.ship_covered)
        bounds = tuple(edges) + (np.inf,)
        rows = []
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            inside = (area >= lo) & (area < hi)
            n = int(inside.sum())
            rows.append({"pixels": f"{lo}-{hi - 1}" if np.isfinite(hi) else f">={lo}", "ships": n,
                         "recall_iou_0.5": float((best[inside] > 0.5).mean()) if n else None,
                         "recall_covered_half": float((covered[inside] >= 0.5).mean()) if n else None})
        return rows

    def image_recall_precision(self) -> tuple[float | None, float | None]:
        """Ship / no-ship decision per image: (share of ship images given a ship, share of images given a ship
        that have ships); None where the denominator is 0."""
        has, pred = np.array(self.has_ships, bool), np.array(self.predicted, bool)
        recall = float(pred[has].mean()) if has.any() else None
        precision = float(has[pred].mean()) if pred.any() else None
        return recall, precision

    def summary(self) -> dict:
        n = len(self.f2)
        f2_ship = [f for f, ships in zip(self.f2, self.has_ships) if ships]
        # a wrong ship / no-ship decision is an empty prediction on a ship image, a false ship on a ship-free one
        wrong = [ships for ok, ships in zip(self.correct, self.has_ships) if not ok]
        denom = 2 * self.tp + self.fp + self.fn
        return {
            "images_scored": n,
            "ship_images": len(self.dice_ship),
            "kaggle_score": float(np.mean(self.f2)) if n else None,
            "dice_pixels": 2 * self.tp / denom if denom else 1.0,
            "iou_pixels": self.tp / (self.tp + self.fp + self.fn) if denom else 1.0,
            "dice_ship_images_mean": float(np.mean(self.dice_ship)) if self.dice_ship else None,
            "iou_ship_images_mean": float(np.mean(self.iou_ship)) if self.iou_ship else None,
            "ship_no_ship_accuracy": float(np.mean(self.correct)) if n else None,
            "image_recall": self.image_recall_precision()[0],
            "image_precision": self.image_recall_precision()[1],
            # where the Kaggle score is lost: images with ships (their F2, how many score 0 or get no ship at
            # all, ships found against true ones) and ship-free images given a false ship
            "per_image": {
                "ship_images_mean_f2": float(np.mean(f2_ship)) if f2_ship else None,
                "ship_images_f2_zero": int(sum(f == 0 for f in f2_ship)),
                "ship_images_predicted_empty": sum(wrong),
                "ship_free_images_with_a_false_ship": len(wrong) - sum(wrong),
                "true_ships": self.true_ships,
                "predicted_ships_on_ship_images": self.pred_ships_on_ship_images,
            },
            "ships_by_size": self.by_ship_size(),
            "recall_by_size": self.recall_by_size(),
        }


def summary_lines(s: dict, images_per_second: float | None = None) -> list[str]:
    """The printed report of :meth:`Scores.summary` ``s``."""
    lines = [f"Kaggle score {s['kaggle_score']:.3f} | dice {s['dice_pixels']:.3f} (pixels), "
             f"{s['dice_ship_images_mean'] or 0:.3f} (mean over {s['ship_images']} ship images) | "
             f"IoU {s['iou_pixels']:.3f} | ship/no-ship accuracy {s['ship_no_ship_accuracy']:.3f}"
             + (f" | {images_per_second:.2f} images/s" if images_per_second else "")]
    d = s["per_image"]
    if d["ship_images_mean_f2"] is not None:
        lines.append(f"ship images: mean F2 {d['ship_images_mean_f2']:.3f}, {d['ship_images_f2_zero']} of "
                     f"{s['ship_images']} score 0 ({d['ship_images_predicted_empty']} predicted empty); "
                     f"{d['predicted_ships_on_ship_images']} ships predicted for {d['true_ships']}; "
                     f"{d['ship_free_images_with_a_false_ship']} ship-free images with a false ship")
        lines.append(f"images given a ship: recall {_fmt(s['image_recall'])}, precision {_fmt(s['image_precision'])}; "
                     "ships found at IoU > 0.5 / covered at least half: " + ", ".join(
                         f"{r['pixels']} px {_fmt(r['recall_iou_0.5'])} / {_fmt(r['recall_covered_half'])}"
                         for r in s["recall_by_size"] if r["ships"]))
        lines.append("true ships found (IoU > 0.5) by size: " + ", ".join(
            f"{r['pixels']} px {r['found_iou_0.5']}/{r['ships']}"
            + (f" ({r['median_area_ratio']:.1f}x area)" if r["median_area_ratio"] is not None else "")
            for r in s["ships_by_size"] if r["ships"]))
    return lines


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"
