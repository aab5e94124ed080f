"""Predict buildings on an image of any size with the trained FCN, in overlapping 256x256 tiles blended together.

    python fcnn_rgb_gt/predict.py                                   # the training image of runs/fcnn/best.pt
    python fcnn_rgb_gt/predict.py --image new.png --gt new_gt.png   # any image; prints IoU, F1, accuracy

Writes into ``--out`` (default: the checkpoint's folder):
    predictions.jpg          the predicted mask in gt.png's encoding (black = building, white = background)
    predictions_mask.png     the same mask, lossless (0 = building, 255 = background, like gt.png)
    predictions_overlay.jpg  the image with predicted buildings tinted red (and missed ones blue with --gt)
    predictions_metrics.json building IoU, F1, precision, recall, pixel accuracy (with --gt)
Every input is read and checked before anything is written, and every file is written atomically.
"""
from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common.io import ImageReadError, read_rgb, save_image, write_json
from common.metrics import segmentation_report
from common.tiling import MAX_TILE
from fcnn_rgb_gt.data import DEFAULT_RUNS, read_gt
from fcnn_rgb_gt.infer import CheckpointError, load_checkpoint, predict_probs, resolve_device, set_threads


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default=str(DEFAULT_RUNS / "best.pt"), help="trained model (train.py output)")
    p.add_argument("--image", default="", help="image to segment; default: the checkpoint's training image")
    p.add_argument("--gt", default="", help="ground truth (0 = building, 255 = background): print IoU/F1/accuracy")
    p.add_argument("--data", default="", help="folder with rgb.png (and gt.png): shorthand for --image/--gt")
    p.add_argument("--out", default="", help="output folder; default: the checkpoint's folder")
    p.add_argument("--tile", type=int, default=MAX_TILE, help="tile side, <= 256 (the memory limit)")
    p.add_argument("--overlap", type=int, default=32, help="pixels shared by neighbouring tiles (blended)")
    p.add_argument("--batch-size", type=int, default=1,
                   help="tiles per forward pass; 1 = one 256x256x3 input at a time (the strict limit; as fast on CPU)")
    p.add_argument("--threshold", type=float, default=-1.0,
                   help="building probability threshold; < 0: the one chosen on validation at training")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, default=0, help="CPU threads; 0 = min(2, CPU count)")
    p.add_argument("--seed", type=int, default=0, help="unused by inference (deterministic); kept for symmetry")
    args = p.parse_args(argv)
    if not 2 <= args.tile <= MAX_TILE:
        p.error(f"--tile must be in 2..{MAX_TILE}, got {args.tile}")
    return args


def overlay(image: np.ndarray, pred: np.ndarray, gt: np.ndarray | None = None) -> np.ndarray:
    """Image with predictions tinted red (with ``gt``: true positives red, false positives yellow, misses blue)."""
    out = image.astype(np.float32)
    colours = [(pred, (255, 0, 0))] if gt is None else \
        [(pred & gt, (255, 0, 0)), (pred & ~gt, (255, 220, 0)), (~pred & gt, (0, 90, 255))]
    for where, colour in colours:
        out[where] = 0.55 * out[where] + 0.45 * np.array(colour, np.float32)
    return out.astype(np.uint8)


def run(args: argparse.Namespace) -> dict:
    set_threads(args.threads)
    device = resolve_device(args.device)
    model, ckpt = load_checkpoint(args.checkpoint, device)
    train_cfg = ckpt["config"]
    image_path = args.image or (str(Path(args.data) / "rgb.png") if args.data else "") or \
        train_cfg["rgb"] or str(Path(train_cfg["data"]) / "rgb.png")
    gt_path = args.gt or (str(Path(args.data) / "gt.png") if args.data else "")
    if not args.image and not args.gt and not args.data:  # the default: the training image and its gt
        gt_path = train_cfg["gt"] or str(Path(train_cfg["data"]) / "gt.png")
        gt_path = gt_path if Path(gt_path).exists() else ""
    image = read_rgb(image_path)  # RGBA: alpha dropped
    gt = read_gt(gt_path, image.shape[:2], image_path).astype(bool) if gt_path else None
    threshold = args.threshold if args.threshold >= 0 else float(ckpt.get("threshold", 0.5))

    t0 = time.perf_counter()
    bar = partial(tqdm, desc="tiles", leave=False, disable=not sys.stderr.isatty())
    prob = predict_probs(model, image, device, args.tile, args.overlap, args.batch_size, progress=bar)
    seconds = time.perf_counter() - t0
    pred = prob >= threshold
    result = {"image": image_path, "size": [image.shape[1], image.shape[0]], "threshold": threshold,
              "seconds": round(seconds, 3), "building_fraction": round(float(pred.mean()), 4)}
    if gt is not None:
        rep = segmentation_report(pred, gt)
        result.update(gt=gt_path, **{k: round(v, 4) for k, v in rep.items()})

    out = Path(args.out or Path(args.checkpoint).parent)
    mask = np.where(pred, 0, 255).astype(np.uint8)  # gt.png encoding: 0 = building
    save_image(out / "predictions.jpg", mask, quality=95)
    save_image(out / "predictions_mask.png", mask)
    save_image(out / "predictions_overlay.jpg", overlay(image, pred, gt), quality=90)
    if gt is not None:
        write_json(out / "predictions_metrics.json", result)
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        r = run(args)
    except (ImageReadError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:  # --device cuda without CUDA
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{r['image']} {r['size'][0]}x{r['size'][1]}: {r['building_fraction']:.1%} building "
          f"(threshold {r['threshold']}), {r['seconds']:.2f}s")
    if "iou" in r:
        print(f"building IoU {r['iou']:.4f}  F1 {r['f1']:.4f}  pixel accuracy {r['accuracy']:.4f}  "
              f"(precision {r['precision']:.4f}, recall {r['recall']:.4f})")
    print(f"wrote predictions.jpg, predictions_mask.png, predictions_overlay.jpg to {args.out or Path(args.checkpoint).parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
