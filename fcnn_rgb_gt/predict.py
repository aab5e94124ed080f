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
the file's name without its suffix, a pair folder's name; where inputs share it, the name with its suffix, then
the path below their common folder, "/" -> "__"), plus ``predictions.csv``: one row per input given (a bad one
too), in sorted order of the path, with its ``status``: predicted, failed (``error`` says why), "earlier run,
not reached" or "stopped while writing". ``--shard I/N`` (default RANK/WORLD_SIZE under torchrun) processes
every N-th input of the sorted list and writes ``predictions.shard-I-of-N.csv``; ``python -m common.shard merge
<out>/predictions.csv`` joins the N shard files into exactly the file one worker writes.

Every image is read and checked before its files are written, and every file is written atomically. A bad input
(unreadable, a folder without images, smaller than the network's 14 px field of view, a ground truth that does
not fit) is one line naming it and its CSV row; the others still run; the exit status is then 2. The CSV is
rewritten after every image: it keeps an earlier run's rows of the images not reached yet (their folders still
hold that run's files), so a stopped or killed batch loses nothing complete, and running it again finishes it.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from common.config import HelpFormatter
from common.io import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    atomic_write,
    list_images,
    read_rgb,
    remove_leftovers,
    save_image,
    write_json,
)
from common.shard import add_shard_argument, select_shard, shard_path
from common.tiling import MAX_TILE
from fcnn_rgb_gt.config import (
    CLEAN_RADIUS,
    DEFAULT_RUNS,
    DEVICES,
    MAX_SHARE,
    MIN_PREDICT_SIDE,
    RECEPTIVE_FIELD,
    CheckpointError,
    over_memory_limit,
)

# no timings: shards merge into exactly one worker's file
CSV_COLUMNS = ["image", "name", "status", "error", "width", "height", "threshold", "building_fraction", "gt", "iou",
               "f1", "precision", "recall", "accuracy", "warnings"]
OUTPUT_FILES = ("predictions.jpg", "predictions_mask.png", "predictions_overlay.jpg", "predictions_metrics.json")
# the status of a row: predicted by this run, failed in this run (error says why), the earlier run's row of an
# image this run has not reached yet (a stopped run; its outputs are still the earlier run's), or the image whose
# files were being written when the run stopped (some may be the earlier run's)
PREDICTED, FAILED, EARLIER, WRITING = "predicted", "failed", "earlier run, not reached", "stopped while writing"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
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
    p.add_argument("--clean-radius", type=int, default=CLEAN_RADIUS,
                   help="clean-up of the mask: an opening then a closing with a (2r+1) px square (drops specks and "
                        "fills holes smaller than that); 0: none. Set for a ground resolution like the training "
                        "image's: use less on coarser images")
    p.add_argument("--max-share", type=float, default=MAX_SHARE,
                   help="on an image where the threshold would mark more than this many times the training image's "
                        "building share (stored in the checkpoint), raise it to mark that share; 0: no limit")
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
    if args.clean_radius < 0:
        p.error(f"--clean-radius must be >= 0 (0 = no clean-up), got {args.clean_radius}")
    if not args.max_share >= 0:  # NaN too
        p.error(f"--max-share must be >= 0 (0 = no limit), got {args.max_share}")
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
    """One input. ``key`` (the path as given) orders and shards the inputs and is the CSV's first column; ``name``
    is its output sub-folder when there are several ("" for a path that is no file: it gets none); ``problem``:
    why it cannot be predicted, known before reading it (a folder given without any image in it)."""
    key: str
    gt: str = ""
    name: str = ""
    problem: str = ""


def _names(paths: list[Path]) -> list[str]:
    """Output folder names, each from its own path: the file's name without its suffix (a pair folder's name);
    where inputs share that, the name with its suffix (a.png, a.jpg); where they still do, the path below the
    common folder of those inputs, "/" -> "__". So an input's name depends on no other input but those that
    share its name. Raises ImageReadError if two names are still the same (their files would overwrite each
    other)."""
    names = [p.name if p.is_dir() else p.stem for p in paths]
    for rename in (lambda group: [p.name for p in group], _below_common_folder):
        groups = defaultdict(list)
        for i, name in enumerate(names):
            groups[name].append(i)
        for index in (ix for ix in groups.values() if len(ix) > 1):
            for i, name in zip(index, rename([paths[i] for i in index])):
                names[i] = name
    seen: dict[str, Path] = {}
    for path, name in zip(paths, names):
        if name in seen:
            raise ImageReadError(path, f"its output folder name {name!r} is also that of {seen[name]}; rename one")
        seen[name] = path
    return names


def _below_common_folder(paths: list[Path]) -> list[str]:
    root = os.path.commonpath([str(p.resolve().parent) for p in paths])
    return [os.path.relpath(p.resolve(), root).replace(os.sep, "__") for p in paths]


