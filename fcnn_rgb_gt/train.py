"""Train the brief's FCN on one aerial image pair (rgb.png + gt.png), never feeding it more than 256x256x3.

    python fcnn_rgb_gt/train.py                      # data/fcnn/rgb.png + gt.png -> runs/fcnn/
    python fcnn_rgb_gt/train.py --data ../shared/data/fcnn/train_substitute --epochs 30
    python fcnn_rgb_gt/train.py --resume             # continue runs/fcnn/last.pt up to --epochs
    torchrun --nproc_per_node=2 fcnn_rgb_gt/train.py # DistributedDataParallel over 2 processes (see README)

A border strip of the image (``--val-fraction`` of one axis) is held out: training crops come only from the
rest, and the strip picks the best epoch (building IoU at probability 0.5). Outputs in ``--out``: ``best.pt`` /
``last.pt`` (model, optimizer, scheduler, epoch, best metric, config, history, random-number states),
``config.json`` (the resolved config: absolute paths, the device and threads used), ``log.csv`` and
``loss_vs_epochs.png``. Training into a folder that holds an earlier run replaces its files (a warning says so);
``--resume`` continues it instead, with the options stored in its ``last.pt`` (a resumed run equals an
uninterrupted one, tested bit for bit).

Memory: a step feeds ``--batch-size`` crops of ``--tile`` px, and the brief allows the network one 256x256x3
input at a time, so ``batch-size x tile^2`` must stay within 256^2 pixels (default 4 x 128^2).

Under ``torchrun`` the model is wrapped in DistributedDataParallel (fcnn_rgb_gt/ddp.py): every rank draws its own
``--batch-size`` random crops per step (crop generator seeded with seed + 1000 x rank), gradients are averaged,
and an epoch has 1/world_size the steps, so it still covers the training region about once. Validation,
logging, checkpoints and the plot happen on rank 0 only.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from common.config import add_config_args, resumed_config
from common.io import ImageReadError, atomic_write, write_json
from common.metrics import segmentation_report
from common.tiling import MAX_TILE
from fcnn_rgb_gt.checkpoint import THRESHOLD, CheckpointError, read_resume, restore, rng_states, save_checkpoint
from fcnn_rgb_gt.data import DEFAULT_DATA, DEFAULT_RUNS, CropSampler, load_training_pair, spatial_split, to_tensor
from fcnn_rgb_gt.ddp import distributed, mean_over_ranks, rank0_decides, wrap_ddp
from fcnn_rgb_gt.figures import plot_losses
from fcnn_rgb_gt.infer import DEVICES, over_memory_limit, predict_probs, prepare, resolve_device, set_threads
from fcnn_rgb_gt.model import FCN, ModelConfig, count_parameters


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
    plain: bool = False  # the bare brief network: no input standardisation and no batch norm (use --lr 1e-3;
    #                      the default adds both, which lets it train at lr 1e-2 without collapsing)
    seed: int = 0  # 0..2^32-1: initial weights and the crop stream (process r of torchrun: seed + 1000 x r)
    device: str = "auto"  # auto: cuda when available, else cpu
    threads: int = 0  # CPU threads; 0 = min(2, CPU count)
    resume: bool = False  # continue <out>/last.pt with the options stored there (only --epochs, --max-minutes,
    #                       --device, --threads and the data paths of the same images may change)


# options a resumed run takes from the command line; every other option is the checkpoint's (it defines the run)
RESUME_MAY_CHANGE = ("data", "rgb", "gt", "out", "epochs", "max_minutes", "device", "threads", "resume")
MAX_SEED = 2 ** 32 - 1  # --seed range (process r of torchrun draws its crops with seed + 1000 x r)


def parse_args(argv=None) -> TrainConfig:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_config_args(p, TrainConfig, choices={"device": DEVICES})  # the help of each option is its comment
    cfg = TrainConfig(**vars(p.parse_args(argv)))
    problem = config_problem(cfg)
    if problem:
        p.error(problem)
    return cfg


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
    problems = [msg for ok, msg in checks if not ok]
    if not problems:
        problems.append(over_memory_limit(cfg.batch_size, cfg.tile))
    return "; ".join(p for p in problems if p)


# --------------------------------------------------------------------------------- the resolved config
def resolve_config(cfg: TrainConfig, ckpt: dict | None, device: torch.device, main_rank: bool) -> TrainConfig:
    """The config this run really uses, as saved with it: on --resume the checkpoint's options, except
    RESUME_MAY_CHANGE (one stderr line names every option the command line set to another value than the run's
    and than its default), and its data paths when none are given; absolute paths; the device and thread count
    in use."""
    if ckpt is not None:
        stored = ckpt["config"]
        if ckpt["epoch"] >= cfg.epochs:  # else the run would train nothing and report success
            raise CheckpointError(f"{Path(cfg.out) / 'last.pt'}: the run has done {ckpt['epoch']} epochs: "
                                  f"--epochs {cfg.epochs} trains nothing; give --epochs above {ckpt['epoch']} "
                                  "to continue it")
        no_data_given = os.path.abspath(cfg.data) == str(DEFAULT_DATA) and not cfg.rgb and not cfg.gt
        cfg, overridden = resumed_config(cfg, stored, RESUME_MAY_CHANGE)
        # only values the user set: a bare --resume named every default that differs from the run's own value,
        # as if the command line had given it
        overridden = [(k, v, given) for k, v, given in overridden if given != getattr(TrainConfig, k)]
        if main_rank and overridden:
            print(f"resume: the run of {Path(cfg.out) / 'last.pt'} keeps its own options: "
                  + ", ".join(f"--{k.replace('_', '-')} {v} (not {given})" for k, v, given in overridden),
                  file=sys.stderr)
        if no_data_given:  # the run's own images
            cfg = replace(cfg, **{k: stored[k] for k in ("data", "rgb", "gt") if k in stored})
        problem = config_problem(cfg)
        if problem:
            raise CheckpointError(f"{Path(cfg.out) / 'last.pt'}: its options cannot train here: {problem}")
    paths = {k: os.path.abspath(getattr(cfg, k)) if getattr(cfg, k) else "" for k in ("data", "rgb", "gt", "out")}
    return replace(cfg, **paths, device=str(device), threads=torch.get_num_threads())


def warn_if_earlier_run(out: Path) -> None:
    """Training into a folder that holds another run's files replaces them: say so (stderr)."""
    earlier = [name for name in ("last.pt", "best.pt", "log.csv") if (out / name).is_file()]
    if earlier:
        print(f"warning: {out} holds an earlier run ({', '.join(earlier)}): this run replaces its files "
              "(--resume continues it instead)", file=sys.stderr)


