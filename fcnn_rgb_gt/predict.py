"""Predict buildings on images of any size with the trained FCN, in overlapping 256x256 tiles blended together.

    python fcnn_rgb_gt/predict.py                                   # the training image of runs/fcnn/best.pt
    python fcnn_rgb_gt/predict.py --image new.png --gt new_gt.png   # any image; prints IoU, F1, accuracy
    python fcnn_rgb_gt/predict.py --image a.png b.png photos/ --out runs/batch        # several images, folders
    python fcnn_rgb_gt/predict.py --data ../shared/data/fcnn/extra/* --out runs/extra   # pair folders (rgb+gt)
    python fcnn_rgb_gt/predict.py --data ... --out runs/extra --shard 0/2   # worker 0 of 2 (then merge, below)

Writes into ``--out`` (default: the checkpoint's folder), for one image:
    predictions.jpg          the predicted mask in gt.png's encoding (black = building, white = background)
    predictions_mask.png     the same mask, lossless (0 = building, 255 = background, like gt.png)
    predictions_overlay.jpg  the image with predicted buildings tinted red (and missed ones blue with --gt)
    predictions_metrics.json building IoU, F1, precision, recall, pixel accuracy (with a ground truth)
With several images (or a folder, or --shard) the same files go into ``--out/<name>/`` per image (``<name>``:
its path below the inputs' common folder, "/" -> "__"), plus ``predictions.csv``: one row per image, in sorted
order of the image path. ``--shard I/N`` (default RANK/WORLD_SIZE under torchrun) processes every N-th image
of the sorted list and writes ``predictions.shard-I-of-N.csv``; ``python -m common.shard merge
<out>/predictions.csv`` joins the N shard files into exactly the file one worker writes.
Every image is read and checked before its files are written, and every file is written atomically; a batch
removes an earlier run's CSV when it starts and writes its own at the end (a stopped batch leaves none); a bad
image is reported (one line, naming the file) and the others still run; the exit status is then 2.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common.io import ImageReadError, atomic_write, list_images, read_rgb, save_image, write_json
from common.metrics import segmentation_report
from common.shard import add_shard_argument, select_shard, shard_path
from common.tiling import MAX_TILE
from fcnn_rgb_gt.data import DEFAULT_RUNS, read_gt
from fcnn_rgb_gt.infer import (
    DEVICES,
    CheckpointError,
    load_checkpoint,
    over_memory_limit,
    predict_probs,
    resolve_device,
    set_threads,
)

CSV_COLUMNS = ["image", "name", "width", "height", "threshold", "building_fraction", "gt", "iou", "f1",
               "precision", "recall", "accuracy"]  # no timings: shards merge into exactly one worker's file


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default=str(DEFAULT_RUNS / "best.pt"), help="trained model (train.py output)")
    p.add_argument("--image", nargs="+", default=[], metavar="PATH",
                   help="image(s) or folder(s) of images to segment; default: the checkpoint's training image")
    p.add_argument("--gt", nargs="+", default=[], metavar="PATH",
                   help="ground truth per --image file, same order (0 = building, 255 = background): IoU/F1/accuracy")
    p.add_argument("--data", nargs="+", default=[], metavar="DIR",
                   help="folder(s) holding rgb.png (and gt.png): shorthand for --image/--gt")
    p.add_argument("--out", default="", help="output folder; default: the checkpoint's folder")
    p.add_argument("--csv", default="", help="per-image CSV with several images; default <out>/predictions.csv")
    add_shard_argument(p)
    p.add_argument("--tile", type=int, default=MAX_TILE, help="tile side, <= 256 (the memory limit)")
    p.add_argument("--overlap", type=int, default=None,
                   help="pixels shared by neighbouring tiles (blended), at most half the tile; default 32, or half "
                        "the tile below 64 px; odd values are rounded down to even (2x2 pooling alignment)")
    p.add_argument("--batch-size", type=int, default=1,
                   help="tiles per forward pass, for smaller tiles on an accelerator; batch-size x tile^2 must stay "
                        "within 256^2 pixels (the brief's memory limit: one 256x256x3 input); on a CPU 1 is fastest")
    p.add_argument("--threshold", type=float, default=-1.0,
                   help="building probability threshold; < 0: the one stored in the checkpoint")
    p.add_argument("--device", default="auto", choices=DEVICES, help="auto: cuda when available, else cpu")
    p.add_argument("--threads", type=int, default=0, help="CPU threads; 0 = min(2, CPU count)")
    args = p.parse_args(argv)
    if not 2 <= args.tile <= MAX_TILE:
        p.error(f"--tile must be in 2..{MAX_TILE}, got {args.tile}")
    if args.overlap is None:  # a smaller --tile alone must not be refused for the default overlap
        args.overlap = min(32, args.tile // 2)
    if not 0 <= args.overlap <= args.tile // 2:
        p.error(f"--overlap must be in 0..{args.tile // 2} (half the tile), got {args.overlap}")
    if args.batch_size < 1:
        p.error(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.threads < 0:
        p.error(f"--threads must be >= 0 (0 = automatic), got {args.threads}")
    if not args.threshold <= 1:  # NaN too: it was silently the checkpoint's threshold
        p.error(f"--threshold must be <= 1 (< 0: the checkpoint's), got {args.threshold}")
    if over_memory_limit(args.batch_size, args.tile):
        p.error(over_memory_limit(args.batch_size, args.tile))
    if args.gt and (args.data or len(args.gt) != len(args.image) or any(Path(i).is_dir() for i in args.image)):
        p.error("--gt needs one file per --image file (not with folders or --data)")
    if args.image and args.data:  # --data took over and the --image files were silently not predicted
        p.error("--image and --data are two ways to name the inputs: give one of them")
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        p.error(f"--out {args.out}: is a file, not a folder")
    return args


@dataclass(frozen=True)
class Item:
    """One input. ``key`` (the image path as given) orders and shards the inputs and is the CSV's first column;
    ``name`` is its output sub-folder when there are several."""
    key: str
    gt: str
    name: str


def _names(paths: list[Path], drop_suffix: bool = False) -> list[str]:
    """Output names: each path below the common folder of the paths' folders, "/" -> "__"; with ``drop_suffix``
    without its suffix where that stays unique (a.png and a.jpg keep theirs). Raises ImageReadError if two
    inputs would still share a name (their files would overwrite each other)."""
    root = os.path.commonpath([str(p.resolve().parent) for p in paths])
    names = [os.path.relpath(p.resolve(), root).replace(os.sep, "__") for p in paths]
    if drop_suffix:
        stems = [n[:-len(Path(n).suffix)] if Path(n).suffix else n for n in names]
        count = Counter(stems)
        names = [stem if count[stem] == 1 else name for stem, name in zip(stems, names)]
    seen: dict[str, Path] = {}
    for path, name in zip(paths, names):
        if name in seen:
            raise ImageReadError(path, f"its output folder name {name!r} is also that of {seen[name]}; rename one")
        seen[name] = path
    return names


def _unique(paths) -> list[Path]:
    """Each file or folder once (however it is spelled), in first-seen order."""
    first: dict[Path, Path] = {}
    for path in paths:
        first.setdefault(path.resolve(), path)
    return list(first.values())


def collect_inputs(args: argparse.Namespace, train_cfg: dict | None) -> tuple[list[Item], bool]:
    """``(every input, several-images mode)``; the list is the same for every shard (sharding comes after).
    ``train_cfg``: the checkpoint's training config, whose image is the default input."""
    if args.data:
        dirs = _unique(map(Path, args.data))
        items = [Item(str(d / "rgb.png"), str(d / "gt.png") if (d / "gt.png").exists() else "", n)
                 for d, n in zip(dirs, _names(dirs))]
        return items, len(items) > 1 or args.shard is not None
    if args.image:
        files, folders = [], False
        for path in map(Path, args.image):
            folders |= path.is_dir()
            files += list_images(path) if path.is_dir() else [path]
        gts = dict(zip(map(Path, args.image), args.gt))
        files = _unique(files)
        items = [Item(str(f), str(gts.get(f, "")), n) for f, n in zip(files, _names(files, drop_suffix=True))]
        return items, len(items) > 1 or folders or args.shard is not None
    # the default: the training image and its gt
    if not train_cfg or "data" not in train_cfg:
        raise CheckpointError(f"{args.checkpoint}: names no training image (no training config in it); "
                              "give --image or --data")
    image = train_cfg.get("rgb") or str(Path(train_cfg["data"]) / "rgb.png")
    gt = train_cfg.get("gt") or str(Path(train_cfg["data"]) / "gt.png")
    return [Item(image, gt if Path(gt).exists() else "", "")], args.shard is not None