def _unique(paths) -> list[Path]:
    """Each file or folder once (however it is spelled), in first-seen order."""
    first: dict[Path, Path] = {}
    for path in paths:
        first.setdefault(path.resolve(), path)
    return list(first.values())


def collect_inputs(args: argparse.Namespace, train_cfg: dict | None) -> tuple[list[Item], bool]:
    """``(every input, several-images mode)``; the list is the same for every shard (sharding comes after).
    Every path given is an input, a bad one too (read_rgb names what is wrong with it); only existing files get
    output folder names. ``train_cfg``: the checkpoint's training config, whose image is the default input."""
    if args.data:
        dirs = _unique(map(Path, args.data))
        named = [d for d in dirs if (d / "rgb.png").is_file()]
        names = dict(zip(named, _names(named)))
        items = [Item(str(d / "rgb.png"), str(d / "gt.png") if (d / "gt.png").exists() else "", names.get(d, ""))
                 for d in dirs]
        return items, len(items) > 1 or args.shard is not None
    if args.image:
        files, empty, folders = [], [], False
        for path in map(Path, args.image):
            found = list_images(path) if path.is_dir() else [path]
            folders |= path.is_dir()
            files += found
            empty += [] if found else [path]
        files = _unique(files)
        named = [f for f in files if f.is_file()]
        names = dict(zip(named, _names(named)))
        gts = dict(zip(map(Path, args.image), args.gt))
        items = [Item(str(f), str(gts.get(f, "")), names.get(f, "")) for f in files]
        items += [Item(str(d), problem=f"a folder without any image file in it ({' '.join(IMAGE_EXTENSIONS)})")
                  for d in empty]
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


def predict_one(model, item: Item, out: Path, threshold: float, args: argparse.Namespace, device,
                before_write=None, train_stats: dict | None = None) -> dict:
    """Read and check ``item``, predict it, write its files into ``out`` (calling ``before_write()`` first, if
    given); return its metrics. ``train_stats``: the training image's statistics (a warning on stderr and in the
    result when the image differs from it in a way the model cannot handle)."""
    from tqdm import tqdm

    from common.metrics import segmentation_report
    from fcnn_rgb_gt.data import read_gt
    from fcnn_rgb_gt.infer import decide, input_warnings, predict_probs

    if item.problem:
        raise ImageReadError(item.key, item.problem)
    image = read_rgb(item.key)  # RGBA: alpha dropped
    if min(image.shape[:2]) < MIN_PREDICT_SIDE:
        raise ImageReadError(item.key, f"image is {image.shape[1]}x{image.shape[0]} px, too small to predict: the "
                                       f"network looks at {RECEPTIVE_FIELD}x{RECEPTIVE_FIELD} px around each pixel "
                                       f"(at least {MIN_PREDICT_SIDE} px a side)")
    gt = read_gt(item.gt, image.shape[:2], item.key).astype(bool) if item.gt else None
    t0 = time.perf_counter()
    bar = partial(tqdm, desc="tiles", leave=False, disable=not sys.stderr.isatty())
    prob = predict_probs(model, image, device, args.tile, args.overlap, args.batch_size, progress=bar)
    prior = (train_stats or {}).get("building_share", 0.0)
    pred, used = decide(prob, threshold, args.clean_radius, prior, args.max_share)
    seconds = time.perf_counter() - t0
    warnings = input_warnings(image, float(pred.mean()), train_stats)
    if used > threshold:  # the share limit acted
        warnings.append(f"at the threshold {threshold:g} it would be marked more than {args.max_share:g}x the "
                        f"training image's building share ({prior:.1%}): threshold raised to {used:.3f}")
    for w in warnings:
        print(f"warning: {item.key}: {w}", file=sys.stderr, flush=True)
    result = {"image": item.key, "name": item.name, "size": [image.shape[1], image.shape[0]],
              "threshold": round(used, 4) if used > threshold else threshold, "seconds": round(seconds, 3),
              "building_fraction": round(float(pred.mean()), 4),
              "warnings": "; ".join(warnings)}
    if gt is not None:
        rep = segmentation_report(pred, gt)
        result.update(gt=item.gt, **{k: round(v, 4) for k, v in rep.items()})

    mask = np.where(pred, 0, 255).astype(np.uint8)  # gt.png encoding: 0 = building
    if before_write is not None:
        before_write()
    remove_leftovers(out, OUTPUT_FILES)
    # an earlier prediction's metrics (another image, or one with --gt) must not stay beside this one's files
    (out / "predictions_metrics.json").unlink(missing_ok=True)
    save_image(out / "predictions.jpg", mask, quality=95)
    save_image(out / "predictions_mask.png", mask)
    save_image(out / "predictions_overlay.jpg", overlay(image, pred, gt), quality=90)
    if gt is not None:
        write_json(out / "predictions_metrics.json", result)
    return result


