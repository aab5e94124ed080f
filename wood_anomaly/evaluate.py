"""Score anomaly maps written by predict.py against masks and/or image labels.

    python wood_anomaly/evaluate.py --pred runs/wood/pred --data ../shared/data/wood
    python wood_anomaly/evaluate.py --pred runs/wood/pred --masks DIR --labels labels.csv --json metrics.json

Masks: ``<masks>/<stem>.png`` (default ``<data>/masks/consensus``), anything > 0 is anomalous; photos
without a mask file are left out of the pixel metrics. Pixel metrics pool all photos (as MVTec AD does):
AUROC, AP, AUPRO up to FPR 0.3 and the best F1 over thresholds with its IoU (common.metrics), plus F1/IoU of
the binary masks predict.py wrote (``preds.png``, the label-free threshold).
Image labels: a CSV with ``stem`` and a ``majority_label`` or ``label`` column (1/0 or anomalous/normal)
(default ``<data>/image_labels.csv``): image AUROC of the ``score`` column of ``predictions.csv``.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from common.io import read_mask, write_json
from common.metrics import aupro, best_f1, image_auroc, pixel_ap, pixel_auroc, segmentation_report


def pixel_metrics(maps: list[np.ndarray], masks: list[np.ndarray], binary: list[np.ndarray] | None = None) -> dict:
    """Pooled pixel metrics of ``(H, W)`` score maps against same-shape binary masks (and binary predictions)."""
    best = best_f1(maps, masks)
    out = {"pixel_auroc": pixel_auroc(maps, masks), "pixel_ap": pixel_ap(maps, masks), "aupro_0.3": aupro(maps, masks),
           "best_f1": best["f1"], "best_iou": best["iou"]}
    if binary is not None:
        rep = segmentation_report(np.concatenate([b.reshape(-1) for b in binary]),
                                  np.concatenate([m.reshape(-1) for m in masks]))
        out.update(mask_f1=rep["f1"], mask_iou=rep["iou"])
    return out


def read_labels(path: Path) -> dict[str, int]:
    """``stem -> 1 (anomalous) / 0 (normal)`` from a CSV with ``stem`` and ``majority_label`` or ``label``."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    col = "majority_label" if rows and "majority_label" in rows[0] else "label"
    return {r["stem"]: int(r[col] in ("1", "anomalous")) for r in rows}


def evaluate(pred: Path, masks_dir: Path | None, labels_csv: Path | None) -> dict:
    with open(pred / "predictions.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == "ok"]
    result: dict = {"photos": len(rows)}
    if masks_dir is not None and masks_dir.is_dir():
        maps, masks, binary = [], [], []
        for r in rows:
            stem = Path(r["image"]).stem
            if (masks_dir / f"{stem}.png").exists():
                masks.append(read_mask(masks_dir / f"{stem}.png", {0: 0}, default=1).astype(bool))
                maps.append(np.load(pred / stem / "anomaly_map.npy").astype(np.float32))
                binary.append(read_mask(pred / stem / "preds.png", {0: 0}, default=1).astype(bool))
        if masks:
            result.update(pixel_metrics(maps, masks, binary), photos_with_masks=len(masks))
    if labels_csv is not None and labels_csv.exists():
        labels = read_labels(labels_csv)
        pairs = [(float(r["score"]), labels[Path(r["image"]).stem]) for r in rows if Path(r["image"]).stem in labels]
        if pairs:
            result["image_auroc"] = image_auroc([s for s, _ in pairs], [y for _, y in pairs])
            result["label_accuracy"] = float(np.mean([(r["label"] == "anomalous") == bool(labels[Path(r["image"]).stem])
                                                      for r in rows if Path(r["image"]).stem in labels]))
    return result


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--pred", default="runs/wood/pred", help="output folder of predict.py")
    p.add_argument("--data", default="data/wood", help="data folder holding masks/consensus and image_labels.csv")
    p.add_argument("--masks", default="", help="mask folder (default <data>/masks/consensus)")
    p.add_argument("--labels", default="", help="image label CSV (default <data>/image_labels.csv)")
    p.add_argument("--json", default="", help="also write the metrics here")
    args = p.parse_args(argv)
    data = Path(args.data)
    result = evaluate(Path(args.pred), Path(args.masks) if args.masks else data / "masks" / "consensus",
                      Path(args.labels) if args.labels else data / "image_labels.csv")
    print(json.dumps(result, indent=2))
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
