"""Anomaly heatmap, binary mask and overlay for every photo of a folder, plus one CSV row per photo.

    python wood_anomaly/predict.py                                   # data/wood/images with runs/wood/model.pt
    python wood_anomaly/predict.py --data ../shared/data/wood --out runs/wood/pred

For every readable photo ``<stem>`` it writes into ``<out>/<stem>/``: ``preds.png`` (binary mask, 255 =
anomalous, full size), ``heatmap.jpg`` (scores in units of the threshold, colour-mapped), ``overlay.jpg`` (photo
with the heatmap and the mask outline) and ``anomaly_map.npy`` (float16 full-size scores, for evaluate.py).
``<out>/predictions.csv`` has one row per photo, in sorted file-name order: ``image, score, label,
anomalous_area_px, anomalous_area_frac, status``; ``<out>/timings.csv`` has ``image, seconds, cpu_seconds``
(kept apart so that the predictions are the same bytes on every run). An unreadable photo gets a row with
``status`` = the reason and no outputs; the others are processed. Exit status 0 unless no photo at all could
be read.

Many workers or machines: ``--shard I/N`` processes every N-th photo of the sorted folder (the default under
``torchrun --nproc_per_node=N`` is RANK/WORLD_SIZE) and writes ``predictions.shard-I-of-N.csv`` (and
timings); the per-photo folders of the shards are disjoint. ``python -m common.shard merge
<out>/predictions.csv`` then writes exactly the file one worker would have written.

Threshold rule (no labels): maps are in units of the training photos' score spread (train.calibrate), and a
pixel is anomalous when it lies ``threshold_spreads`` (default 10) spreads above the training median
(``--threshold`` overrides it). A photo is ``anomalous`` when its mask covers at least
``min_area`` of it (default 2e-5, about 100 pixels of a 5-megapixel photo); its ``score`` is the maximum of
its smoothed map divided by the threshold (> 1 means some pixel passed the threshold).
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from tqdm import tqdm

from common.io import ImageReadError, atomic_write, list_images, read_rgb, save_image
from common.shard import Shard, add_shard_argument, launcher_env, select_shard, shard_path
from common.tiling import Stitcher, TileGrid, tile_grid
from wood_anomaly.data import colour_map, resize, resize_map, tile_feature_batches
from wood_anomaly.model import PatchCore, fuse, knn_distance, standardise
from wood_anomaly.train import DEFAULT_RUNS, TrainConfig, build_model, image_folder, resolve_device


def load_model(path: str | Path, device: torch.device) -> tuple[PatchCore, TrainConfig, dict]:
    """Model, its training config and the checkpoint dict (threshold, statistics) from ``model.pt``."""
    path = Path(path)
    if not path.exists():
        sys.exit(f"{path}: no trained model here; run wood_anomaly/train.py first (or make train-wood)")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    cfg = TrainConfig(**{f.name: ckpt["config"][f.name] for f in fields(TrainConfig) if f.name in ckpt["config"]})
    model = build_model(cfg, device)
    model.set_bank(ckpt["bank"], ckpt["bank_image"], ckpt["image_desc"])
    return model, cfg, ckpt


@torch.no_grad()
def stitched_features(model: PatchCore, small: np.ndarray, cfg: TrainConfig, device: torch.device):
    """Patch features of an (already resized) image computed tile by tile, blended across the tile overlaps
    into one ``(h, w, D)`` float32 map (common.tiling.Stitcher at feature resolution), so that every cell is
    scored once; plus the pixel offset ``(y0, x0)`` of the image inside the map's ``(h*s, w*s)`` pixels."""
    s = model.features.stride
    grid = tile_grid(small.shape[0], small.shape[1], cfg.tile, cfg.overlap)
    if any(v % s for v in (grid.tile, grid.overlap, *grid.padded_shape)):
        raise ValueError(f"tile {grid.tile} and overlap {grid.overlap} must be multiples of the feature stride {s}")
    ph, pw = grid.padded_shape[0] // s, grid.padded_shape[1] // s
    cell_grid = TileGrid(ph, pw, grid.tile // s, grid.overlap // s, 0, 0, (ph, pw),
                         tuple((y // s, x // s) for y, x in grid.origins))
    stitcher = Stitcher(cell_grid, model.features.dim)
    for f, origins in tile_feature_batches(model.features, small, cfg.tile, cfg.overlap, cfg.pad, cfg.batch_size,
                                           device):
        stitcher.add(f.permute(0, 2, 3, 1).float().cpu().numpy(), [(y // s, x // s) for y, x in origins])
    top, left = grid.pad_top // s, grid.pad_left // s  # first cell row/column that holds image pixels
    bottom, right = -(-(grid.pad_top + grid.height) // s), -(-(grid.pad_left + grid.width) // s)
    return (stitcher.result()[top:bottom, left:right],
            (grid.pad_top - top * s, grid.pad_left - left * s))


@torch.no_grad()
def anomaly_map(model: PatchCore, image: np.ndarray, cfg: TrainConfig, device: torch.device, stats: dict,
                full_size: bool = True) -> np.ndarray:
    """``(H, W)`` float32 anomaly scores, in training spreads, of an ``(H, W, 3)`` uint8 photo
    (``full_size=False``: at ``cfg.scale``). ``stats``: the checkpoint's training quantiles (train.calibrate).

    Deep map: patch features are computed tile by tile and stitched into one feature map (a few tens of MB);
    ``cfg.self_patches`` random cells join the memory bank (self-reference), then every cell gets its k-NN
    distance; the map is upsampled to the image and smoothed by ``cfg.sigma``. Colour map:
    data.colour_map. Both are standardised and fused (model.fuse).
    """
    small = resize(image, cfg.scale)
    cells, (y0, x0) = stitched_features(model, small, cfg, device)
    h, w, d = cells.shape
    own = torch.from_numpy(cells.reshape(-1, d)).to(device)
    bank = model.select_bank(own.mean(0))
    if cfg.self_patches > 0:
        gen = torch.Generator().manual_seed(cfg.seed)
        pick = torch.randperm(own.shape[0], generator=gen)[:cfg.self_patches].to(own.device)
        bank = torch.cat([bank, own[pick].to(bank.dtype)])
    dist = knn_distance(own, bank, model.k).reshape(1, 1, h, w)
    s = model.features.stride
    dist = F.interpolate(dist, size=(h * s, w * s), mode="bilinear", align_corners=False)[0, 0].float().cpu().numpy()
    score = dist[y0:y0 + small.shape[0], x0:x0 + small.shape[1]]
    if cfg.sigma > 0:
        score = ndimage.gaussian_filter(score, cfg.sigma)
    score = standardise(score, (stats["deep_q50"], stats["deep_q95"]))
    if cfg.colour_stride > 0:
        colour = colour_map(small, cfg.colour_stride, cfg.colour_patches, cfg.k, cfg.colour_sigma, cfg.seed)
        score = fuse(score, standardise(colour, (stats["colour_q50"], stats["colour_q95"])), cfg.deep_weight)
    return resize_map(score, image.shape[:2]) if full_size else score


def colorize(score: np.ndarray, threshold: float) -> np.ndarray:
    """``(H, W)`` scores -> ``(H, W, 3)`` uint8 'inferno' colours, 0 .. 2 x threshold."""
    from matplotlib import colormaps

    return (colormaps["inferno"](np.clip(score / (2 * threshold), 0, 1))[..., :3] * 255).astype(np.uint8)


def overlay(image: np.ndarray, heat: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Photo blended with the heatmap where it is warm, and the mask outline in cyan."""
    warm = (heat.astype(np.float32).mean(2, keepdims=True) / 255) ** 0.5
    out = image * (1 - 0.6 * warm) + heat * 0.6 * warm
    edge = mask & ~ndimage.binary_erosion(mask, iterations=3)
    out[edge] = (0, 255, 255)
    return out.astype(np.uint8)


def write_outputs(folder: Path, image: np.ndarray, score: np.ndarray, mask: np.ndarray, threshold: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    heat = colorize(score, threshold)
    save_image(folder / "preds.png", mask.astype(np.uint8) * 255)
    save_image(folder / "heatmap.jpg", heat, quality=90)
    save_image(folder / "overlay.jpg", overlay(image, heat, mask), quality=90)
    with atomic_write(folder / "anomaly_map.npy", "wb") as f:
        np.save(f, score.astype(np.float16))


def write_csv(path: Path, rows: list[dict]) -> None:
    with atomic_write(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["image"])
        writer.writeheader()
        writer.writerows(rows)


def predict_folder(model: PatchCore, cfg: TrainConfig, stats: dict, threshold: float, folder: Path, out: Path,
                   device: torch.device, save: bool = True, shard: Shard | None = None) -> list[dict]:
    """Process every image of ``folder`` (of its ``shard`` only, when given), in sorted name order; return one
    row per image and write them to ``out/predictions.csv`` (its shard name), timings to ``out/timings.csv``."""
    rows, timings = [], []
    out.mkdir(parents=True, exist_ok=True)
    for path in tqdm(select_shard(list_images(folder), shard, key=lambda p: p.name), desc="predict", unit="photo"):
        row = {"image": path.name, "score": "", "label": "", "anomalous_area_px": "", "anomalous_area_frac": "",
               "status": "ok"}
        try:
            image = read_rgb(path)
        except ImageReadError as err:
            print(f"skipping unreadable image {err}", file=sys.stderr)
            rows.append({**row, "label": "error", "status": str(err)})
            continue
        t0, c0 = time.perf_counter(), time.process_time()
        score = anomaly_map(model, image, cfg, device, stats)
        mask = score > threshold
        area = int(mask.sum())
        frac = area / mask.size
        if save:
            write_outputs(out / path.stem, image, score, mask, threshold)
        rows.append({**row, "score": f"{score.max() / threshold:.4f}",
                     "label": "anomalous" if frac >= cfg.min_area else "normal",
                     "anomalous_area_px": area, "anomalous_area_frac": f"{frac:.6f}"})
        timings.append({"image": path.name, "seconds": f"{time.perf_counter() - t0:.2f}",
                        "cpu_seconds": f"{time.process_time() - c0:.2f}"})
    write_csv(shard_path(out / "predictions.csv", shard), rows)
    write_csv(shard_path(out / "timings.csv", shard), timings)
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default="data/wood", help="folder of photos, or a folder holding images/")
    p.add_argument("--model", default=str(DEFAULT_RUNS / "model.pt"), help="checkpoint written by train.py")
    p.add_argument("--out", default=str(DEFAULT_RUNS / "pred"), help="output folder")
    p.add_argument("--threshold", type=float, default=0.0, help="pixel threshold; 0: the one stored at training")
    p.add_argument("--seed", type=int, default=0, help="seed of the self-reference patch sample")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, default=2, help="CPU threads")
    add_shard_argument(p)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    device = resolve_device(args.device, args.threads, local_rank=launcher_env()[2])
    model, cfg, ckpt = load_model(args.model, device)
    cfg.seed = args.seed
    threshold = args.threshold or ckpt["threshold"]
    rows = predict_folder(model, cfg, ckpt, threshold, image_folder(args.data), Path(args.out), device,
                          shard=args.shard)
    failed = [r for r in rows if r["status"] != "ok"]
    for r in rows:
        print(f"{r['image']}: {r['label']} (score {r['score'] or '-'}, area {r['anomalous_area_frac'] or '-'})")
    table = shard_path(Path(args.out) / "predictions.csv", args.shard)
    print(f"{len(rows) - len(failed)} photos -> {args.out}/<stem>/, table {table}"
          + (f"; {len(failed)} unreadable (listed in the table)" if failed else ""))
    if rows and len(failed) == len(rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