def report(r: dict, prefix: str = "") -> None:
    print(f"{prefix}{r['image']} {r['size'][0]}x{r['size'][1]}: {r['building_fraction']:.1%} building "
          f"(threshold {r['threshold']}), {r['seconds']:.2f}s", flush=True)
    if "iou" in r:
        print(f"building IoU {r['iou']:.4f}  F1 {r['f1']:.4f}  pixel accuracy {r['accuracy']:.4f}  "
              f"(precision {r['precision']:.4f}, recall {r['recall']:.4f})", flush=True)


class Table:
    """The per-image CSV of a batch, rewritten (atomically) after every image: this run's rows so far and, for
    the images it has not reached yet, the earlier run's rows (status "earlier run, not reached": their output
    folders still hold that run's files). So the table describes the output folders at every moment, after a
    kill too, and a complete run leaves exactly its own rows, in sorted order of the image path."""

    def __init__(self, path: Path, keys: list[str]):
        self.path, self.keys = path, keys
        earlier = _earlier_rows(path)
        self.rows = {k: {**earlier[k], "status": EARLIER} for k in keys if k in earlier}

    def put(self, row: dict) -> None:
        self.rows[row["image"]] = row
        remove_leftovers(self.path.parent, [self.path.name])
        with atomic_write(self.path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
            w.writeheader()
            w.writerows(self.rows[k] for k in self.keys if k in self.rows)


def _earlier_rows(path: Path) -> dict[str, dict]:
    """An earlier run's rows in ``path`` by image path; {} when there is none (or it cannot be read: said)."""
    if not path.is_file():
        return {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return {r["image"]: r for r in csv.DictReader(f) if r.get("image")}
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        print(f"warning: {path}: the earlier run's table is unreadable ({err}); this run's replaces it",
              file=sys.stderr)
        return {}


def result_row(r: dict) -> dict:
    return {**r, "status": PREDICTED, "width": r["size"][0], "height": r["size"][1]}


def remove_outputs(folder: Path) -> None:
    """An image that failed now: the files an earlier run predicted for it no longer describe it."""
    for name in OUTPUT_FILES:
        (folder / name).unlink(missing_ok=True)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def run(args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    """Predict every input of this shard (PyTorch is imported here, after the options are parsed); return
    ``(results, errors)``."""
    from fcnn_rgb_gt.infer import load_checkpoint, resolve_device, set_threads

    set_threads(args.threads)
    device = resolve_device(args.device)
    model, ckpt = load_checkpoint(args.checkpoint, device)
    threshold = args.threshold if args.threshold >= 0 else float(ckpt.get("threshold", 0.5))
    items, several = collect_inputs(args, ckpt.get("config"))
    out = Path(args.out or Path(args.checkpoint).parent)
    mine = select_shard(items, args.shard, key=lambda it: it.key)
    table = None
    if several:
        shard = "{}/{}".format(*args.shard) if args.shard else "all"
        table = Table(shard_path(args.csv or out / "predictions.csv", args.shard), [it.key for it in mine])
        print(f"{len(mine)} of {len(items)} inputs (shard {shard}) -> {out}", flush=True)
    results, errors = [], []
    for i, item in enumerate(mine, 1):
        folder = out / item.name if several else out
        writing = partial(table.put, {"image": item.key, "name": item.name, "status": WRITING}) if table else None
        try:
            r = predict_one(model, item, folder, threshold, args, device, before_write=writing,
                            train_stats=ckpt.get("input_stats"))
        except (ImageReadError, MemoryError) as err:  # named, and the rest of the batch goes on
            reason = str(err) if isinstance(err, ImageReadError) else f"{item.key}: not enough memory to predict it"
            errors.append(reason)
            print(f"error: {reason}", file=sys.stderr, flush=True)
            if table is not None:
                if item.name:
                    remove_outputs(folder)
                table.put({"image": item.key, "name": item.name, "status": FAILED, "error": reason})
            continue
        report(r, f"[{i}/{len(mine)}] " if several else "")
        results.append(r)
        if table is None:
            print(f"wrote predictions.jpg, predictions_mask.png, predictions_overlay.jpg to {out}")
        else:
            table.put(result_row(r))
    if table is not None:
        print(f"wrote {table.path}: {len(results)} predicted, {len(errors)} failed")
    return results, errors


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        _, errors = run(args)
    except ValueError as err:  # CheckpointError ("<file>: <reason>"), --device cuda without CUDA
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # an output that cannot be written (a full disk, no permission)
        print(f"error: cannot write the outputs: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the images done so far are written (with several, predictions.csv lists them); run "
              "the same command again for the rest", file=sys.stderr)
        return 130
    return 2 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
