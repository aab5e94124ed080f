"""Predict ships with a trained U-Net: Kaggle submission CSV, overlays, and scores when masks are known.

    python airbus_ships/test.py --data data/airbus --out runs/airbus/test                 # images/ + masks.csv
    python airbus_ships/test.py --data /path/to/test_v2 --model runs/airbus/model/best.keras   # no ground truth
    python airbus_ships/test.py ... --shard 0/4      # worker 0 of 4; then join the shards' CSVs with
    python -m common.shard merge OUT/submission.csv --key ImageId

For every image: ship probabilities from the fully-convolutional net run once on the whole image, padded to a
multiple of its stride (``--how auto``, default: whole images up to 1024x1024 px, larger ones through the common
256x256 tiler so memory stays bounded; ``--how full`` / ``--how tile`` force one way), by default averaged
over the image and its three flips as the ship rule was chosen (``--no-flips``: 4x faster, a lower score). Then a
threshold, 8-connected components as ship instances, and the ship / no-ship rule chosen at training time
(``model/postprocess.json``: minimum component size and peak probability). Writes into ``--out``:

* ``submission.csv``: ``ImageId,EncodedPixels``, one row per predicted ship, one empty row for an image
  without ships (the Kaggle format);
* ``result-image/<ImageId>.jpg``: the image with predicted ships in red and true ship outlines in green;
* ``metrics.json`` (and a printed summary) when ground truth is available: dice and IoU (over all pixels and
  per ship image), the Kaggle score (F2 over IoU 0.50:0.95), ship / no-ship accuracy, images/s
  (``airbus_ships.metrics``);
* ``scores.csv`` when ground truth is available: one row per image (its F2, true and predicted ships, each true
  ship's area and best IoU), to sort for the images that lose the score;
* ``test_config.json``: the resolved settings of this run (options, the network's stride, the ship rule and
  where it came from).

``--split RUN/split.csv --subset val`` keeps the images of one subset of a training run's split. Images are
processed in sorted ``ImageId`` order; ``--shard I/N`` processes every N-th of them starting at I and writes
``submission.shard-I-of-N.csv`` / ``metrics.shard-I-of-N.json``, which ``common.shard merge`` joins into exactly
the file one process writes. Each image's rows go to ``submission.partial.csv`` as soon as it is predicted, so a
run stopped in any way (Ctrl-C, kill -9) keeps every image it finished: ``--resume`` with the same command
predicts only the others and ends with the outputs of a run never stopped. The outputs are written atomically at
the end (overlays one by one); then what an earlier run left in ``--out`` that this run does not replace
(``scores.csv`` without ground truth, overlays of other images) is removed.

Bad input never stops the run: a malformed RLE row, two ship rows of one image that overlap, a row whose image
is missing, an unreadable image (empty, truncated, not an image, a folder or dead link under an image name, too
large to decode), one smaller than the network's stride, one that is not 768x768 (with ground truth: not
scored) or one whose prediction fails is reported with its row or file and the reason; an image that cannot be
predicted still gets an empty submission row (Kaggle wants every ImageId). Exit status 0 when the run ends (the
problems are also listed in metrics.json); 1 with one line naming the file when nothing can run (an unusable
model, ship rule, data folder or CSV); 2 for a wrong option; 130 after Ctrl-C.
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

import numpy as np

from airbus_ships import quiet_tensorflow
from airbus_ships.data import SIZE, check_rle, find_layout, overlapping_rows, read_mask_csv
from airbus_ships.inference import (
    HOWS,
    POSTPROCESS_FILE,
    ShipRule,
    model_file_problem,
    network_stride,
    predict_probs,
    ships_from_probs,
)
from airbus_ships.metrics import SCORE_COLUMNS, Scores, summary_lines
from common.config import HelpFormatter
from common.io import (
    ImageReadError,
    atomic_write,
    list_images,
    read_rgb,
    rle_decode,
    rle_encode,
    save_image,
    write_json,
)
from common.shard import add_shard_argument, select_shard, shard_path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--data", default="data/airbus",
                   help="images/ (+ masks.csv), train_v2/ (+ CSV) or a folder of images")
    p.add_argument("--csv", default="", help="ground-truth / image-list CSV (default: the one in --data, if any)")
    p.add_argument("--no-gt", action="store_true", help="ignore ground truth: predict every image in the folder")
    p.add_argument("--model", default="runs/airbus/model/best.keras", help="trained .keras model")
    p.add_argument("--out", default="runs/airbus/test", help="output folder")
    p.add_argument("--how", choices=HOWS, default="auto",
                   help="full: the whole image at once (more context, faster); tile: 256x256 tiles, bounded memory "
                        "for any image size; auto: full up to 1024x1024 px, tile above")
    p.add_argument("--flips", action=argparse.BooleanOptionalAction, default=None,
                   help="the mean of the maps of the image and its three flips (4x the time; --no-flips: 4x "
                        "faster, a lower score); default: as the ship rule was chosen (postprocess.json: flips)")
    p.add_argument("--threshold", type=float, default=None, help="probability threshold (default: postprocess.json)")
    p.add_argument("--min-size", type=int, default=None, help="smallest ship in pixels (default: postprocess.json)")
    p.add_argument("--min-confidence", type=float, default=None,
                   help="peak probability a ship must reach (default: postprocess.json)")
    p.add_argument("--overlays", type=int, default=40, help="write overlays for this many images (-1: all)")
    p.add_argument("--limit", type=int, default=0, help="predict at most this many images (0: all), the first in "
                                                         "sorted order (before sharding): a quick check")
    p.add_argument("--split", default="", help="a training run's split.csv (ImageId,subset): keep only the images "
                                                 "of --subset (e.g. the validation images the net did not train on)")
    p.add_argument("--subset", default="val", choices=("val", "train"), help="with --split: which images to keep")
    p.add_argument("--resume", action="store_true",
                   help="continue a stopped run in --out: the images of its submission.partial.csv keep their rows "
                        "and are not predicted again")
    add_shard_argument(p)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="cpu hides the GPUs; cuda stops when TensorFlow sees none")
    p.add_argument("--threads", type=int, default=0, help="TensorFlow intra- and inter-op threads (0: its choice)")
    return p.parse_args(argv)


def report(msg: str) -> None:
    print(f"skipped: {msg}", file=sys.stderr)


def read_ground_truth(csv_path: Path, images_dir: Path) -> tuple[OrderedDict, list[str]]:
    """``{ImageId: [rle, ...] or None}`` in file order (None: a row of that image is malformed, or two of its
    ships overlap, so the image is predicted but not scored), and the problems found. Rows whose image is not in
    ``images_dir`` are dropped; a dead link or a folder under an image's name stays, for the reader to name."""
    try:
        frame, problems = read_mask_csv(csv_path)
    except ValueError as err:  # unreadable, not UTF-8, no header: one line naming the file
        sys.exit(str(err))
    truth: OrderedDict[str, list[str] | None] = OrderedDict()
    lines: dict[str, list[int]] = {}  # CSV line of each kept ship row
    missing: set[str] = set()
    for line, image_id, rle in zip(frame["line"], frame["ImageId"], frame["EncodedPixels"]):
        if image_id in missing or not os.path.lexists(images_dir / image_id):
            if image_id not in missing:
                problems.append(f"{csv_path}:{line}: {image_id}: image file not found in {images_dir}")
                missing.add(image_id)
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
    return truth, problems


