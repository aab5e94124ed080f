"""Score anomaly maps written by predict.py against masks and/or image labels.

    python wood_anomaly/evaluate.py --pred runs/wood/pred --data ../shared/data/wood
    python wood_anomaly/evaluate.py --pred runs/wood/pred --masks DIR --labels labels.csv --json metrics.json

Masks: ``<masks>/<stem>.png`` (default ``<data>/masks/consensus``; another image format of that stem is read
too), anything > 0 is anomalous; photos without a mask file are left out of the pixel metrics. Pixel metrics
pool all photos (as MVTec AD does): AUROC, AP, AUPRO up to FPR 0.3 and the best F1 over thresholds with its
IoU and threshold (common.metrics), plus F1/IoU, precision and recall of the binary masks predict.py wrote
(``preds.png``, the label-free threshold).
Image labels: a CSV with ``stem`` and a ``majority_label`` or ``label`` column (1/0, anomalous/normal or
true/false; any other value is an error naming the line) (default ``<data>/image_labels.csv``): image AUROC
of the ``score`` column of ``predictions.csv``.

Photos that predict.py could not score (label ``error``: unreadable, failed, or not processed because the run
was stopped) are counted under ``photos_not_predicted`` and left out. A photo whose map or mask cannot be
read (a missing, empty, truncated or foreign file, a folder or a dead link named like it, a map with NaN),
or whose map and mask differ in size, is named on stderr with the reason, listed under ``skipped`` and left
out; the others are scored. A predictions.csv or label CSV that cannot be used is one line naming the file
(exit status 1). Exit status 1 when there is nothing to score (no mask and no label matches a
predicted photo), 2 for a path given on the command line that does not exist. No --seed and no --device: the
metrics are exact, deterministic numpy computations on the CPU.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common.config import HelpFormatter
from common.io import dumps_json, list_images, read_mask, write_json
from wood_anomaly.config import default_run, output_folders

LABEL_WORDS = {"1": 1, "anomalous": 1, "true": 1, "0": 0, "normal": 0, "false": 0}  # image label CSV values


def pixel_metrics(maps: list[np.ndarray], masks: list[np.ndarray], binary: list[np.ndarray] | None = None) -> dict:
    """Pooled pixel metrics of ``(H, W)`` score maps against same-shape binary masks (and binary predictions).
    A progress bar on stderr: the 7 real photos (35 Mpx) take about a minute on 2 cores."""
    from common.metrics import aupro, best_f1, pixel_ap, pixel_auroc, segmentation_report  # scikit-learn: 1-2 s

    steps = {"pixel_auroc": pixel_auroc, "pixel_ap": pixel_ap, "aupro_0.3": aupro, "best_f1": best_f1}
    mpx = sum(m.size for m in maps) / 1e6
    out = {name: metric(maps, masks) for name, metric in tqdm(steps.items(), desc=f"pixel metrics, {mpx:.0f} Mpx",
                                                             unit="metric")}
    best = out.pop("best_f1")
    out.update(best_f1=best["f1"], best_iou=best["iou"], best_threshold=best["threshold"])
    if binary is not None:
        rep = segmentation_report(np.concatenate([b.reshape(-1) for b in binary]),
                                  np.concatenate([m.reshape(-1) for m in masks]))
        out.update(mask_f1=rep["f1"], mask_iou=rep["iou"], mask_precision=rep["precision"],
                   mask_recall=rep["recall"])
    return out


def label_value(text: str | None) -> int | None:
    """``1`` for an anomalous label (``1``, ``1.0``, ``anomalous``, ``true``; case and spaces ignored), ``0`` for
    a normal one (``0``, ``0.0``, ``normal``, ``false``), None for anything else."""
    value = (text or "").strip().lower()
    if value in LABEL_WORDS:
        return LABEL_WORDS[value]
    try:
        number = float(value)
    except ValueError:
        return None
    return int(number) if number in (0.0, 1.0) else None


def read_labels(path: Path) -> dict[str, int]:
    """``stem -> 1 (anomalous) / 0 (normal)`` from a CSV with ``stem`` and ``majority_label`` or ``label``;
    ValueError naming the file (and line) for a CSV without these columns or a label that is neither."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a spreadsheet's byte-order mark
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            col = "majority_label" if "majority_label" in header else "label"
            if header and ("stem" not in header or col not in header):
                raise ValueError(f"{path}: needs the columns stem and majority_label or label, has {header}")
            labels = {}
            for r in reader:
                label = label_value(r[col])
                if label is None:
                    raise ValueError(f"{path}:{reader.line_num}: {col} {r[col]!r} of {r['stem']!r} is neither "
                                     "anomalous (1, anomalous, true) nor normal (0, normal, false)")
                labels[r["stem"]] = label
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a UTF-8 text CSV ({err.reason} at byte {err.start})") from None
    return labels


