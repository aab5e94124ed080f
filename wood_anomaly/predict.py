"""Anomaly heatmap, binary mask and overlay for every photo of a folder, plus one CSV row per photo.

    python wood_anomaly/predict.py              # data/wood/images with runs/wood/model.pt (or runs/wood_demo/'s)
    python wood_anomaly/predict.py --data ../shared/data/wood --out runs/wood/pred

For every photo it writes into ``<out>/<stem>/``: ``preds.png`` (binary mask, 255 = anomalous, full size),
``heatmap.jpg`` (the photo's own score range, colour-mapped, with the threshold contour), ``overlay.jpg``
(photo with the heatmap and the mask outline) and ``anomaly_map.npy`` (float16 full-size scores, for
evaluate.py). Two photos with the same
stem (``board.jpg``, ``board.png``) each get a folder named by the whole file name (``board.jpg/``,
``board.png/``) instead. ``<out>/predictions.csv`` has one row per photo, in sorted file-name order: ``image,
score, margin, label, anomalous_area_px, anomalous_area_frac, status``; ``<out>/timings.csv`` has ``image, seconds,
cpu_seconds`` (kept apart so that the predictions are the same bytes on every run), ``<out>/threshold.json`` the
threshold used and where it comes from (and the fit's band, share and rule). A photo that cannot be
read or processed (also a folder or a dead link named like a photo, and a photo too small to score) gets a
row with label ``error`` and ``status`` = the file and the reason, and no outputs in its folder (those of an
earlier run are removed, so none pass for its result); the others are processed.

Stops and reruns: the tables are saved (atomically) after every photo and when the run stops early (an error,
Ctrl-C, SIGTERM), so that even after a SIGKILL they hold every photo done and always describe what the photo
folders hold. A photo not reached yet keeps the row and outputs of an earlier run into the same ``--out``
(its status says so: ``not processed: ...; the row and the outputs of an earlier run are kept ...``), or is
listed ``not processed`` with no outputs. An earlier table is not touched before the new run has a row, so a
rerun that is stopped or killed never leaves less than there was; running the same command again ends with
the outputs of an uninterrupted run. With the pooled refit the tables are first written in the second pass
(a stop in the first leaves an earlier run's files as they were), and a row kept from an earlier run carries
that run's threshold.
Exit status: 0 when at least one photo was scored (or this shard has no photo), 1 when none could be or the
outputs cannot be written, 2 for a wrong path or option, 130 after Ctrl-C.

The brief's deliverable layout (``data/positive/<id>/preds.png``, classification in a CSV) maps onto this one:
``<out>/<stem>/preds.png`` is the mask, and the photos whose ``label`` in ``predictions.csv`` is
``anomalous`` are the "positive" ones.

Many workers or machines: ``--shard I/N`` processes every N-th photo of the sorted folder (the default under
``torchrun --nproc_per_node=N`` is RANK/WORLD_SIZE) and writes ``predictions.shard-I-of-N.csv`` (and
timings, threshold); the per-photo folders of the shards are disjoint. ``python -m common.shard merge
<out>/predictions.csv`` then writes exactly the file one worker would have written with the same threshold:
with ``--threshold-from training`` or a set ``--threshold``; by default each shard refits the threshold on its
own photos (its threshold file says which).

Threshold rule (no labels): maps are in units of the training photos' score spread (train.calibrate), and a
pixel is anomalous above the threshold. By default (``--threshold-from pooled``) it is refitted here
(model.fit_threshold: where the tail of the pooled scores flattens into the defects) on the training photos'
map scores, stored in the checkpoint, pooled with a random sample of every photo predicted (the same number
of pixels per photo as at training): a first pass scores the whole folder (its maps wait on disk in
``<out>/.refit-maps``; in memory, about 0.2 MB of sampled scores per photo), a second writes the masks, labels
and margins. A folder whose defects are fainter or more common than the training folder's then gets a
threshold that finds them; a label depends on the photos predicted together (a photo predicted alone weighs
as much as one training photo: with few training photos it can still move the threshold, e.g. one strongly
defective board among six). ``--threshold-from training``: the threshold fitted at training to the training
photos' maps alone, the same for every photo (also used for
a model of an older train.py, which stores no scores, with a note). A fixed ``--threshold-spreads`` of training
is used as it is; ``--threshold`` overrides all. A photo is ``anomalous`` when its mask covers at least
``min_area`` of it (default 2e-5, about 100 pixels of a 5-megapixel photo); its ``score`` is the maximum of
its smoothed map divided by the threshold (> 1 means some pixel passed the threshold) and its ``margin`` that
maximum's distance from the threshold in widths of the fit's uncertainty band (between -1 and 1: unsure).
``heatmap.jpg`` spans the photo's own score range (1st to 99.9th percentile, at least up to the threshold)
with the threshold contour in cyan. A calibration warning of the model (small photos) is repeated on stderr.

A training photo is scored like any other photo, except that its own memory-bank rows are left out (it is
recognised by its pixels, data.image_id, whatever its file name): its own cells enter only through the
self-reference sample, as for a new photo.
The random self-reference and colour-reference cells of each photo are drawn with the training seed stored in
the checkpoint, so a model gives the same outputs on every run (train with another ``--seed`` for others).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import math
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

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
from common.shard import Shard, add_shard_argument, launcher_env, select_shard, shard_path
from wood_anomaly.config import (
    DEFAULT_RUNS,
    DEMO_RUNS,
    DEVICES,
    TrainConfig,
    check_config,
    default_run,
    image_folder,
    output_folders,
    too_small,
)

if TYPE_CHECKING:  # PyTorch is imported by the functions that use it, after the options are parsed
    import torch

    from wood_anomaly.model import PatchCore

FIELDS = ["image", "score", "margin", "label", "anomalous_area_px", "anomalous_area_frac", "status"]  # predictions.csv
TIMING_FIELDS = ["image", "seconds", "cpu_seconds"]  # timings.csv
# what one photo may raise without the others being affected: unreadable file (ImageReadError is a ValueError),
# a shape or value problem, a torch error (incl. out of memory), a failed write, no memory left
PHOTO_ERRORS = (ValueError, RuntimeError, OSError, MemoryError)
STILL_TO_COME = "not reached when this table was saved (the run is still going, or it was killed)"
KEPT = "the row and the outputs of an earlier run are kept until this photo is done again"
# what predict needs from model.pt besides the config (train.save_checkpoint; + colour_q50/q95 with colour on)
CKPT_KEYS = ("bank", "bank_image", "image_desc", "train_ids", "threshold", "deep_q50", "deep_q95")


def load_model(path: str | Path, device: torch.device) -> tuple[PatchCore, TrainConfig, dict]:
    """Model, its training config and the checkpoint dict (threshold, statistics) from ``model.pt``.

    Stops with a one-line message naming the file: status 2 when there is no file (a wrong path, as predict.py's
    other path options), 1 when the file is not a usable checkpoint of train.py."""
    import pickle

    import torch

    from wood_anomaly.train import build_model

    path = Path(path)
    if not path.is_file():
        print(f"{path}: no trained model here; run wood_anomaly/train.py first (or make train-wood)", file=sys.stderr)
        sys.exit(2)
    if path.stat().st_size == 0:
        sys.exit(f"{path}: not a readable checkpoint (the file is empty, 0 bytes); train again with "
                 "wood_anomaly/train.py")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's own message would advise weights_only=False, i.e. running its code
        sys.exit(f"{path}: not a PyTorch checkpoint, or one that holds more than tensors; train again with "
                 "wood_anomaly/train.py")
    except (RuntimeError, OSError, EOFError, ValueError) as err:  # truncated or corrupt (zip) archive
        reason = str(err).strip().split(". ")[0] or f"{type(err).__name__}: the file ends too early"
        sys.exit(f"{path}: not a readable checkpoint ({reason}); train again with wood_anomaly/train.py")
    if not isinstance(ckpt, dict) or "bank" not in ckpt or not isinstance(ckpt.get("config"), dict):
        sys.exit(f"{path}: not a checkpoint of wood_anomaly/train.py (no memory bank and config in it)")
    if "train_ids" not in ckpt:
        sys.exit(f"{path}: written by an older train.py (its bank holds tile-overlap duplicates and it cannot tell "
                 "its training photos apart); train again with wood_anomaly/train.py")
    cfg = TrainConfig(**{f.name: ckpt["config"][f.name] for f in fields(TrainConfig) if f.name in ckpt["config"]})
    try:
        check_config(cfg)
    except ValueError as err:
        sys.exit(f"{path}: unusable training configuration: {err}")
    needed = CKPT_KEYS + (("colour_q50", "colour_q95") if cfg.colour_stride > 0 else ())
    missing = [k for k in needed if k not in ckpt]
    if missing:
        sys.exit(f"{path}: incomplete checkpoint, {', '.join(missing)} missing; train again with wood_anomaly/train.py")
    model = build_model(cfg, device)
    try:
        if ckpt["bank"].ndim != 2 or ckpt["bank"].shape[1] != model.features.dim:
            raise ValueError(f"bank of shape {tuple(ckpt['bank'].shape)}, stages {cfg.stages} give "
                             f"{model.features.dim} features")
        model.set_bank(ckpt["bank"], ckpt["bank_image"], ckpt["image_desc"], ckpt["train_ids"])
    except (ValueError, RuntimeError, TypeError, AttributeError) as err:  # a bank of the wrong shape or type
        sys.exit(f"{path}: unusable memory bank ({err}); train again with wood_anomaly/train.py")
    return model, cfg, ckpt


def score_maps(model: PatchCore, image: np.ndarray, cfg: TrainConfig, device: torch.device,
               stats: dict) -> tuple[np.ndarray, np.ndarray | None]:
    """The two standardised maps (in training spreads) of an ``(H, W, 3)`` uint8 photo at ``cfg.scale``:
    ``(deep, colour)``; colour is None with the colour channel off. ``stats``: the checkpoint's training
    quantiles (train.calibrate).

    Deep map: the stitched feature map (data.feature_map) is scored cell by cell, by the mean distance of each
    cell to its k nearest among the bank rows of the ``neighbours`` most similar training photos (never the
    photo's own rows, when it is a training photo) plus ``cfg.self_patches`` random cells of the photo itself
    (self-reference); upsampled to the image and smoothed by ``cfg.sigma``. Colour map: data.colour_map.
    No autograd graph is built: the features are computed under no_grad, the bank is a buffer.
    """
    import torch
    import torch.nn.functional as F
    from scipy import ndimage

    from wood_anomaly.data import colour_map, feature_map, image_id, resize
    from wood_anomaly.model import knn_distance, standardise

    small = resize(image, cfg.scale)
    cells, (y0, x0) = feature_map(model.features, small, cfg.tile, cfg.overlap, cfg.pad, cfg.batch_size, device)
    h, w, d = cells.shape
    own = torch.from_numpy(cells.reshape(-1, d)).to(device)
    bank = model.select_bank(own.mean(0), exclude=model.training_index(image_id(image)))
    if cfg.self_patches > 0:
        gen = torch.Generator().manual_seed(cfg.seed)
        pick = torch.randperm(own.shape[0], generator=gen)[:cfg.self_patches].to(own.device)
        bank = torch.cat([bank, own[pick].to(bank.dtype)])
    dist = knn_distance(own, bank, model.k).reshape(1, 1, h, w)
    s = model.features.stride
    dist = F.interpolate(dist, size=(h * s, w * s), mode="bilinear", align_corners=False)[0, 0].float().cpu().numpy()
    deep = dist[y0:y0 + small.shape[0], x0:x0 + small.shape[1]]
    if cfg.sigma > 0:
        deep = ndimage.gaussian_filter(deep, cfg.sigma)
    deep = standardise(deep, (stats["deep_q50"], stats["deep_q95"]))
    if cfg.colour_stride <= 0:
        return deep, None
    colour = colour_map(small, cfg.colour_stride, cfg.colour_patches, cfg.k, cfg.colour_sigma, cfg.seed)
    return deep, standardise(colour, (stats["colour_q50"], stats["colour_q95"]))


def fused_map(model: PatchCore, image: np.ndarray, cfg: TrainConfig, device: torch.device,
              stats: dict) -> np.ndarray:
    """The two maps of :func:`score_maps` (at ``cfg.scale``) fused by model.fuse with ``cfg.deep_weight``: the
    map train.py samples for the threshold fit, and predict's first pass for the pooled refit."""
    from wood_anomaly.model import fuse

    return fuse(*score_maps(model, image, cfg, device, stats), cfg.deep_weight)


def fit_sample(fused: np.ndarray, index: int, cfg: TrainConfig) -> np.ndarray:
    """The threshold fit's random sample of a fused map: at most ``cfg.fit_pixels`` of its scores (float32),
    seeded by the photo's ``index`` in its sorted folder, so a training photo predicted again gives the sample
    that train.py drew from it."""
    import torch

    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + index + 7)
    pick = torch.randperm(fused.size, generator=gen)[:cfg.fit_pixels].numpy()
    return fused.ravel()[pick].astype(np.float32)