def overlay(image: np.ndarray, pred: np.ndarray, truth: np.ndarray | None) -> np.ndarray:
    """Predicted ships tinted red, true ship outlines in green."""
    from scipy import ndimage

    out = image.astype(np.float32)
    out[pred] = 0.45 * out[pred] + 0.55 * np.array([255, 0, 0])
    if truth is not None:
        edge = truth & ~ndimage.binary_erosion(truth)
        out[edge] = (0, 255, 0)
    return out.clip(0, 255).astype(np.uint8)


def load_rule(model_dir: Path, args: argparse.Namespace) -> tuple[ShipRule, str]:
    """The ship rule (train.py's postprocess.json, options on top) and where it came from; a clear warning when
    the file is missing and the options do not replace all of it. Sets ``args.flips`` when not given: as the rule
    was chosen (off for a rule recorded without flips, or none)."""
    keys = ("threshold", "min_size", "min_confidence")
    try:
        (rule, record), source = ShipRule.load(model_dir), str(model_dir / POSTPROCESS_FILE)
    except ValueError as err:  # unreadable JSON: one line naming the file
        sys.exit(str(err))
    except FileNotFoundError as err:
        rule, source, record = ShipRule(), f"defaults ({model_dir / POSTPROCESS_FILE} missing)", {}
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
        if args.flips is not None and args.flips != record.get("flips", False):
            print(f"warning: the ship rule was chosen on maps {'with' if record.get('flips') else 'without'} "
                  f"test-time flips and this run predicts {'with' if args.flips else 'without'}: scores may be lower",
                  file=sys.stderr)
    if args.flips is None:
        args.flips = bool(record.get("flips", False))
    given = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    for key, value in given.items():
        setattr(rule, key, value)
    return rule, source + (f", overridden by {given}" if given else "")