# ------------------------------------------------------------------------------------------------- data
def load_data(cfg: TrainConfig):
    """The pair, its paths and the split. A missing default pair says where it belongs and how to get one."""
    rgb = Path(cfg.rgb or Path(cfg.data) / "rgb.png")
    gt = Path(cfg.gt or Path(cfg.data) / "gt.png")
    if not rgb.exists():
        raise ImageReadError(rgb, "no such file: put the training pair there (rgb.png and gt.png, 0 = building), "
                                  "give --data DIR or --rgb/--gt, or run `make demo-data-fcnn` for a synthetic "
                                  f"demo pair in {DEFAULT_DATA}")
    image, mask = load_training_pair(rgb, gt)
    return image, mask, spatial_split(mask, cfg.val_fraction, gap=16), rgb, gt


def data_fingerprint(image: np.ndarray, mask: np.ndarray) -> str:
    """SHA-256 of the decoded pair: --resume checks that it continues on the same images, wherever they lie."""
    return hashlib.sha256(image.tobytes() + mask.tobytes()).hexdigest()


def class_weights(mask: np.ndarray) -> torch.Tensor:
    """Inverse-frequency weights normalised to mean 1 (background, building): the loss is class-weighted
    cross-entropy."""
    freq = np.bincount(mask.ravel(), minlength=2) / mask.size
    w = 1.0 / np.maximum(freq, 1e-3)
    return torch.tensor(w / w.mean(), dtype=torch.float32)


def warmup_cosine(total: int, warmup: float = 0.05, floor: float = 0.01):
    """LR factor per step: linear warm-up over ``warmup`` of the run, then cosine decay to ``floor``."""
    w = max(1, int(total * warmup))

    def factor(step: int) -> float:
        if step < w:
            return (step + 1) / w
        t = min(1.0, (step - w) / max(1, total - w))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

    return factor