def overlay(image: np.ndarray, pred: np.ndarray, gt: np.ndarray | None = None) -> np.ndarray:
    """Image with predictions tinted red (with ``gt``: true positives red, false positives yellow, misses blue)."""
    out = image.astype(np.float32)
    colours = [(pred, (255, 0, 0))] if gt is None else \
        [(pred & gt, (255, 0, 0)), (pred & ~gt, (255, 220, 0)), (~pred & gt, (0, 90, 255))]
    for where, colour in colours:
        out[where] = 0.55 * out[where] + 0.45 * np.array(colour, np.float32)
    return out.astype(np.uint8)


def predict_one(model, item: Item, out: Path, threshold: float, args: argparse.Namespace, device) -> dict:
    """Read and check ``item``, predict it, write its files into ``out``; return its metrics."""
    image = read_rgb(item.key)  # RGBA: alpha dropped
    gt = read_gt(item.gt, image.shape[:2], item.key).astype(bool) if item.gt else None
    t0 = time.perf_counter()
    bar = partial(tqdm, desc="tiles", leave=False, disable=not sys.stderr.isatty())
    prob = predict_probs(model, image, device, args.tile, args.overlap, args.batch_size, progress=bar)
    seconds = time.perf_counter() - t0
    pred = prob >= threshold
    result = {"image": item.key, "size": [image.shape[1], image.shape[0]], "threshold": threshold,
              "seconds": round(seconds, 3), "building_fraction": round(float(pred.mean()), 4)}
    if gt is not None:
        rep = segmentation_report(pred, gt)
        result.update(gt=item.gt, **{k: round(v, 4) for k, v in rep.items()})

    mask = np.where(pred, 0, 255).astype(np.uint8)  # gt.png encoding: 0 = building
    # an earlier prediction's metrics (another image, or one with --gt) must not stay beside this one's files
    (out / "predictions_metrics.json").unlink(missing_ok=True)
    save_image(out / "predictions.jpg", mask, quality=95)
    save_image(out / "predictions_mask.png", mask)
    save_image(out / "predictions_overlay.jpg", overlay(image, pred, gt), quality=90)
    if gt is not None:
        write_json(out / "predictions_metrics.json", result)
    return result