def keep_split(image_ids: list[str], split_csv: str, subset: str) -> list[str]:
    """The ``image_ids`` listed under ``subset`` in a train.py ``split.csv``."""
    path = Path(split_csv)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        sys.exit(f"{path}: cannot read the split ({getattr(err, 'strerror', None) or err}); train.py writes "
                 "RUN/split.csv")
    if not rows or not {"ImageId", "subset"} <= set(rows[0]):
        sys.exit(f"{path}: columns ImageId,subset expected (train.py's split.csv)")
    wanted = {r["ImageId"] for r in rows if r["subset"] == subset}
    kept = [i for i in image_ids if i in wanted]
    if len(kept) < len(wanted):
        print(f"warning: {len(wanted) - len(kept)} of the {len(wanted)} {subset} images of {path} are not in "
              f"--data (or their rows were skipped)", file=sys.stderr)
    return kept


PARTIAL_COLUMNS = ("ImageId", "EncodedPixels", "scored", "rows")


def partial_rows(image_id: str, rles: list[str], scored: bool) -> list[tuple]:
    """An image's rows in ``submission.partial.csv``: its submission rows with ``scored`` (1: its ships counted
    in the scores) and ``rows`` (how many rows it has, so that an image whose rows a kill cut short is known)."""
    return [(image_id, rle, int(scored), len(rles)) for rle in rles]