def anomaly_map(model: PatchCore, image: np.ndarray, cfg: TrainConfig, device: torch.device, stats: dict,
                small: np.ndarray | None = None) -> np.ndarray:
    """``(H, W)`` float32 anomaly scores, in training spreads, of an ``(H, W, 3)`` uint8 photo: its
    :func:`fused_map` (``small`` when it was computed already), resized to the photo."""
    from wood_anomaly.data import resize_map

    return resize_map(fused_map(model, image, cfg, device, stats) if small is None else small, image.shape[:2])


def colorize(score: np.ndarray, threshold: float) -> np.ndarray:
    """``(H, W)`` scores -> ``(H, W, 3)`` uint8 'inferno' colours over the photo's own score range: from its 1st
    percentile to its 99.9th, or to the threshold when nothing reaches it (a clean photo stays dark instead of
    showing its noise at full brightness). A fixed scale left the maps of a surface whose scores run low black."""
    from matplotlib import colormaps

    lo, hi = np.percentile(score, [1, 99.9])
    hi = max(hi, threshold)
    scaled = np.clip((score - lo) / max(hi - lo, 1e-6), 0, 1)
    return (colormaps["inferno"](scaled)[..., :3] * 255).astype(np.uint8)


def outline(mask: np.ndarray, width: int = 3) -> np.ndarray:
    """The ``width``-px inner border of a boolean mask: the threshold contour."""
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask, iterations=width)


