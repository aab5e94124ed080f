"""Predict ships with a trained U-Net: Kaggle submission CSV, overlays, and scores when masks are known.

    python airbus_ships/test.py --data data/airbus --out runs/airbus/test                 # images/ + masks.csv
    python airbus_ships/test.py --data /path/to/test_v2 --model runs/airbus/model/best.keras   # no ground truth
    python airbus_ships/test.py ... --shard 0/4      # worker 0 of 4 (then: python -m common.shard merge OUT/submission.csv --key ImageId)

For every image: ship probabilities from the fully-convolutional net run once on the whole image, padded to a
multiple of its stride (``--how auto``, default: whole images up to 1024x1024 px, larger ones through the common
256x256 tiler so memory stays bounded; ``--how full`` / ``--how tile`` force one way). With the default pretrained
model the whole image scored +0.026 and +0.033 Kaggle over tiling on two benchmark models and runs ~1.7x faster;
with the former scratch model tiling scored better (README: Inference). Then a threshold,
8-connected components as ship instances, the ship / no-ship rule chosen at training time
(``model/postprocess.json``: minimum component size and peak probability). Writes into ``--out``:

* ``submission.csv``: ``ImageId,EncodedPixels``, one row per predicted ship, one empty row for an image
  without ships (the Kaggle format);
* ``result-image/<ImageId>.jpg``: the image with predicted ships in red and true ship outlines in green;
* ``metrics.json`` (and a printed summary) when ground truth is available: dice and IoU (over all pixels and
  per ship image), the Kaggle score (F2 over IoU 0.50:0.95), ship / no-ship accuracy, images/s;
* ``scores.csv`` when ground truth is available: one row per image (its F2, true and predicted ships, each true
  ship's area and best IoU), to sort for the images that lose the score;
* ``test_config.json``: the resolved settings of this run (options, the model's input mode and stride, the
  ship rule and where it came from).

``--split RUN/split.csv --subset val`` keeps the images of one subset of a training run's split (train.py writes
it): the validation images, which the network was not trained on (they did choose its best epoch and ship rule).

Images are processed in sorted ``ImageId`` order. ``--shard I/N`` processes every N-th of them starting at I
and writes ``submission.shard-I-of-N.csv`` / ``metrics.shard-I-of-N.json``: N processes or machines split a
folder deterministically, and ``python -m common.shard merge OUT/submission.csv --key ImageId`` joins their
CSVs into exactly the file one process writes.

A long run keeps what it has done: every 30 s (and on Ctrl-C) the rows so far go to ``submission.partial.csv``
(an extra ``scored`` column; not a submission: images are missing); ``--resume`` with the same command then predicts
only the images it lacks and scores all of them (the earlier run's problems are not listed again). The partial
file is removed when ``submission.csv`` is written.

Bad input never stops the run: a malformed RLE row, two ship rows of one image that overlap, a row whose image
is missing, an unreadable image, one that is not 768x768 or one whose prediction fails is reported with its row
or file and the reason; an unreadable image or a failed prediction still gets an empty submission row (Kaggle
wants every ImageId). Outputs are written atomically at the end (overlays one by one), so nothing is left
half-written. Without the model's ``postprocess.json`` a warning says the default rule is used.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from scipy import ndimage  # noqa: E402
from tqdm import tqdm  # noqa: E402

from airbus_ships.data import SIZE, check_rle, find_layout, overlapping_rows  # noqa: E402
from airbus_ships.inference import (HOWS, POSTPROCESS_FILE, ShipRule, network_stride, predict_probs,  # noqa: E402
                                    ships_from_probs)
from airbus_ships.losses import CUSTOM_OBJECTS  # noqa: E402
from common.io import ImageReadError, atomic_write, list_images, read_rgb, rle_decode, rle_encode, save_image, write_json  # noqa: E402
from common.metrics import f2_from_ious, instance_ious  # noqa: E402
from common.shard import add_shard_argument, select_shard, shard_path  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default="data/airbus", help="images/ (+ masks.csv), train_v2/ (+ CSV) or a folder of images")
    p.add_argument("--csv", default="", help="ground-truth / image-list CSV (default: the one in --data, if any)")
    p.add_argument("--no-gt", action="store_true", help="ignore ground truth: predict every image in the folder")
    p.add_argument("--model", default="runs/airbus/model/best.keras", help="trained .keras model")
    p.add_argument("--out", default="runs/airbus/test", help="output folder")
    p.add_argument("--how", choices=HOWS, default="auto",
                   help="full: the whole image at once (with the default model +0.03 Kaggle over tile and ~1.7x "
                        "faster; README); tile: 256x256 tiles, bounded memory for any image size (scored better "
                        "with the former scratch model); auto: full up to 1024x1024 px, tile above")
    p.add_argument("--tta", action="store_true",
                   help="average the image and its 3 flips (4x slower; no gain with the default pretrained model: "
                        "Kaggle 0.570 vs 0.567, dice 0.672 vs 0.682; +0.025 Kaggle with the former scratch model; "
                        "README)")
    p.add_argument("--threshold", type=float, default=None, help="probability threshold (default: postprocess.json)")
    p.add_argument("--min-size", type=int, default=None, help="smallest ship in pixels (default: postprocess.json)")
    p.add_argument("--min-confidence", type=float, default=None,
                   help="peak probability a ship must reach (default: postprocess.json)")
    p.add_argument("--overlays", type=int, default=40, help="write overlays for this many images (-1: all)")
    p.add_argument("--limit", type=int, default=0, help="predict at most this many images (0: all), the first in "
                                                         "sorted order (before sharding)")
    p.add_argument("--split", default="", help="a training run's split.csv (ImageId,subset): keep only the images "
                                                 "of --subset")
    p.add_argument("--subset", default="val", choices=("val", "train"), help="with --split: which images to keep")
    p.add_argument("--resume", action="store_true",
                   help="continue a stopped run in --out: the images of its submission.partial.csv keep their rows "
                        "and are not predicted again")
    add_shard_argument(p)
    p.add_argument("--seed", type=int, default=0, help="unused by inference (deterministic); kept for symmetry")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="cpu hides the GPUs; cuda stops when TensorFlow sees none")
    p.add_argument("--threads", type=int, default=0, help="TensorFlow intra- and inter-op threads (0: its choice)")
    return p.parse_args(argv)


def report(msg: str) -> None:
    print(f"skipped: {msg}", file=sys.stderr)


def read_ground_truth(csv_path: Path, images_dir: Path) -> tuple[OrderedDict, list[str]]:
    """``{ImageId: [rle, ...] or None}`` in file order (None: a row of that image is malformed, or two of its
    ships overlap, so the image is predicted but not scored), and the problems found. Rows whose image file is
    missing are dropped."""
    truth: OrderedDict[str, list[str] | None] = OrderedDict()
    lines: dict[str, list[int]] = {}  # CSV line of each kept ship row
    problems = []
    with open(csv_path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or header[:2] != ["ImageId", "EncodedPixels"]:
            raise SystemExit(f"{csv_path}: header ImageId,EncodedPixels expected, found {header}")
        for line, row in enumerate(reader, start=2):
            if len(row) < 1 or not row[0].strip():
                problems.append(f"{csv_path}:{line}: empty ImageId")
                continue
            image_id, rle = row[0].strip(), (row[1].strip() if len(row) > 1 else "")
            if not (images_dir / image_id).is_file():
                if image_id not in truth:
                    problems.append(f"{csv_path}:{line}: {image_id}: image file not found in {images_dir}")
                truth.setdefault(image_id, None)
                continue
            why = check_rle(rle)
            if why:
                problems.append(f"{csv_path}:{line}: {image_id}: malformed RLE ({why}); image predicted, not scored")
                truth[image_id] = None
                continue
            if image_id not in truth:
                truth[image_id] = []
            if truth[image_id] is not None and rle:
                truth[image_id].append(rle)
                lines.setdefault(image_id, []).append(line)
    for image_id, rles in truth.items():
        pair = overlapping_rows(rles) if rles and len(rles) > 1 else None
        if pair:
            a, b = (lines[image_id][k] for k in pair)
            problems.append(f"{csv_path}:{a} and line {b}: {image_id}: the two ships overlap; image predicted, "
                            f"not scored")
            truth[image_id] = None
    # drop images whose file is missing (they were recorded as None only to report them once)
    return OrderedDict((k, v) for k, v in truth.items() if (images_dir / k).is_file()), problems


def overlay(image: np.ndarray, pred: np.ndarray, truth: np.ndarray | None) -> np.ndarray:
    """Predicted ships tinted red, true ship outlines in green."""
    out = image.astype(np.float32)
    out[pred] = 0.45 * out[pred] + 0.55 * np.array([255, 0, 0])
    if truth is not None:
        edge = truth & ~ndimage.binary_erosion(truth)
        out[edge] = (0, 255, 0)
    return out.clip(0, 255).astype(np.uint8)


SHIP_SIZE_BINS = (0, 100, 300, 1000, 3000)  # pixels; a true ship falls in the last bin whose lower edge it reaches
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
        self.true_ships = self.pred_ships_on_ship_images = 0
        self.ship_area, self.ship_best_iou = [], []  # per true ship
        self.ship_match_ratio = []  # per true ship: area of its best-IoU predicted ship / its area (nan: untouched)
        self.image_rows = []        # per image: the row of scores.csv (SCORE_COLUMNS)

    def add(self, pred_ships: list[np.ndarray], true_ships: list[np.ndarray], shape, image_id: str = "") -> None:
        pred = np.any(pred_ships, axis=0) if pred_ships else np.zeros(shape, bool)
        true = np.any(true_ships, axis=0) if true_ships else np.zeros(shape, bool)
        tp, fp, fn = int((pred & true).sum()), int((pred & ~true).sum()), int((~pred & true).sum())
        self.tp, self.fp, self.fn = self.tp + tp, self.fp + fp, self.fn + fn
        ious = instance_ious(pred_ships, true_ships)  # (predicted, true): for F2 and the size breakdown
        self.f2.append(f2_from_ious(ious))
        self.correct.append(bool(pred_ships) == bool(true_ships))
        self.has_ships.append(bool(true_ships))
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
        }


def load_rule(model_dir: Path, args: argparse.Namespace) -> tuple[ShipRule, str]:
    """The ship rule (train.py's postprocess.json, options on top) and where it came from; a clear warning when
    the file is missing and the options do not replace all of it."""
    keys = ("threshold", "min_size", "min_confidence")
    try:
        (rule, record), source = ShipRule.load(model_dir), str(model_dir / POSTPROCESS_FILE)
    except FileNotFoundError as err:
        rule, source = ShipRule(), f"defaults ({model_dir / POSTPROCESS_FILE} missing)"
        if any(getattr(args, k) is None for k in keys):
            print(f"WARNING: {err}. Using the default rule {rule} for what --threshold / --min-size / "
                  f"--min-confidence do not give: scores will be lower than with the rule chosen for this model.",
                  file=sys.stderr)
    else:
        chosen_on = record.get("how")
        if chosen_on and chosen_on != args.how:
            print(f"warning: the ship rule was chosen on '{chosen_on}' predictions and this run predicts '--how "
                  f"{args.how}': scores may be lower (--how {chosen_on}, or choose the rule again with train.py "
                  f"--out RUN --calibrate-only --predict-how {args.how})", file=sys.stderr)
    given = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    for key, value in given.items():
        setattr(rule, key, value)
    return rule, source + (f", overridden by {given}" if given else "")


def keep_split(image_ids: list[str], split_csv: str, subset: str) -> list[str]:
    """The ``image_ids`` listed under ``subset`` in a train.py ``split.csv``."""
    path = Path(split_csv)
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as err:
        sys.exit(f"{path}: cannot read the split ({err.strerror}); train.py writes RUN/split.csv")
    if not rows or not {"ImageId", "subset"} <= set(rows[0]):
        sys.exit(f"{path}: columns ImageId,subset expected (train.py's split.csv)")
    wanted = {r["ImageId"] for r in rows if r["subset"] == subset}
    kept = [i for i in image_ids if i in wanted]
    if len(kept) < len(wanted):
        print(f"warning: {len(wanted) - len(kept)} of the {len(wanted)} {subset} images of {path} are not in "
              f"--data (or their rows were skipped)", file=sys.stderr)
    return kept


PARTIAL_SECONDS = 30.0  # how often the rows done so far are saved (submission.partial.csv) during a long run


def write_partial(path: Path, rows: list[tuple[str, str]], scored: set[str]) -> None:
    """The rows done so far, with a third column ``scored`` (1: the image's ships counted in the scores), so that
    a stopped run loses at most PARTIAL_SECONDS of work (``--resume``); not a submission (images are missing)."""
    with atomic_write(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ImageId", "EncodedPixels", "scored"])
        writer.writerows((image_id, rle, int(image_id in scored)) for image_id, rle in rows)


def read_partial(path: Path) -> tuple[OrderedDict, set[str]]:
    """``({ImageId: [rle, ...]}, scored ImageIds)`` of a partial table (``--resume``); empty when there is none."""
    done: OrderedDict[str, list[str]] = OrderedDict()
    scored = set()
    if not path.is_file():
        return done, scored
    try:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                done.setdefault(row["ImageId"], []).append(row["EncodedPixels"])
                if row["scored"] == "1":
                    scored.add(row["ImageId"])
    except (OSError, KeyError, UnicodeDecodeError, csv.Error) as err:
        sys.exit(f"{path}: cannot read the rows of the stopped run ({type(err).__name__}: {err}); delete it to "
                 "start afresh")
    return done, scored


@dataclass
class ImageResult:
    """What one image gave: its submission rows (one empty row when it has no ship or could not be predicted),
    its problems (worded for the report), and when it was predicted, its ship instances and the seconds the
    prediction took; ``true_ships`` only when it is scored (ground truth known, 768x768)."""
    rows: list[tuple[str, str]]
    problems: list[str] = field(default_factory=list)
    ships: list[np.ndarray] | None = None
    seconds: float = 0.0
    true_ships: list[np.ndarray] | None = None


def predict_image(images_dir: Path, image_id: str, true_rles: list[str] | None, model: keras.Model,
                  args: argparse.Namespace, input_mode: str, input_size: int, rule: ShipRule,
                  overlay_path: Path | None) -> ImageResult:
    """Read one image, predict its ship probabilities (``--how``, ``--tta``), apply the ship rule, and make its
    submission rows and, when ``overlay_path`` is given, its overlay. An unreadable image or a failed prediction
    gives an empty row and a problem (one image's failure must not cost the others); an image that is not
    768x768 is predicted at its own size and not scored."""
    try:
        image = read_rgb(images_dir / image_id)
    except ImageReadError as err:
        return ImageResult([(image_id, "")], [f"{err}; empty submission row written"])  # Kaggle wants every ImageId
    problems = []
    if image.shape[:2] != (SIZE, SIZE):
        problems.append(f"{images_dir / image_id}: image is {image.shape[1]}x{image.shape[0]}, not {SIZE}x{SIZE}; "
                        f"predicted at its own size (RLE for that shape), not scored")
    t0 = time.perf_counter()
    try:
        prob = predict_probs(model, image, args.how, input_mode, input_size, args.tta)
    except (tf.errors.OpError, ValueError) as err:
        problems.append(f"{images_dir / image_id}: prediction failed ({type(err).__name__}: "
                        f"{str(err).strip().splitlines()[0][:300]}); empty submission row written")
        return ImageResult([(image_id, "")], problems)
    ships = ships_from_probs(prob, rule)
    seconds = time.perf_counter() - t0
    rows = [(image_id, rle_encode(s)) for s in ships] or [(image_id, "")]
    true_ships = None
    if true_rles is not None and image.shape[:2] == (SIZE, SIZE):
        true_ships = [rle_decode(r).astype(bool) for r in true_rles]
    if overlay_path is not None:
        pred = np.any(ships, axis=0) if ships else np.zeros(image.shape[:2], bool)
        truth_mask = np.any(true_ships, axis=0) if true_ships else None
        save_image(overlay_path, overlay(image, pred, truth_mask), quality=90)
    return ImageResult(rows, problems, ships, seconds, true_ships)


def main(argv=None) -> dict:
    args = parse_args(argv)
    from airbus_ships.runtime import setup_device
    setup_device(args.device, args.threads)
    model_path = Path(args.model)
    if not model_path.is_file():
        sys.exit(f"{model_path}: model not found (train one with airbus_ships/train.py)")
    model = keras.saving.load_model(model_path, custom_objects=CUSTOM_OBJECTS, compile=False, safe_mode=True)
    cfg_path = model_path.parent / "config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    input_mode, input_size = cfg.get("input_mode", "crop"), int(cfg.get("input_size", 256))
    rule, rule_source = load_rule(model_path.parent, args)

    images_dir, csv_path = find_layout(args.data)
    csv_path = Path(args.csv) if args.csv else csv_path
    problems: list[str] = []
    start = time.perf_counter()
    if csv_path is not None and not args.no_gt:
        truth, problems = read_ground_truth(csv_path, images_dir)
        image_ids = list(truth)
    else:
        truth, image_ids = {}, [p.name for p in list_images(images_dir)]
    for p in problems:
        report(p)
    image_ids = sorted(image_ids)  # the order a merge of shards reproduces
    if args.split:
        image_ids = keep_split(image_ids, args.split, args.subset)
    if args.limit:
        image_ids = image_ids[:args.limit]
    image_ids = select_shard(image_ids, args.shard)
    shard = f"; shard {args.shard[0]}/{args.shard[1]}" if args.shard else ""
    shard += f"; {args.subset} images of {args.split}" if args.split else ""
    print(f"{len(image_ids)} images from {images_dir}{shard}; ground truth: {csv_path if truth else 'none'} "
          f"(listed in {time.perf_counter() - start:.1f} s); {model_path} ({input_mode}), {args.how} prediction, "
          f"{rule}")

    out = Path(args.out)
    rows, scores, n_done, elapsed = [], Scores(), 0, 0.0
    partial = shard_path(out / "submission.partial.csv", args.shard)
    done, scored = read_partial(partial) if args.resume else (OrderedDict(), set())
    if args.resume:
        print(f"--resume: {len(done)} images done in {partial}" if done else f"--resume: no {partial}: all images")
    elif partial.exists():
        print(f"warning: {partial} holds the rows of a stopped run: this run predicts every image again (--resume "
              "continues it)", file=sys.stderr)
    last_save = time.perf_counter()
    try:
        for image_id in tqdm(image_ids, desc="predict", unit="img", file=sys.stdout, mininterval=5):
            if image_id in done:  # --resume: predicted by the stopped run; its rows kept, scored again
                rows += [(image_id, rle) for rle in done[image_id]]
                if image_id in scored and truth.get(image_id) is not None:
                    scores.add([rle_decode(r).astype(bool) for r in done[image_id] if r],
                               [rle_decode(r).astype(bool) for r in truth[image_id]], (SIZE, SIZE), image_id)
                else:
                    scored.discard(image_id)
            else:
                overlay_path = (out / "result-image" / (Path(image_id).stem + ".jpg")
                                if args.overlays < 0 or n_done < args.overlays else None)
                result = predict_image(images_dir, image_id, truth.get(image_id), model, args, input_mode,
                                       input_size, rule, overlay_path)
                rows += result.rows
                for msg in result.problems:
                    problems.append(msg)
                    report(msg)
                if result.ships is not None:
                    n_done, elapsed = n_done + 1, elapsed + result.seconds
                if result.true_ships is not None:
                    scores.add(result.ships, result.true_ships, (SIZE, SIZE), image_id)
                    scored.add(image_id)
            if time.perf_counter() - last_save > PARTIAL_SECONDS:
                write_partial(partial, rows, scored)
                last_save = time.perf_counter()
    except KeyboardInterrupt:  # Ctrl-C: keep what is done
        write_partial(partial, rows, scored)
        sys.exit(f"interrupted: the rows of {len({r[0] for r in rows})} images are in {partial}; run the same command "
                 "with --resume to continue")

    submission = shard_path(out / "submission.csv", args.shard)
    with atomic_write(submission, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ImageId", "EncodedPixels"])
        writer.writerows(rows)
    partial.unlink(missing_ok=True)
    result = {"images_predicted": n_done, "images_per_second": n_done / elapsed if elapsed else None,
              "prediction": args.how, "tta": args.tta, "rule": vars(rule), "problems": problems}
    if truth:
        result.update(scores.summary())
        with atomic_write(shard_path(out / "scores.csv", args.shard), "w", newline="") as f:
            csv.writer(f).writerows([SCORE_COLUMNS, *scores.image_rows])
    write_json(shard_path(out / "metrics.json", args.shard), result)
    write_json(shard_path(out / "test_config.json", args.shard),
               {**{k: v for k, v in vars(args).items() if k != "shard"},
                "shard": list(args.shard) if args.shard else None, "images_dir": str(images_dir),
                "ground_truth": str(csv_path) if truth else None, "images": len(image_ids),
                "input_mode": input_mode, "input_size": input_size, "network_stride": network_stride(model),
                "rule": vars(rule), "rule_source": rule_source})
    print(f"wrote {submission} ({len(rows)} rows, {n_done} images), overlays in {out / 'result-image'}")
    if problems:
        print(f"{len(problems)} problem(s) reported above; the other images were processed")
    if truth and scores.f2:
        s = scores.summary()
        print(f"Kaggle score {s['kaggle_score']:.3f} | dice {s['dice_pixels']:.3f} (pixels), "
              f"{s['dice_ship_images_mean'] or 0:.3f} (mean over {s['ship_images']} ship images) | "
              f"IoU {s['iou_pixels']:.3f} | ship/no-ship accuracy {s['ship_no_ship_accuracy']:.3f}"
              + (f" | {result['images_per_second']:.2f} images/s" if result["images_per_second"] else ""))
        d = s["per_image"]
        if d["ship_images_mean_f2"] is not None:
            print(f"ship images: mean F2 {d['ship_images_mean_f2']:.3f}, {d['ship_images_f2_zero']} of "
                  f"{s['ship_images']} score 0 ({d['ship_images_predicted_empty']} predicted empty); "
                  f"{d['predicted_ships_on_ship_images']} ships predicted for {d['true_ships']}; "
                  f"{d['ship_free_images_with_a_false_ship']} ship-free images with a false ship")
            print("true ships found (IoU > 0.5) by size: " + ", ".join(
                f"{r['pixels']} px {r['found_iou_0.5']}/{r['ships']}"
                + (f" ({r['median_area_ratio']:.1f}x area)" if r["median_area_ratio"] is not None else "")
                for r in s["ships_by_size"] if r["ships"]))
    return result


if __name__ == "__main__":
    main()
