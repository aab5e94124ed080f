"""The options of train.py (the TrainConfig dataclass) and their checks, the file layout, and the limits every
script checks before any work. Standard library only (numpy through common.tiling), so that ``--help`` and a
refused option answer before PyTorch is imported (2-9 s on a loaded 2-core machine)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from common.tiling import MAX_TILE

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT / "data" / "fcnn"
DEFAULT_RUNS = REPO_ROOT / "runs" / "fcnn"
DOCS = REPO_ROOT / "fcnn_rgb_gt" / "docs"  # the README's figures
DEVICES = ("auto", "cpu", "cuda")
MAX_SEED = 2 ** 32 - 1  # --seed range (process r of torchrun draws its crops with seed + 1000 x r)
# the network's receptive field: conv 3x3, 3x3, pool 2x2, conv 3x3 at half resolution, up x2, conv 5x5
RECEPTIVE_FIELD = 14
MIN_PREDICT_SIDE = RECEPTIVE_FIELD  # a smaller image holds no pixel whose whole field of view lies inside it
# the averaged weights' building probability threshold and the radius of the mask's clean-up (an opening then a
# closing with a 13 px square), both chosen on the cross-pair matrix of the Dubai pairs (EXPERIMENTS.md); the
# threshold is stored in the checkpoint for predict.py, which applies the clean-up (--clean-radius)
THRESHOLD = 0.6
CLEAN_RADIUS = 6
# predict.py raises the threshold on an image where it would mark more than MAX_SHARE x the training image's
# building share (stored in the checkpoint) to the value that marks that share: a model trained on a denser
# image over-marks a sparser one (EXPERIMENTS.md); predict.py --max-share, 0 for none
MAX_SHARE = 2.0


class CheckpointError(ValueError):
    """A checkpoint is missing or unreadable; ``str(err)`` is ``"<path>: <reason>"``."""


@dataclass
class TrainConfig:
    data: str = str(DEFAULT_DATA)  # folder holding rgb.png and gt.png (overridden by --rgb / --gt)
    rgb: str = ""  # image file, for one not named rgb.png; default <data>/rgb.png
    gt: str = ""  # ground truth file (0 = building, 255 = background); default <data>/gt.png
    out: str = str(DEFAULT_RUNS)  # run folder: checkpoints, log.csv, loss_vs_epochs.png
    epochs: int = 16  # passes; one epoch covers the training region about once with random crops
    max_minutes: float = 14.0  # safety stop: no new epoch starts after this (0 = no limit)
    tile: int = 128  # training crop and validation tile side, <= 256 (the brief's memory limit); 128 px
    #                  crops give 4x the optimiser steps of 256 px ones for the same pixels, and the 14 px
    #                  receptive field needs no more context
    batch_size: int = 4  # crops per step (per process under torchrun); batch-size x tile^2 must stay within
    #                      256^2 pixels, one 256x256x3 input (the brief's memory limit): 4 x 128^2 is exactly that
    lr: float = 1e-2  # AdamW peak learning rate, cosine decay to 1 % over the run (--plain needs about 1e-3)
    weight_decay: float = 1e-4  # AdamW weight decay
    val_fraction: float = 0.2  # share of one axis held out as a border validation strip (see data.spatial_split)
    augment: bool = True  # random flips, 90-degree turns, +-25 % scale, colour jitter; --no-augment trains on
    #                       the crops as they are, for images whose orientation or colours carry meaning
    plain: bool = False  # the bare brief network: no input standardisation, no batch norm, one scale (use --lr
    #                      1e-3; the default adds the first two, which let it train at lr 1e-2 without collapsing)
    scales: str = "1,2"  # input pyramid: comma-separated downsampling factors; the same four convolutions run
    #                      on the tile and on it average-pooled by each factor, and their logits, resized back,
    #                      are averaged (1,2: a 28 px field of view beside the 14 px one, at 1.25x the cost;
    #                      1: the single pass; --plain always uses 1)
    seed: int = 0  # 0..2^32-1: initial weights and the crop stream (process r of torchrun: seed + 1000 x r)
    device: str = "auto"  # auto: cuda when available, else cpu
    threads: int = 0  # CPU threads; 0 = min(2, CPU count)
    resume: bool = False  # continue <out>/last.pt with the options stored there (only --epochs, --max-minutes,
    #                       --device, --threads and the data paths of the same images may change)


def over_memory_limit(batch_size: int, tile: int) -> str:
    """Why ``batch_size`` inputs of ``tile x tile`` per forward pass break the brief's limit (the network holds
    at most one 256x256x3 input's worth of pixels at a time), or "" when they fit."""
    if batch_size * tile * tile <= MAX_TILE * MAX_TILE:
        return ""
    return (f"--batch-size {batch_size} x --tile {tile} feeds {batch_size * tile * tile:,} pixels per forward pass, "
            f"more than one {MAX_TILE}x{MAX_TILE} input ({MAX_TILE * MAX_TILE:,}), the brief's memory limit; use "
            f"--batch-size {max(1, MAX_TILE * MAX_TILE // (tile * tile))} at most at this tile")


MAX_SCALE = 8  # the largest pyramid factor: a 128 px training crop still holds a 16 px copy


def parse_scales(text: str) -> tuple[int, ...]:
    """``"1,2"`` -> ``(1, 2)``: distinct factors in 1..MAX_SCALE, sorted; ValueError says what is wrong."""
    try:
        scales = tuple(sorted({int(v) for v in text.split(",")}))
    except ValueError:
        raise ValueError(f"--scales must be comma-separated whole numbers, e.g. 1,2; got {text!r}") from None
    if not all(1 <= s <= MAX_SCALE for s in scales):
        raise ValueError(f"--scales must be in 1..{MAX_SCALE}, got {text!r}")
    return scales


def scales_problem(text: str) -> str:
    try:
        parse_scales(text)
    except ValueError as err:
        return str(err)
    return ""


def config_problem(cfg: TrainConfig) -> str:
    """Why ``cfg`` cannot train, or ""."""
    checks = [(2 <= cfg.tile <= MAX_TILE, f"--tile must be in 2..{MAX_TILE} (the network never sees more than "
                                           f"256x256), got {cfg.tile}"),
              (cfg.batch_size >= 1, f"--batch-size must be at least 1, got {cfg.batch_size}"),
              (cfg.epochs >= 1, f"--epochs must be at least 1, got {cfg.epochs}"),
              (cfg.max_minutes >= 0, f"--max-minutes must be >= 0 (0 = no limit), got {cfg.max_minutes}"),
              (0 < cfg.lr < math.inf, f"--lr must be > 0 and finite, got {cfg.lr}"),
              (0 <= cfg.weight_decay < math.inf, f"--weight-decay must be >= 0 and finite, got {cfg.weight_decay}"),
              (0 < cfg.val_fraction <= 0.5, f"--val-fraction must be in (0, 0.5], got {cfg.val_fraction}"),
              (cfg.threads >= 0, f"--threads must be >= 0 (0 = automatic), got {cfg.threads}"),
              (0 <= cfg.seed <= MAX_SEED, f"--seed must be in 0..{MAX_SEED}, got {cfg.seed}"),
              (not Path(cfg.out).exists() or Path(cfg.out).is_dir(), f"--out {cfg.out}: is a file, not a folder")]
    problems = [msg for ok, msg in checks if not ok] + [scales_problem(cfg.scales)]
    if not any(problems):
        problems.append(over_memory_limit(cfg.batch_size, cfg.tile))
    return "; ".join(p for p in problems if p)