def overlay(image: np.ndarray, heat: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Photo blended with the heatmap where it is warm, and the mask outline in cyan."""
    warm = (heat.astype(np.float32).mean(2, keepdims=True) / 255) ** 0.5
    out = image * (1 - 0.6 * warm) + heat * 0.6 * warm
    out[outline(mask)] = (0, 255, 255)
    return out.astype(np.uint8)


OUTPUTS = ("preds.png", "heatmap.jpg", "overlay.jpg", "anomaly_map.npy")  # per photo, in <out>/<folder>/


def staging(folder: Path) -> Path:
    """Where a photo's outputs are written before they move into its ``folder`` together."""
    return folder.with_name(f".{folder.name}.partial")


def write_outputs(folder: Path, image: np.ndarray, score: np.ndarray, mask: np.ndarray, threshold: float) -> None:
    """preds.png, heatmap.jpg (colorize: the photo's own colour range; the threshold contour in cyan), overlay.jpg
    and anomaly_map.npy of one photo: written into :func:`staging`, then moved into ``folder`` by four renames,
    so that a run killed while it encodes them leaves no partial set in the folder (the next run removes the
    staging folder)."""
    stage = staging(folder)
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    heat = colorize(score, threshold)
    save_image(stage / "preds.png", mask.astype(np.uint8) * 255)
    contour = heat.copy()
    contour[outline(mask)] = (0, 255, 255)
    save_image(stage / "heatmap.jpg", contour, quality=90)
    save_image(stage / "overlay.jpg", overlay(image, heat, mask), quality=90)
    with atomic_write(stage / "anomaly_map.npy", "wb") as f:
        np.save(f, score.astype(np.float16))
    folder.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:
        os.replace(stage / name, folder / name)
    stage.rmdir()


def write_csv(path: Path, rows: list[dict], fieldnames: list[str]) -> None:
    """``rows`` under the fixed header ``fieldnames`` (also with no row: every shard's file merges)."""
    with atomic_write(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)


def empty_row(name: str) -> dict:
    return {"image": name, "score": "", "margin": "", "label": "", "anomalous_area_px": "", "anomalous_area_frac": "",
            "status": "ok"}


def photo_label(area: int, frac: float, min_area: float) -> str:
    """``anomalous`` when the mask has at least one pixel and covers at least ``min_area`` of the photo (with
    ``min_area`` 0, any pixel above the threshold; an empty mask is always ``normal``), else ``normal``."""
    return "anomalous" if area > 0 and frac >= min_area else "normal"


def discard_outputs(folder: Path) -> None:
    """Remove a failed photo's outputs from ``folder``: those of an earlier run, or the first files of this one,
    would otherwise pass for its result (the table says error)."""
    shutil.rmtree(staging(folder), ignore_errors=True)
    for name in OUTPUTS:
        with contextlib.suppress(OSError):  # none there, or not removable: the table says error either way
            (folder / name).unlink()


def margin(peak: float, threshold: float, band: list[float] | None) -> str:
    """How sure a photo's label is: ``ln(peak / threshold) / ln(high / low)``, its peak score's distance from the
    threshold in units of the width of the threshold's uncertainty ``band`` (low, high) of the fit (at least a
    factor 1.5). Between -1 and 1 the peak lies within one band width of the threshold, so the label is
    unsure; '' without a band (a fixed --threshold-spreads or --threshold, or an older model)."""
    if band is None or peak <= 0:
        return ""
    width = max(math.log(max(band[1], 1e-12) / max(band[0], 1e-12)), math.log(1.5))
    return f"{math.log(peak / threshold) / width:.2f}"


def predict_photo(model: PatchCore, cfg: TrainConfig, stats: dict, fit: dict, path: Path, folder: Path | None,
                  device: torch.device, first: tuple[Path, float, float] | None = None) -> tuple[dict, dict | None]:
    """``(predictions row, timings row or None)`` of one photo at the threshold ``fit["threshold"]`` (a margin
    with ``fit["threshold_band"]``); its outputs go to ``folder``. ``first``: its fused map saved by the first
    pass of the pooled refit, with that pass's seconds and CPU seconds (added to the timings). Any of
    ``PHOTO_ERRORS``, and a photo too small to score (config.too_small), becomes an error row naming the file
    and the reason."""
    row = empty_row(path.name)
    if folder is None:
        return {**row, "label": "error", "status": f"{path}: its output folder name is taken by another photo "
                                                   "of the same name; rename the file"}, None
    try:
        image = read_rgb(path)
        small = too_small(*image.shape[:2], cfg)
        if small:
            raise ImageReadError(path, small)
        t0, c0 = time.perf_counter(), time.process_time()  # the photo's processing, reading excluded
        score = anomaly_map(model, image, cfg, device, stats, None if first is None else np.load(first[0]))
        threshold = fit["threshold"]
        mask = score > threshold
        write_outputs(folder, image, score, mask, threshold)
    except PHOTO_ERRORS as err:  # ImageReadError's message starts with the file already
        discard_outputs(folder)
        reason = str(err) if isinstance(err, ImageReadError) else f"{path}: {type(err).__name__}: {err}"
        return {**row, "label": "error", "status": reason}, None
    area = int(mask.sum())
    frac = area / mask.size
    before = (0.0, 0.0) if first is None else first[1:]
    return ({**row, "score": f"{score.max() / threshold:.4f}",
             "margin": margin(float(score.max()), threshold, fit.get("threshold_band")),
             "label": photo_label(area, frac, cfg.min_area),
             "anomalous_area_px": area, "anomalous_area_frac": f"{frac:.6f}"},
            {"image": path.name, "seconds": f"{time.perf_counter() - t0 + before[0]:.2f}",
             "cpu_seconds": f"{time.process_time() - c0 + before[1]:.2f}"})


def earlier_rows(out: Path, shard: Shard | None, folders: dict[str, str | None]) -> dict[str, dict]:
    """``image -> row`` of the photos that an earlier run into ``out`` scored and whose four outputs are still in
    their folder: from the table this run will replace (this shard's), else ``predictions.csv``. An unreadable
    or foreign table counts as none."""
    for table in dict.fromkeys([shard_path(out / "predictions.csv", shard), out / "predictions.csv"]):
        if not table.is_file():
            continue
        try:
            with open(table, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        except (OSError, UnicodeDecodeError, csv.Error):
            return {}
        return {r["image"]: r for r in rows if set(FIELDS) <= set(r) and r["status"] == "ok" and folders.get(r["image"])
                and all((out / folders[r["image"]] / name).is_file() for name in OUTPUTS)}
    return {}


def first_pass(model: PatchCore, cfg: TrainConfig, stats: dict, paths: list[Path], mine: list[Path], maps: Path,
               device: torch.device, floor: float) -> tuple[dict[str, tuple[Path, float, float]], list, int]:
    """The pooled refit's first pass over ``mine`` (of the sorted folder ``paths``): each photo's fused map is
    saved in ``maps`` (float32 at ``cfg.scale``, for the second pass), and a random sample of it, drawn as
    train.map_sample draws it (``fit_pixels`` pixels seeded by the photo's place in the folder: the training
    folder predicted again gives the very samples of training), keeps its scores from ``floor`` up (the lowest
    of the training part: all that the fit reads). Returns ``(name -> (saved map, seconds, CPU seconds), the
    kept scores of each photo, how many scores were sampled)``. A photo that fails here is left out: the second
    pass scores it again and names the error in its row."""

    saved, kept, count = {}, [], 0
    place = {p.name: i for i, p in enumerate(paths)}
    for path in tqdm(mine, desc="score for the refit", unit="photo"):
        try:
            image = read_rgb(path)
            if too_small(*image.shape[:2], cfg):
                continue
            t0, c0 = time.perf_counter(), time.process_time()
            small = fused_map(model, image, cfg, device, stats).astype(np.float32)
            np.save(maps / f"{place[path.name]}.npy", small)
        except PHOTO_ERRORS:
            continue
        sample = fit_sample(small, place[path.name], cfg)
        sample = sample[np.isfinite(sample)]
        kept.append(sample[sample >= floor])
        count += sample.size
        saved[path.name] = (maps / f"{place[path.name]}.npy", time.perf_counter() - t0, time.process_time() - c0)
    return saved, kept, count


def refit(fit: dict, ckpt: dict, kept: list[np.ndarray], count: int, photos: int) -> dict:
    """The threshold fitted (model.fit_threshold) to the training scores (the upper part stored in ``ckpt``)
    pooled with the ``count`` scores sampled from ``photos`` predicted photos (``kept``: their part from the
    training part's lowest value up); ``fit``, the training fit, when no photo was sampled."""
    from wood_anomaly.model import fit_threshold

    if count == 0:
        return fit
    pooled = fit_threshold(np.concatenate([ckpt["fit_tail"].numpy(), *kept]), int(ckpt["fit_count"]) + count)
    return {**pooled, "source": f"refitted on the training photos' scores pooled with those of the {photos} "
                                f"photo(s) predicted here (--threshold-from pooled)",
            "training_threshold": fit["threshold"]}


def predict_folder(model: PatchCore, cfg: TrainConfig, stats: dict, fit: dict, folder: Path, out: Path,
                   device: torch.device, shard: Shard | None = None, pooled: bool = False) -> list[dict]:
    """Process every image of ``folder`` (of its ``shard`` only, when given), in sorted name order; return one
    row per image and write them to ``out/predictions.csv`` (its shard name), timings to ``out/timings.csv``
    and the threshold used, with where it comes from, to ``out/threshold.json``. The threshold is ``fit``, or
    with ``pooled`` refitted first (first_pass, refit: on this shard's photos; their maps are kept on disk
    in ``out/.refit-maps*`` between the passes, removed at the end).

    The tables on disk always describe what the photo folders hold. They are rewritten (atomically) after every
    photo, so that what no ``finally`` survives (SIGKILL, the machine going down) keeps every photo done; and in
    a ``finally``, when the loop stops early (an exception that is not one photo's problem, Ctrl-C, SIGTERM via
    main). A photo not reached keeps the row of an earlier run into ``out`` when its outputs are still there
    (status ``not processed: ...; KEPT``), else it is listed ``not processed`` and any outputs left in its
    folder, which no row describes, are removed, as are the temporary files a killed run left behind. An earlier
    table is not touched before this run has a row.
    An OSError of these writes (a full disk, an unwritable folder) is raised."""
    paths = list_images(folder)
    folders = output_folders([p.name for p in paths])
    mine = select_shard(paths, shard, key=lambda p: p.name)
    out.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out, [shard_path(out / t, shard).name for t in ("predictions.csv", "timings.csv",
                                                                              "threshold.json")])
    earlier = {n: r for n, r in earlier_rows(out, shard, folders).items() if n in {p.name for p in mine}}
    for p in mine:
        if folders[p.name]:
            shutil.rmtree(staging(out / folders[p.name]), ignore_errors=True)  # of a killed run
        if folders[p.name] and (out / folders[p.name]).is_dir():
            remove_leftovers(out / folders[p.name], list(OUTPUTS))
            if p.name not in earlier:
                discard_outputs(out / folders[p.name])
    rows, timings = [], []

    def save(reason: str) -> list[dict]:
        done = {r["image"] for r in rows}
        rest = [p.name for p in mine if p.name not in done]
        table = rows + [{**earlier[n], "status": f"not processed: {reason}; {KEPT}"} if n in earlier
                        else {**empty_row(n), "label": "error", "status": f"not processed: {reason}"} for n in rest]
        write_csv(shard_path(out / "predictions.csv", shard), table, FIELDS)
        write_csv(shard_path(out / "timings.csv", shard), timings, TIMING_FIELDS)
        write_json(shard_path(out / "threshold.json", shard), fit)
        return table

    stopped = "the run stopped before this photo"
    maps = out / shard_path(".refit-maps", shard).name
    shutil.rmtree(maps, ignore_errors=True)  # of a killed run
    saved: dict[str, tuple[Path, float, float]] = {}
    try:
        if pooled:
            maps.mkdir()
            saved, kept, count = first_pass(model, cfg, stats, paths, mine, maps, device,
                                            float(stats["fit_tail"][-1]) if len(stats["fit_tail"]) else 0.0)
            fit = refit(fit, stats, kept, count, len(saved))
        tqdm.write(f"threshold {fit['threshold']:.3f} training spreads, {fit['source']}"
                   + ("; the labels depend on the photos predicted together (--threshold-from training: the "
                      "training fit alone)" if pooled else ""), file=sys.stderr)
        for path in tqdm(mine, desc="predict", unit="photo"):
            name = folders[path.name]
            row, timing = predict_photo(model, cfg, stats, fit, path, out / name if name else None, device,
                                        saved.get(path.name))
            if row["status"] != "ok":
                tqdm.write(f"error: {row['status']}", file=sys.stderr)  # not inside the progress bar
            rows.append(row)
            if timing is not None:
                timings.append(timing)
            save(STILL_TO_COME)
    except BaseException as err:  # noted in the table, then raised again
        stopped = f"the run stopped before this photo ({type(err).__name__}{f': {err}' if str(err) else ''})"
        raise
    finally:
        shutil.rmtree(maps, ignore_errors=True)
        if rows or not earlier:  # an earlier table stays as it is until this run has a row
            rows = save(stopped)
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    p.add_argument("--data", default="data/wood", help="folder of photos, or a folder holding images/")
    p.add_argument("--model", default="", help=f"checkpoint written by train.py (default: {DEFAULT_RUNS}/model.pt, "
                                                f"else {DEMO_RUNS}/model.pt of make demo-wood)")
    p.add_argument("--out", default="", help="output folder (default: pred/ beside the model)")
    p.add_argument("--threshold", type=float, default=0.0,
                   help="pixel threshold on the fused map, in training spreads; 0: fitted without labels (see "
                        "--threshold-from), or train.py's --threshold-spreads when that was set")
    p.add_argument("--threshold-from", default="pooled", choices=("pooled", "training"),
                   help="pooled: refit the threshold on the training photos' scores pooled with those of the photos "
                        "predicted together (a label then depends on its companions; a shard refits on its own "
                        "photos); training: the one fitted at training, the same for every photo")
    p.add_argument("--device", default="auto", choices=DEVICES, help="auto: cuda when available, else cpu")
    p.add_argument("--threads", type=int, default=2, help="CPU threads of PyTorch (0: PyTorch's default)")
    add_shard_argument(p)
    args = p.parse_args(argv)
    if not args.model:
        args.model = str(default_run() / "model.pt")
        print(f"--model {args.model}", file=sys.stderr)
    args.out = args.out or str(Path(args.model).parent / "pred")
    folder = image_folder(args.data)
    if not folder.is_dir():
        p.error(f"--data {args.data}: {'not a folder' if folder.exists() else 'no such folder'}")
    if not list_images(folder):
        p.error(f"--data {args.data}: no image file ({' '.join(IMAGE_EXTENSIONS)}) in {folder}")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        p.error(f"--out {args.out}: is a file, not a folder")
    if not (math.isfinite(args.threshold) and args.threshold >= 0):  # a negative one marks every pixel
        p.error(f"--threshold {args.threshold}: must be a positive number of training spreads (0: the model's own)")
    if args.threads < 0:
        p.error(f"--threads {args.threads}: must be >= 0 (0: PyTorch's default)")
    return args


@contextlib.contextmanager
def exit_on_sigterm():
    """Within the block, SIGTERM (a scheduler's stop) raises SystemExit in the main thread, so that
    predict_folder's ``finally`` still writes the tables; the previous handler is put back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def first_threshold(args: argparse.Namespace, ckpt: dict) -> tuple[dict, bool]:
    """``(fit, pooled)``: the threshold before any photo is scored (``threshold``, ``source``, and the fit's band,
    share and rule when fitted), and whether predict_folder refits it on the pooled scores: the default, for a
    model whose threshold was fitted and which stores its training scores (an older one gets the training fit
    and a note)."""
    if args.threshold > 0:
        return {"threshold": args.threshold, "source": "--threshold"}, False
    fit = {k: v for k, v in ckpt.items() if k.startswith("threshold")}  # threshold, band, share, rule, ...
    if ckpt.get("threshold_rule") == "fixed" or ckpt["config"].get("threshold_spreads", 0) > 0:
        return {**fit, "source": "fixed at training (train.py --threshold-spreads)"}, False
    if args.threshold_from == "training":
        return {**fit, "source": "fitted to the training photos (--threshold-from training)"}, False
    if "fit_tail" not in ckpt:
        print(f"note: {args.model} stores no training scores (an older train.py): the threshold fitted at training "
              "is used, not refitted on the photos predicted here", file=sys.stderr)
        return {**fit, "source": "fitted to the training photos (an older model.pt: no refit)"}, False
    return {**fit, "source": "fitted to the training photos"}, True


def main(argv=None) -> None:
    args = parse_args(argv)  # before PyTorch is imported: --help and a wrong option answer at once
    from wood_anomaly.train import resolve_device

    device = resolve_device(args.device, args.threads, local_rank=launcher_env()[2])
    model, cfg, ckpt = load_model(args.model, device)
    fit, pooled = first_threshold(args, ckpt)
    if ckpt.get("calibration_warning"):
        print(f"warning: {args.model}: {ckpt['calibration_warning']}", file=sys.stderr)
    table = shard_path(Path(args.out) / "predictions.csv", args.shard)
    try:
        with exit_on_sigterm():
            rows = predict_folder(model, cfg, ckpt, fit, image_folder(args.data), Path(args.out), device,
                                  shard=args.shard, pooled=pooled)
    except OSError as err:  # the output folder or a table (a photo's own write errors are rows of the table)
        sys.exit(f"--out {args.out}: cannot write the outputs ({err})")
    except KeyboardInterrupt:
        print(f"\nstopped by Ctrl-C: {table} lists the photos done and those not processed; run the same command "
              "again to finish", file=sys.stderr)
        sys.exit(130)
    failed = [r for r in rows if r["status"] != "ok"]
    for r in rows:
        print(f"{r['image']}: {r['label']} (score {r['score'] or '-'}, area {r['anomalous_area_frac'] or '-'})")
    print(f"{len(rows) - len(failed)} photos -> {args.out}/<stem>/, table {table}, threshold "
          f"{shard_path(Path(args.out) / 'threshold.json', args.shard)}"
          + (f"; {len(failed)} failed (reasons in the table)" if failed else ""))
    if rows and len(failed) == len(rows):
        sys.exit(f"no photo could be scored ({len(failed)} failed; reasons in {table})")


if __name__ == "__main__":
    main()