def report(r: dict) -> None:
    print(f"{r['image']} {r['size'][0]}x{r['size'][1]}: {r['building_fraction']:.1%} building "
          f"(threshold {r['threshold']}), {r['seconds']:.2f}s")
    if "iou" in r:
        print(f"building IoU {r['iou']:.4f}  F1 {r['f1']:.4f}  pixel accuracy {r['accuracy']:.4f}  "
              f"(precision {r['precision']:.4f}, recall {r['recall']:.4f})")


def write_csv(path: Path, rows: list[dict]) -> None:
    with atomic_write(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({**r, "width": r["size"][0], "height": r["size"][1]})


def run(args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    """Predict every input of this shard; return (results, error lines)."""
    set_threads(args.threads)
    device = resolve_device(args.device)
    model, ckpt = load_checkpoint(args.checkpoint, device)
    threshold = args.threshold if args.threshold >= 0 else float(ckpt.get("threshold", 0.5))
    items, several = collect_inputs(args, ckpt.get("config"))
    out = Path(args.out or Path(args.checkpoint).parent)
    mine = select_shard(items, args.shard, key=lambda it: it.key)
    csv_path = shard_path(args.csv or out / "predictions.csv", args.shard) if several else None
    if several:
        shard = "{}/{}".format(*args.shard) if args.shard else "all"
        print(f"{len(mine)} of {len(items)} images (shard {shard}) -> {out}")
        # an earlier run's table must not outlive this run's first new outputs (a kill, an error before the end)
        csv_path.unlink(missing_ok=True)
    results, errors = [], []
    for item in mine:
        try:
            r = predict_one(model, item, out / item.name if several else out, threshold, args, device)
        except ImageReadError as err:
            errors.append(f"error: {err}")
            print(errors[-1], file=sys.stderr)
            continue
        report(r)
        if not several:
            print(f"wrote predictions.jpg, predictions_mask.png, predictions_overlay.jpg to {out}")
        results.append({**r, "name": item.name})
    if several:
        write_csv(csv_path, results)
        print(f"wrote {csv_path} ({len(results)} rows)")
    return results, errors


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        _, errors = run(args)
    except ValueError as err:  # CheckpointError and ImageReadError ("<file>: <reason>"), --device cuda without CUDA
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 2 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