def load_map(path: Path) -> np.ndarray:
    """A float ``(H, W)`` anomaly map written by predict.py; ValueError naming the file when it is unusable."""
    if not path.exists():
        raise ValueError(f"{path}: not found (predict.py writes it beside preds.png)")
    try:
        score = np.load(path)
    except (OSError, ValueError, EOFError) as err:  # a folder, an empty, truncated or foreign file
        raise ValueError(f"{path}: not a readable anomaly map ({err or type(err).__name__})") from None
    if not isinstance(score, np.ndarray) or score.ndim != 2 or not np.issubdtype(score.dtype, np.number):
        raise ValueError(f"{path}: an anomaly map must be a 2-D array of numbers, has shape "
                         f"{getattr(score, 'shape', None)}")
    if not np.isfinite(score).all():
        raise ValueError(f"{path}: holds NaN or infinite scores")
    return score.astype(np.float32)


def read_predictions(pred: Path) -> list[dict]:
    """All rows of ``<pred>/predictions.csv`` (errors included); ValueError naming the file (and line) for a
    table predict.py did not write: not UTF-8 text, other columns, a scored row without a numeric score."""
    table = pred / "predictions.csv"
    if not table.is_file():
        raise FileNotFoundError(f"{table}: not found; run predict.py first (with sharded workers, merge the shards: "
                                f"python -m common.shard merge {table})")
    try:
        with open(table, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header, rows = reader.fieldnames or [], list(reader)
    except UnicodeDecodeError as err:
        raise ValueError(f"{table}: not a UTF-8 text CSV ({err.reason} at byte {err.start})") from None
    missing = [c for c in ("image", "score", "label", "status") if c not in header]
    if missing:
        raise ValueError(f"{table}: not a table of predict.py (no column {', '.join(missing)}); run predict.py again")
    for line, r in enumerate(rows, start=2):
        if not r["image"]:
            raise ValueError(f"{table}:{line}: a row without an image name")
        if r["status"] == "ok" and not _is_number(r["score"]):
            raise ValueError(f"{table}:{line}: {r['image']!r} has status ok but the score {r['score']!r}")
    return rows


def _is_number(text: str | None) -> bool:
    try:
        return np.isfinite(float(text))
    except (TypeError, ValueError):
        return False


def mask_paths(masks_dir: Path) -> dict[str, Path]:
    """``stem -> mask file`` of every entry of ``masks_dir`` named like an image (a ``.png`` before another file
    of the same stem). Folders and dead links named like images are listed too, so that reading them names
    them with the reason instead of leaving their photo out without a word."""
    files: dict[str, Path] = {}
    for p in list_images(masks_dir):
        if p.stem not in files or p.suffix.lower() == ".png":
            files[p.stem] = p
    return files


def evaluate(pred: Path, masks_dir: Path | None, labels_csv: Path | None) -> dict:
    """Metrics of the photos of ``<pred>/predictions.csv`` with status ok (how many others it lists:
    ``photos_not_predicted``); photos whose outputs are unusable under ``skipped``."""
    all_rows = read_predictions(pred)
    folders = output_folders([r["image"] for r in all_rows])
    rows = [r for r in all_rows if r["status"] == "ok"]
    result: dict = {"photos": len(rows)}
    if len(rows) < len(all_rows):  # error rows: unreadable, failed, or not processed (a run stopped or killed)
        result["photos_not_predicted"] = len(all_rows) - len(rows)
        print(f"note: {len(all_rows) - len(rows)} of the {len(all_rows)} photos of {pred / 'predictions.csv'} have "
              "no prediction (label error; the reasons are in its status column) and are left out", file=sys.stderr)
    skipped = []
    if masks_dir is not None and masks_dir.is_dir():
        maps, masks, binary = [], [], []
        mask_files = mask_paths(masks_dir)
        for r in tqdm(rows, desc="maps and masks", unit="photo"):
            out, mask_path = pred / str(folders[r["image"]]), mask_files.get(Path(r["image"]).stem)
            if mask_path is None:
                continue  # no mask for this photo
            try:
                mask = read_mask(mask_path, {0: 0}, default=1, colours=True).astype(bool)
                score = load_map(out / "anomaly_map.npy")
                pred_mask = read_mask(out / "preds.png", {0: 0}, default=1).astype(bool)
                if not score.shape == pred_mask.shape == mask.shape:
                    raise ValueError(f"{out}: map {score.shape}, predicted mask {pred_mask.shape} and "
                                     f"{mask_path} {mask.shape} differ in size")
            except ValueError as err:  # read_mask's ImageReadError and load_map's errors start with the file
                reason = str(err)
                tqdm.write(f"skipping {r['image']}: {reason}", file=sys.stderr)  # not inside the progress bar
                skipped.append({"image": r["image"], "reason": reason})
                continue
            masks.append(mask)
            maps.append(score)
            binary.append(pred_mask)
        if masks:
            result.update(pixel_metrics(maps, masks, binary), photos_with_masks=len(masks))
    if labels_csv is not None and labels_csv.is_file():
        labels = read_labels(labels_csv)
        scored = [r for r in rows if Path(r["image"]).stem in labels]
        if scored:
            from common.metrics import image_auroc

            result["image_auroc"] = image_auroc([float(r["score"]) for r in scored],
                                                [labels[Path(r["image"]).stem] for r in scored])
            result["label_accuracy"] = float(np.mean([(r["label"] == "anomalous") == bool(labels[Path(r["image"]).stem])
                                                      for r in scored]))
            result["photos_with_labels"] = len(scored)
    if skipped:
        result["skipped"] = skipped
    return result


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n")[-1],
                                formatter_class=HelpFormatter)
    p.add_argument("--pred", default="", help="output folder of predict.py (default: runs/wood/pred, else "
                                               "runs/wood_demo/pred of make demo-wood)")
    p.add_argument("--data", default="data/wood", help="data folder holding masks/consensus and image_labels.csv")
    p.add_argument("--masks", default="", help="mask folder (default <data>/masks/consensus)")
    p.add_argument("--labels", default="", help="image label CSV (default <data>/image_labels.csv)")
    p.add_argument("--json", default="", help="also write the metrics here")
    args = p.parse_args(argv)
    if not args.pred:
        args.pred = str(default_run("pred/predictions.csv") / "pred")
        print(f"--pred {args.pred}", file=sys.stderr)
    data = Path(args.data)
    if not (Path(args.pred) / "predictions.csv").is_file():
        p.error(f"--pred {args.pred}: no predictions.csv in it; run predict.py first (with shards: merge them)")
    if not data.is_dir() and not (args.masks and args.labels):  # both default paths lie in --data
        p.error(f"--data {args.data}: no such folder")
    if args.masks and not Path(args.masks).is_dir():
        p.error(f"--masks {args.masks}: no such folder")
    if args.labels and not Path(args.labels).is_file():
        p.error(f"--labels {args.labels}: no such file")
    masks = Path(args.masks) if args.masks else data / "masks" / "consensus"
    labels = Path(args.labels) if args.labels else data / "image_labels.csv"
    try:
        result = evaluate(Path(args.pred), masks, labels)
    except ValueError as err:  # a malformed label CSV
        sys.exit(f"error: {err}")
    print(dumps_json(result, indent=2))
    if "pixel_auroc" not in result and "image_auroc" not in result:
        sys.exit(f"nothing to score: no mask in {masks} and no label in {labels} matches a scored photo of "
                 f"{args.pred}/predictions.csv ({result['photos']} photos)")
    if args.json:
        try:
            write_json(args.json, result)
        except OSError as err:  # a folder of that name, no space left
            sys.exit(f"--json {args.json}: cannot write the metrics ({err.strerror or err})")
    return result


if __name__ == "__main__":
    main()