def start_partial(path: Path, done: OrderedDict, scored: set[str]):
    """``path`` rewritten (atomically) with the complete images of ``done``, then opened for appending: every
    image's rows go there as soon as it is predicted (:func:`predict_all`), so a run stopped in any way, kill -9
    included, loses at most the image it was predicting (``--resume``). Not a submission (images are missing)."""
    with atomic_write(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(PARTIAL_COLUMNS)
        for image_id, rles in done.items():
            writer.writerows(partial_rows(image_id, rles, image_id in scored))
    return open(path, "a", newline="")


def read_partial(path: Path) -> tuple[OrderedDict, set[str]]:
    """``({ImageId: [rle, ...]}, scored ImageIds)`` of the complete images of a partial table (``--resume``; a
    line cut off by a kill and an image with fewer rows than it announces are left out); empty when there is
    none."""
    done: OrderedDict[str, list[str]] = OrderedDict()
    announced: dict[str, int] = {}
    scored = set()
    if not path.is_file():
        return done, scored
    try:
        with open(path, newline="") as f:
            reader = csv.reader(f)
            if tuple(next(reader, ())) != PARTIAL_COLUMNS:
                raise ValueError(f"header {','.join(PARTIAL_COLUMNS)} expected")
            for row in reader:
                if len(row) != len(PARTIAL_COLUMNS) or not row[3].isdigit():
                    continue  # the last line, cut off by a kill
                done.setdefault(row[0], []).append(row[1])
                announced[row[0]] = int(row[3])
                if row[2] == "1":
                    scored.add(row[0])
    except (OSError, ValueError, UnicodeDecodeError, csv.Error) as err:
        sys.exit(f"{path}: cannot read the rows of the stopped run ({type(err).__name__}: {err}); delete it to "
                 "start afresh")
    complete = OrderedDict((k, v) for k, v in done.items() if announced[k] == len(v))
    return complete, scored & set(complete)


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


def predict_image(images_dir: Path, image_id: str, true_rles: list[str] | None, model, how: str, flips: bool,
                  rule: ShipRule, overlay_path: Path | None) -> ImageResult:
    """Read one image, predict its ship probabilities (``how``, ``flips``), apply the ship rule, and make its
    submission rows and, when ``overlay_path`` is given, its overlay. An unreadable image, one smaller than the
    network's stride or a failed prediction gives an empty row and a problem (one image's failure must not cost the
    others); an image that is not 768x768 is predicted at its own size (and, with ground truth, not scored)."""
    import tensorflow as tf  # loaded already (the model); for its error class

    try:
        image = read_rgb(images_dir / image_id)
    except ImageReadError as err:
        return ImageResult([(image_id, "")], [f"{err}; empty submission row written"])  # Kaggle wants every ImageId
    (h, w), stride = image.shape[:2], network_stride(model)
    if min(h, w) < stride:
        return ImageResult([(image_id, "")], [f"{images_dir / image_id}: image is {w}x{h} px, too small to predict "
                                              f"(smaller than the network's stride, {stride} px); empty submission "
                                              "row written"])
    problems = []
    if (h, w) != (SIZE, SIZE) and true_rles is not None:
        problems.append(f"{images_dir / image_id}: image is {w}x{h}, not {SIZE}x{SIZE}; predicted at its own size "
                        f"(RLE for that shape), not scored")
    t0 = time.perf_counter()
    try:
        prob = predict_probs(model, image, how, flips)
    except (tf.errors.OpError, ValueError) as err:
        problems.append(f"{images_dir / image_id}: prediction failed ({type(err).__name__}: "
                        f"{str(err).strip().splitlines()[0][:300]}); empty submission row written")
        return ImageResult([(image_id, "")], problems)
    ships = ships_from_probs(prob, rule)
    seconds = time.perf_counter() - t0
    rows = [(image_id, rle_encode(s)) for s in ships] or [(image_id, "")]
    true_ships = None
    if true_rles is not None and (h, w) == (SIZE, SIZE):
        true_ships = [rle_decode(r).astype(bool) for r in true_rles]
    if overlay_path is not None:
        pred = np.any(ships, axis=0) if ships else np.zeros(image.shape[:2], bool)
        truth_mask = np.any(true_ships, axis=0) if true_ships else None
        save_image(overlay_path, overlay(image, pred, truth_mask), quality=90)
    return ImageResult(rows, problems, ships, seconds, true_ships)


def load_model(args: argparse.Namespace):
    """The trained network (no optimizer: prediction only) and its ship rule with where it came from; exits
    with one line naming the file when the model, its config.json or its postprocess.json is unusable."""
    from airbus_ships.inference import ModelFileError, open_model

    model_path = Path(args.model)
    cfg_path = model_path.parent / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        input_mode = cfg.get("input_mode", "crop")
    except (OSError, ValueError, AttributeError) as err:
        sys.exit(f"{cfg_path}: cannot read the model's training settings ({type(err).__name__}: {err})")
    if input_mode != "crop":
        sys.exit(f"{cfg_path}: this model was trained on downscaled whole images (input_mode {input_mode!r}), "
                 "which this code no longer predicts; train a new model")
    try:
        model = open_model(model_path)
    except ModelFileError as err:
        sys.exit(str(err))
    return model, *load_rule(model_path.parent, args)


def select_images(args: argparse.Namespace) -> tuple[Path, Path | None, dict, list[str], list[str], list[str]]:
    """``(images folder, ground-truth CSV or None, {ImageId: true RLEs or None}, ImageIds to predict, ImageIds of
    all shards, problems)``: the images of ``--data`` (with their ground truth unless ``--no-gt``), sorted, then
    ``--split`` and ``--limit`` applied (all shards), then ``--shard``. Exits naming the folder when it holds no
    image."""
    try:
        images_dir, csv_path = find_layout(args.data)
    except FileNotFoundError as err:  # names the folder and the layouts expected
        sys.exit(str(err))
    csv_path = Path(args.csv) if args.csv else csv_path
    problems: list[str] = []
    if csv_path is not None and not args.no_gt:
        truth, problems = read_ground_truth(csv_path, images_dir)
        image_ids = list(truth)
    else:
        truth, image_ids = {}, [p.name for p in list_images(images_dir)]
    for p in problems:
        report(p)
    if not image_ids:
        sys.exit(f"{csv_path if truth or problems else images_dir}: no images to predict"
                 + (f" (images named in {csv_path} and found in {images_dir}; --no-gt: every image in the folder)"
                    if csv_path is not None and not args.no_gt else ""))
    image_ids = sorted(image_ids)  # the order a merge of shards reproduces
    if args.split:
        image_ids = keep_split(image_ids, args.split, args.subset)
    if args.limit:
        image_ids = image_ids[:args.limit]
    return images_dir, csv_path, truth, select_shard(image_ids, args.shard), image_ids, problems


def predict_all(args: argparse.Namespace, model, rule: ShipRule, images_dir: Path, image_ids: list[str],
                truth: dict, problems: list[str]) -> tuple[list[tuple[str, str]], Scores, int, float, set[str]]:
    """Predict and score every image (``--resume``: the stopped run's rows kept and scored again), appending each
    image's rows to ``submission.partial.csv`` as soon as it is done. Overlays for the first ``--overlays`` images
    of the list. Returns ``(submission rows, scores, images predicted, seconds their predictions took, overlay
    file names of this run)``; the problems found are appended to ``problems``. Ctrl-C: one line, exit 130."""
    from tqdm import tqdm

    out = Path(args.out)
    rows, scores, n_done, elapsed, overlaid = [], Scores(), 0, 0.0, set()
    partial = shard_path(out / "submission.partial.csv", args.shard)
    done, scored = read_partial(partial) if args.resume else (OrderedDict(), set())
    if args.resume:
        print(f"--resume: {len(done)} images done in {partial}" if done else f"--resume: no {partial}: all images")
    elif partial.exists():
        print(f"warning: {partial} holds the rows of a stopped run: this run predicts every image again (--resume "
              "continues it)", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    saved = start_partial(partial, done, scored)
    try:
        for i, image_id in enumerate(tqdm(image_ids, desc="predict", unit="img", file=sys.stdout, mininterval=5)):
            overlay_name = Path(image_id).stem + ".jpg" if args.overlays < 0 or i < args.overlays else None
            if image_id in done:  # --resume: predicted by the stopped run; its rows (and overlay) kept, scored again
                rows += [(image_id, rle) for rle in done[image_id]]
                if image_id in scored and truth.get(image_id) is not None:
                    scores.add([rle_decode(r).astype(bool) for r in done[image_id] if r],
                               [rle_decode(r).astype(bool) for r in truth[image_id]], (SIZE, SIZE), image_id)
                overlaid |= {overlay_name} if overlay_name else set()
                continue
            result = predict_image(images_dir, image_id, truth.get(image_id), model, args.how, args.flips, rule,
                                   out / "result-image" / overlay_name if overlay_name else None)
            rows += result.rows
            for msg in result.problems:
                problems.append(msg)
                report(msg)
            if result.ships is not None:
                n_done, elapsed = n_done + 1, elapsed + result.seconds
                overlaid |= {overlay_name} if overlay_name else set()
            if result.true_ships is not None:
                scores.add(result.ships, result.true_ships, (SIZE, SIZE), image_id)
            csv.writer(saved).writerows(partial_rows(image_id, [r[1] for r in result.rows],
                                                     result.true_ships is not None))
            saved.flush()
    except KeyboardInterrupt:  # Ctrl-C: what is done is on disk already
        saved.close()
        print(f"interrupted: the rows of {len({r[0] for r in rows})} images are in {partial}; run the same command "
              "with --resume to continue", file=sys.stderr)
        sys.exit(130)
    saved.close()
    return rows, scores, n_done, elapsed, overlaid


def remove_stale_outputs(out: Path, args: argparse.Namespace, truth: dict, image_ids: list[str],
                         all_ids: list[str], overlaid: set[str]) -> list[str]:
    """Remove what an earlier run left in ``out`` that this run's outputs do not replace, once they are written:
    ``scores.csv`` when this run has no ground truth, and the overlays in ``result-image/`` that are not of this
    run (of images it does not predict, or beyond ``--overlays``), except those of images another ``--shard``
    predicts. Returns the names removed."""
    removed = []
    scores_csv = shard_path(out / "scores.csv", args.shard)
    if not truth and scores_csv.exists():
        scores_csv.unlink()
        removed.append(scores_csv.name)
    others = {Path(i).stem + ".jpg" for i in all_ids} - {Path(i).stem + ".jpg" for i in image_ids}
    folder = out / "result-image"
    for path in sorted(folder.glob("*.jpg")) if folder.is_dir() else []:
        if path.name not in overlaid and path.name not in others:
            path.unlink()
            removed.append(f"result-image/{path.name}")
    return removed


def write_outputs(args: argparse.Namespace, rows: list, result: dict, scores: Scores | None,
                  settings: dict) -> Path:
    """submission.csv, scores.csv (``scores`` given: with ground truth), metrics.json and test_config.json of
    this run (shard), each written atomically; the partial table removed last. Returns the submission's path."""
    out = Path(args.out)
    submission = shard_path(out / "submission.csv", args.shard)
    with atomic_write(submission, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ImageId", "EncodedPixels"])
        writer.writerows(rows)
    if scores is not None:
        with atomic_write(shard_path(out / "scores.csv", args.shard), "w", newline="") as f:
            csv.writer(f).writerows([SCORE_COLUMNS, *scores.image_rows])
    write_json(shard_path(out / "metrics.json", args.shard), result)
    write_json(shard_path(out / "test_config.json", args.shard), settings)
    shard_path(out / "submission.partial.csv", args.shard).unlink(missing_ok=True)
    return submission


def main(argv=None) -> dict:
    args = parse_args(argv)  # before TensorFlow is imported: --help and a wrong option answer at once
    why = model_file_problem(args.model)  # a missing or empty model file: said at once, without TensorFlow
    if why:
        sys.exit(why)
    quiet_tensorflow()
    from airbus_ships.runtime import setup_device

    setup_device(args.device, args.threads)
    model, rule, rule_source = load_model(args)
    start = time.perf_counter()
    images_dir, csv_path, truth, image_ids, all_ids, problems = select_images(args)
    where = f"; shard {args.shard[0]}/{args.shard[1]}" if args.shard else ""
    where += f"; {args.subset} images of {args.split}" if args.split else ""
    print(f"{len(image_ids)} images from {images_dir}{where}; ground truth: {csv_path if truth else 'none'} "
          f"(listed in {time.perf_counter() - start:.1f} s); {args.model}, {args.how} prediction"
          f"{' with test-time flips' if args.flips else ''}, {rule}")

    rows, scores, n_done, elapsed, overlaid = predict_all(args, model, rule, images_dir, image_ids, truth, problems)
    result = {"images_predicted": n_done, "images_per_second": n_done / elapsed if elapsed else None,
              "prediction": args.how, "flips": args.flips, "rule": vars(rule), "problems": problems}
    if truth:
        result.update(scores.summary())
    settings = {**{k: v for k, v in vars(args).items() if k != "shard"},
                "shard": list(args.shard) if args.shard else None, "images_dir": str(images_dir),
                "ground_truth": str(csv_path) if truth else None, "images": len(image_ids),
                "network_stride": network_stride(model), "rule": vars(rule), "rule_source": rule_source}
    submission = write_outputs(args, rows, result, scores if truth else None, settings)
    removed = remove_stale_outputs(Path(args.out), args, truth, image_ids, all_ids, overlaid)
    print(f"wrote {submission} ({len(rows)} rows, {n_done} images), {len(overlaid)} overlays in "
          f"{Path(args.out) / 'result-image'}" + (f"; removed {len(removed)} output(s) of an earlier run there "
                                                   f"({', '.join(removed[:3])}{', ...' if len(removed) > 3 else ''})"
                                                   if removed else ""))
    if problems:
        print(f"{len(problems)} problem(s) reported above; the other images were processed")
    if truth and scores.f2:
        print("\n".join(summary_lines(scores.summary(), result["images_per_second"])))
    return result


if __name__ == "__main__":
    main()