# ---------------------------------------------------------------------------------------------- loop
def train_one_epoch(model, sampler, opt, sched, steps, cfg, weights, device, show: bool = True) -> float:
    model.train()
    total = 0.0
    for _ in tqdm(range(steps), desc="train", leave=False, disable=not (show and sys.stderr.isatty())):
        x, y = sampler.sample(cfg.batch_size)
        x = x.to(device).contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(model(x), y.to(device), weight=weights.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total += loss.item()
    return total / steps


def evaluate(model, image: np.ndarray, mask: np.ndarray, cfg: TrainConfig, device, weights: torch.Tensor) -> dict:
    """Tiled prediction of the validation strip: the training loss (same class weights, so the two curves
    compare), and building IoU / F1 / accuracy at probability 0.5."""
    model.eval()
    prob = predict_probs(model, image, device, tile=cfg.tile, overlap=min(32, cfg.tile // 4))
    p = np.clip(prob, 1e-6, 1 - 1e-6)
    nll = np.where(mask == 1, -np.log(p), -np.log(1 - p))
    w = weights.numpy()[mask]  # F.cross_entropy(weight=...) normalises by the summed weights
    rep = segmentation_report(prob >= THRESHOLD, mask)
    return {"val_loss": float((w * nll).sum() / w.sum()), **{f"val_{k}": float(v) for k, v in rep.items()}}


# ------------------------------------------------------------------------------------------- outputs
def write_log(path: Path, history: list[dict]) -> None:
    with atomic_write(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(history[-1]), extrasaction="ignore")  # a resumed older run's rows
        w.writeheader()
        w.writerows(history)


# ------------------------------------------------------------------------------------------------- main
def build(cfg: TrainConfig, rank: int, world: int, device: torch.device, ckpt: dict | None, log) -> dict:
    """Data, model, crop sampler, optimiser and schedule of the run: a dict the loop and checkpoints share."""
    image, mask, split, rgb_path, gt_path = load_data(cfg)
    fingerprint = data_fingerprint(image, mask)
    if ckpt is not None and ckpt.get("data_sha256", fingerprint) != fingerprint:
        raise ImageReadError(rgb_path, f"not the training pair of {Path(cfg.out) / 'last.pt'} (with {gt_path}); "
                                       "--resume continues a run on its own images")
    tr_img, tr_mask = split.train(image), split.train(mask)
    va_mask = split.val(mask)
    log(f"data: {rgb_path} {image.shape[1]}x{image.shape[0]}, building {mask.mean():.1%}; "
        f"train region {tr_mask.shape[1]}x{tr_mask.shape[0]}, validation strip ({split.side}) "
        f"{va_mask.shape[1]}x{va_mask.shape[0]}, building {va_mask.mean():.1%}")

    model = FCN(ModelConfig(normalize=not cfg.plain, batch_norm=not cfg.plain))
    x = to_tensor(tr_img)
    model.set_input_stats(x.mean((1, 2)), x.std((1, 2)))
    model = prepare(model, device)
    # each rank draws its own random crops: the generator is seeded by rank
    sampler = CropSampler(x, torch.from_numpy(tr_mask).long(), cfg.tile, cfg.augment,
                          generator=torch.Generator().manual_seed(cfg.seed + 1000 * rank))
    crop = sampler.crop
    steps = max(4, round(tr_mask.size / (world * cfg.batch_size * crop * crop)))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.epochs * steps))
    log(f"model: {count_parameters(model)} parameters {model.cfg.to_dict()}; {steps} steps/epoch of "
        f"{world}x{cfg.batch_size}x{crop}x{crop} crops ({world} process{'es' * (world > 1)}), "
        f"device {device}, {torch.get_num_threads()} threads")
    return {"model": model, "sampler": sampler, "opt": opt, "sched": sched, "steps": steps,
            "weights": class_weights(tr_mask), "val": (split.val(image), va_mask), "fingerprint": fingerprint,
            "device": device}


def end_epoch(run: dict, cfg: TrainConfig, epoch: int, train_loss: float, history: list, best: dict,
              extra: dict, seconds: float) -> dict:
    """Rank 0 after each epoch: validate, log, checkpoint (best.pt when the IoU improved) and plot; the best."""
    out = Path(cfg.out)
    m = evaluate(run["model"], *run["val"], cfg, run["device"], run["weights"])
    history.append({"epoch": epoch, "train_loss": round(train_loss, 5), "val_loss": round(m["val_loss"], 5),
                    "val_iou": round(m["val_iou"], 4), "val_f1": round(m["val_f1"], 4),
                    "val_accuracy": round(m["val_accuracy"], 4), "lr": f"{run['sched'].get_last_lr()[0]:.2e}",
                    "seconds": round(seconds, 1)})
    improved = m["val_iou"] > best["iou"]
    if improved:
        best = {"iou": m["val_iou"], "epoch": epoch}
        save_checkpoint(out / "best.pt", run, epoch, best, cfg, history, extra)
    save_checkpoint(out / "last.pt", run, epoch, best, cfg, history, extra)
    write_log(out / "log.csv", history)
    plot_losses(out / "loss_vs_epochs.png", history)
    print(f"epoch {epoch:3d}/{cfg.epochs}  train {train_loss:.4f}  val {m['val_loss']:.4f}  IoU {m['val_iou']:.4f}  "
          f"F1 {m['val_f1']:.4f}  {seconds:.0f}s" + ("  *best" if improved else ""))
    return best


def train(cfg: TrainConfig) -> tuple[dict, FCN]:
    """Train; return the summary and the trained (unwrapped) model. Under torchrun, call on every rank."""
    with distributed(resolve_device(cfg.device)) as (rank, world, device):
        return _train(cfg, rank, world, device)


def _quiet(*args, **kwargs) -> None:
    """The log of ranks other than 0."""


def _train(cfg: TrainConfig, rank: int, world: int, device: torch.device) -> tuple[dict, FCN]:
    main_rank = rank == 0
    log = print if main_rank else _quiet
    set_threads(cfg.threads)
    ckpt = read_resume(Path(cfg.out), main_rank, world) if cfg.resume else None
    cfg = resolve_config(cfg, ckpt, device, main_rank)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    out = Path(cfg.out)
    if main_rank and ckpt is None:
        warn_if_earlier_run(out)
    run = build(cfg, rank, world, device, ckpt, log)
    history, best, start = [], {"iou": -1.0, "epoch": 0}, 1
    if ckpt is not None:
        history, best, start = restore(run, ckpt, out, device, rank, world, log)
    ddp = wrap_ddp(run["model"], device, world)  # after loading: DDP broadcasts rank 0's weights
    if world > 1:
        run["model"] = ddp.module  # the bare FCN (SyncBatchNorm on CUDA) for evaluation and saving
    if main_rank:
        write_json(out / "config.json", {**asdict(cfg), "world_size": world})

    t0 = time.perf_counter()
    for epoch in range(start, cfg.epochs + 1):
        if rank0_decides(bool(cfg.max_minutes) and time.perf_counter() - t0 > 60 * cfg.max_minutes, world):
            log(f"stopping before epoch {epoch}: --max-minutes {cfg.max_minutes} reached")
            break
        train_loss = train_one_epoch(ddp, run["sampler"], run["opt"], run["sched"], run["steps"], cfg,
                                     run["weights"], device, show=main_rank)
        train_loss = mean_over_ranks(train_loss, device, world)  # for the log
        extra = {"rng": rng_states(run["sampler"], device, world), "data_sha256": run["fingerprint"],
                 "world_size": world}
        if main_rank:  # validation, checkpoints, log and plot: rank 0 only
            best = end_epoch(run, cfg, epoch, train_loss, history, best, extra, time.perf_counter() - t0)

    summary = {"best_epoch": best["epoch"], "val_iou": round(best["iou"], 4), "threshold": THRESHOLD,
               "train_seconds": round(time.perf_counter() - t0, 1), "out": str(out), "rank": rank,
               "world_size": world}
    log(f"best epoch {best['epoch']}: validation IoU {best['iou']:.4f}; checkpoint {out / 'best.pt'}, "
        f"plot {out / 'loss_vs_epochs.png'}")
    return summary, run["model"]


def main(argv=None) -> int:
    cfg = parse_args(argv)
    try:
        train(cfg)
    except ValueError as err:  # ImageReadError, CheckpointError ("<file>: <reason>"), --device cuda without CUDA
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
