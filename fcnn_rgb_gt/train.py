"""Train the brief's FCN on one aerial image pair (rgb.png + gt.png), never feeding it more than 256x256x3.

    python fcnn_rgb_gt/train.py                      # data/fcnn/rgb.png + gt.png -> runs/fcnn/
    python fcnn_rgb_gt/train.py --data ../shared/data/fcnn/train_substitute --epochs 30
    python fcnn_rgb_gt/train.py --resume             # continue runs/fcnn/last.pt up to --epochs
    torchrun --nproc_per_node=2 fcnn_rgb_gt/train.py # DistributedDataParallel over 2 processes (see README)

A border strip of the image (``--val-fraction`` of one axis) is held out: training crops come only from the
rest, and the held-out strip picks the best epoch (building IoU at the threshold: 0.5, or with
``--threshold -1`` the strip's best, which is logged either way). Outputs in ``--out``: ``best.pt`` /
``last.pt`` (model, optimizer, scheduler, epoch, best metric, config, threshold, history, random-number states),
``config.json`` (the resolved config: absolute paths, the device and threads used), ``log.csv`` and
``loss_vs_epochs.png``. Training into a folder that holds an earlier run replaces its files (a warning says so);
``--resume`` continues it instead, with the options stored in its ``last.pt`` (a resumed run equals an
uninterrupted one, tested bit for bit).

Memory: a training step feeds ``--batch-size`` crops of ``--tile`` px, and the brief allows the network one
256x256x3 input at a time, so ``batch-size x tile^2`` must stay within 256^2 pixels (default 4 x 128^2);
``--exceed-memory-limit`` lifts the check on purpose.

Under ``torchrun`` (one process or several machines) the model is wrapped in DistributedDataParallel: every
rank draws its own ``--batch-size`` random crops per step (crop generator seeded with seed + 1000 x rank),
gradients are averaged, and an epoch has 1/world_size the steps, so it still covers the training region about
once (global batch = world_size x --batch-size at the same learning rate; the memory limit holds per process).
Validation, logging, checkpoints and the plot happen on rank 0 only.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import math
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from common.config import add_config_args, resumed_config
from common.io import ImageReadError, atomic_path, atomic_write, save_figure, write_json
from common.metrics import segmentation_report
from common.shard import launcher_env
from common.tiling import MAX_TILE
from fcnn_rgb_gt import demo_data
from fcnn_rgb_gt.data import DEFAULT_DATA, DEFAULT_RUNS, MIN_TRAIN_SIDE, CropSampler, check_both_classes, load_pair, \
    spatial_split, to_tensor
from fcnn_rgb_gt.infer import DEVICES, CheckpointError, over_memory_limit, predict_probs, prepare, read_checkpoint, \
    resolve_device, set_threads
from fcnn_rgb_gt.model import FCN, ModelConfig, count_parameters


@dataclass
class TrainConfig:
    data: str = str(DEFAULT_DATA)  # folder holding rgb.png and gt.png (overridden by --rgb / --gt)
    rgb: str = ""  # image file; default <data>/rgb.png
    gt: str = ""  # ground truth file (0 = building, 255 = background); default <data>/gt.png
    out: str = str(DEFAULT_RUNS)  # run folder: checkpoints, log.csv, loss_vs_epochs.png
    epochs: int = 16  # passes; one epoch covers the training region about once with random crops
    max_minutes: float = 14.0  # safety stop: no new epoch starts after this (0 = no limit)
    tile: int = 128  # training crop and validation tile side, <= 256 (the brief's memory limit); 128 px
    #                  crops give 4x the optimiser steps of 256 px ones for the same pixels, and the 14 px
    #                  receptive field needs no more context
    batch_size: int = 4  # crops per step (per process under torchrun); batch-size x tile^2 must stay within
    #                      256^2 pixels, one 256x256x3 input (the brief's memory limit): 4 x 128^2 is exactly that
    exceed_memory_limit: bool = False  # accept batch-size x tile^2 above 256^2 pixels per step (breaks the
    #                                    brief's memory limit; only to compare with such runs)
    lr: float = 1e-2  # AdamW peak learning rate, cosine decay to 1 % over the run
    weight_decay: float = 1e-4  # AdamW weight decay
    val_fraction: float = 0.2  # share of one axis held out as a border validation strip (see data.spatial_split)
    loss: str = "wce"  # ce, wce (class-weighted CE) or ce_dice (CE + soft dice of the building class)
    augment: bool = True  # random flips, 90-degree turns, +-25 % scale, colour jitter
    normalize: bool = True  # model option: fixed per-channel input standardisation (training-image stats)
    batch_norm: bool = True  # model option: BatchNorm after conv1..conv3
    dropout: float = 0.0  # model option: Dropout2d before conv4
    upsample: str = "nearest"  # model option: nearest or bilinear (both parameter-free)
    threshold: float = 0.5  # building probability threshold; < 0: the best IoU on the validation strip
    seed: int = 0  # 0..2^32-1: initial weights, dropout and the crop stream (process r of torchrun: seed + 1000 x r)
    device: str = "auto"  # auto: cuda when available, else cpu
    threads: int = 0  # CPU threads; 0 = min(2, CPU count)
    resume: bool = False  # continue <out>/last.pt with the options stored there (only --epochs, --max-minutes,
    #                       --device, --threads and the data paths of the same images may change)


# options a resumed run takes from the command line; every other option is the checkpoint's (it defines the run)
RESUME_MAY_CHANGE = ("data", "rgb", "gt", "out", "epochs", "max_minutes", "exceed_memory_limit", "device",
                     "threads", "resume")
CHOICES = {"loss": ("ce", "wce", "ce_dice"), "upsample": ("nearest", "bilinear"), "device": DEVICES}
MAX_SEED = 2 ** 32 - 1  # --seed range (process r of torchrun draws its crops with seed + 1000 x r)


def parse_args(argv=None) -> TrainConfig:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_config_args(p, TrainConfig, choices=CHOICES)  # the help of each option is the comment beside its default
    p.add_argument("--plain", action="store_true",
                   help="the bare brief architecture: no normalisation, batch norm or dropout")
    args = vars(p.parse_args(argv))
    if args.pop("plain"):
        args.update(normalize=False, batch_norm=False, dropout=0.0, upsample="nearest")
    cfg = TrainConfig(**args)
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
              (0 <= cfg.dropout < 1, f"--dropout must be in [0, 1), got {cfg.dropout}"),
              (cfg.threshold <= 1, f"--threshold must be <= 1 (< 0: the strip's best), got {cfg.threshold}"),
              (cfg.threads >= 0, f"--threads must be >= 0 (0 = automatic), got {cfg.threads}"),
              (0 <= cfg.seed <= MAX_SEED, f"--seed must be in 0..{MAX_SEED}, got {cfg.seed}"),
              (not Path(cfg.out).exists() or Path(cfg.out).is_dir(), f"--out {cfg.out}: is a file, not a folder"),
              (cfg.loss in CHOICES["loss"], f"--loss must be one of {', '.join(CHOICES['loss'])}, got {cfg.loss}"),
              (cfg.upsample in CHOICES["upsample"], f"--upsample must be nearest or bilinear, got {cfg.upsample}")]
    problems = [msg for ok, msg in checks if not ok]
    if not problems and not cfg.exceed_memory_limit:
        problems.append(over_memory_limit(cfg.batch_size, cfg.tile))
    return "; ".join(p for p in problems if p)


# ----------------------------------------------------------------------------------- resume and config
def read_resume(cfg: TrainConfig, main_rank: bool, world: int) -> dict | None:
    """With --resume, ``<out>/last.pt``: read by rank 0 and sent to the others (no shared file system needed),
    or its error raised on every rank."""
    if not cfg.resume:
        return None
    path, got = Path(cfg.out) / "last.pt", None
    if main_rank:
        try:
            if not path.is_file():
                raise CheckpointError(f"{path}: nothing to resume (no last.pt in --out)")
            got = read_checkpoint(path, keys=("model", "optimizer", "scheduler", "epoch", "history", "config",
                                              "best_iou", "best_epoch", "threshold"))
        except CheckpointError as err:
            got = err
    got = rank0_decides(got, world)
    if isinstance(got, CheckpointError):
        raise got
    return got


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
    absolute = lambda path: os.path.abspath(path) if path else ""  # noqa: E731
    return replace(cfg, data=absolute(cfg.data), rgb=absolute(cfg.rgb), gt=absolute(cfg.gt), out=absolute(cfg.out),
                   device=str(device), threads=torch.get_num_threads())


def warn_if_earlier_run(out: Path) -> None:
    """Training into a folder that holds another run's files replaces them: say so (stderr)."""
    earlier = [name for name in ("last.pt", "best.pt", "log.csv") if (out / name).is_file()]
    if earlier:
        print(f"warning: {out} holds an earlier run ({', '.join(earlier)}): this run replaces its files "
              "(--resume continues it instead)", file=sys.stderr)


# ------------------------------------------------------------------------------------------------- data
def load_data(cfg: TrainConfig, main_rank: bool = True, world: int = 1):
    """Images of the training and validation regions, and the split."""
    rgb = Path(cfg.rgb or Path(cfg.data) / "rgb.png")
    gt = Path(cfg.gt or Path(cfg.data) / "gt.png")
    if not cfg.rgb and not cfg.gt and Path(cfg.data) == DEFAULT_DATA and not DEFAULT_DATA.exists():
        if main_rank:
            print(f"no data in {DEFAULT_DATA}: writing the synthetic demo pair there", file=sys.stderr)
            demo_data.write(DEFAULT_DATA)
        if world > 1:
            dist.barrier()  # the other ranks read it once rank 0 has written it
    image, mask = load_pair(rgb, gt, min_side=MIN_TRAIN_SIDE)
    check_both_classes(mask, gt)
    split = spatial_split(mask, cfg.val_fraction, gap=16)
    return image, mask, split, rgb, gt


def data_fingerprint(image: np.ndarray, mask: np.ndarray) -> str:
    """SHA-256 of the decoded pair: --resume checks that it continues on the same images, wherever they lie."""
    return hashlib.sha256(image.tobytes() + mask.tobytes()).hexdigest()


def class_weights(mask: np.ndarray) -> torch.Tensor:
    """Inverse-frequency weights normalised to mean 1 (background, building)."""
    freq = np.bincount(mask.ravel(), minlength=2) / mask.size
    w = 1.0 / np.maximum(freq, 1e-3)
    return torch.tensor(w / w.mean(), dtype=torch.float32)


def loss_fn(logits: torch.Tensor, target: torch.Tensor, kind: str, weights: torch.Tensor) -> torch.Tensor:
    if kind == "wce":
        return F.cross_entropy(logits, target, weight=weights.to(logits.device))
    loss = F.cross_entropy(logits, target)
    if kind == "ce_dice":
        p = torch.softmax(logits, 1)[:, 1]
        t = target.float()
        loss = loss + 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    return loss


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
        loss = loss_fn(model(x), y.to(device), cfg.loss, weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total += loss.item()
    return total / steps


def evaluate(model, image: np.ndarray, mask: np.ndarray, cfg: TrainConfig, device, weights: torch.Tensor
             ) -> tuple[dict, np.ndarray]:
    """Tiled prediction of the validation strip: the training loss (same kind and class weights, so the two
    curves compare), IoU/F1 at probability 0.5, and the probabilities."""
    model.eval()
    prob = predict_probs(model, image, device, tile=cfg.tile, overlap=min(32, cfg.tile // 4))
    p = np.clip(prob, 1e-6, 1 - 1e-6)
    nll = np.where(mask == 1, -np.log(p), -np.log(1 - p))
    if cfg.loss == "wce":  # F.cross_entropy(weight=...) normalises by the summed weights
        w = weights.numpy()[mask]
        loss = float((w * nll).sum() / w.sum())
    else:
        loss = float(nll.mean())
    if cfg.loss == "ce_dice":
        loss += 1 - (2 * (prob * mask).sum() + 1) / (prob.sum() + mask.sum() + 1)
    rep = segmentation_report(prob >= 0.5, mask)
    return {"val_loss": float(loss), **{f"val_{k}": float(v) for k, v in rep.items()}}, prob


def best_threshold(prob: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """The probability threshold (0.05 .. 0.95) with the best building IoU on the validation strip."""
    from common.metrics import iou

    scores = [(iou(prob >= t, mask), round(float(t), 2)) for t in np.arange(0.05, 0.951, 0.05)]
    best_iou, t = max(scores)
    return float(t), float(best_iou)


def rng_states(sampler: CropSampler, device: torch.device, world: int) -> list[dict]:
    """Every rank's random-number states (its crop generator, torch's CPU and CUDA generators), for rank 0's
    checkpoint: a resumed run draws the same crops and dropout masks as an uninterrupted one."""
    mine = {"crops": sampler.g.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        mine["cuda"] = torch.cuda.get_rng_state(device)
    if world == 1:
        return [mine]
    states = [None] * world
    dist.all_gather_object(states, mine)
    return states


def restore_rng(states: list[dict] | None, sampler: CropSampler, device: torch.device, rank: int, world: int
                ) -> str:
    """Put this rank's states of a checkpoint back; return a warning when they cannot be (else "")."""
    if not states:
        return ("the checkpoint holds no random-number states (an older train.py wrote it): the crop streams start "
                "afresh (the run continues, but not as an uninterrupted one would)")
    if len(states) != world:
        return (f"the checkpoint holds random-number states of {len(states)} process(es), this run has {world}: "
                "the crop streams start afresh (the run continues, but not as an uninterrupted one would)")
    mine = states[rank]
    sampler.g.set_state(mine["crops"])
    torch.set_rng_state(mine["torch"])
    if device.type == "cuda" and "cuda" in mine:
        torch.cuda.set_rng_state(mine["cuda"], device)
    return ""


# ------------------------------------------------------------------------------------------- outputs
def save_checkpoint(path: Path, model, opt, sched, epoch: int, best: dict, cfg: TrainConfig, history: list,
                    threshold: float = 0.5, extra: dict | None = None) -> None:
    """``extra``: the random-number states and the data fingerprint, for --resume."""
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "epoch": epoch, "best_iou": best["iou"], "best_epoch": best["epoch"], "threshold": threshold,
             "val_iou_at_threshold": best["iou"],
             "config": asdict(cfg), "model_config": model.cfg.to_dict(), "history": history,
             "classes": ["background", "building"], **(extra or {})}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def write_log(path: Path, history: list[dict]) -> None:
    with atomic_write(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(history[0]))
        w.writeheader()
        w.writerows(history)


def plot_losses(path: Path, history: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(ep, [h["train_loss"] for h in history], "o-", label="train loss (augmented crops)")
    ax.plot(ep, [h["val_loss"] for h in history], "s-", label="validation loss (held-out strip, same loss)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    fixed = len({h["threshold"] for h in history}) == 1  # --threshold >= 0; else the strip's best per epoch
    ax2.plot(ep, [h["val_iou_at_threshold"] for h in history], "g--", alpha=0.6,
             label=f"validation building IoU (threshold {history[0]['threshold']:g})" if fixed
             else "validation building IoU (strip-chosen threshold)")
    ax2.set_ylabel("IoU")
    ax2.set_ylim(0, 1)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper right", fontsize=8)
    ax.set_title("FCN training: loss vs epochs")
    save_figure(fig, path, dpi=110)


# ------------------------------------------------------------------------------------------- distributed
@contextmanager
def distributed(device: torch.device):
    """``(rank, world_size)``; under torchrun (WORLD_SIZE > 1) a process group for the run: nccl on CUDA (one
    GPU per local rank), gloo on CPU, initialised from torchrun's environment (MASTER_ADDR/PORT, RANK, ...)."""
    rank, world, local_rank = launcher_env()
    if world == 1:
        yield 0, 1, device
        return
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield rank, world, device
        # the other ranks finish their loop while rank 0 still validates and saves the last epoch: wait for it, so
        # that no rank tears its connections down under a peer that is still using the group
        dist.barrier()
    finally:
        dist.destroy_process_group()


def wrap_ddp(model: FCN, device: torch.device, world: int) -> torch.nn.Module:
    """DistributedDataParallel when world > 1 (it broadcasts rank 0's weights and buffers). On CUDA batch norm
    becomes SyncBatchNorm (statistics over the global batch); gloo has no SyncBatchNorm, so on CPU each rank
    normalises with its own batch's statistics and the running statistics are rank 0's (broadcast every step)."""
    if world == 1:
        return model
    if device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def rank0_decides(value, world: int):
    """Rank 0's ``value`` on every rank (e.g. the time-limit stop, so that all ranks leave the loop together)."""
    if world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ------------------------------------------------------------------------------------------------- main
def train(cfg: TrainConfig) -> tuple[dict, FCN]:
    """Train; return the summary and the trained (unwrapped) model. Under torchrun, call on every rank."""
    with distributed(resolve_device(cfg.device)) as (rank, world, device):
        return _train(cfg, rank, world, device)


def _train(cfg: TrainConfig, rank: int, world: int, device: torch.device) -> tuple[dict, FCN]:
    main_rank = rank == 0
    log = print if main_rank else (lambda *a, **k: None)
    set_threads(cfg.threads)
    ckpt = read_resume(cfg, main_rank, world)
    cfg = resolve_config(cfg, ckpt, device, main_rank)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    out = Path(cfg.out)
    if main_rank and ckpt is None:
        warn_if_earlier_run(out)

    image, mask, split, rgb_path, gt_path = load_data(cfg, main_rank, world)
    fingerprint = data_fingerprint(image, mask)
    if ckpt is not None and ckpt.get("data_sha256", fingerprint) != fingerprint:
        raise ImageReadError(rgb_path, f"not the training pair of {out / 'last.pt'} (with {gt_path}); --resume "
                                       "continues a run on its own images")
    tr_img, tr_mask = split.train(image), split.train(mask)
    va_img, va_mask = split.val(image), split.val(mask)
    log(f"data: {rgb_path} {image.shape[1]}x{image.shape[0]}, building {mask.mean():.1%}; "
          f"train region {tr_mask.shape[1]}x{tr_mask.shape[0]}, validation strip ({split.side}) "
          f"{va_mask.shape[1]}x{va_mask.shape[0]}, building {va_mask.mean():.1%}")

    model = FCN(ModelConfig(cfg.normalize, cfg.batch_norm, cfg.dropout, cfg.upsample))
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
    weights = class_weights(tr_mask)
    log(f"model: {count_parameters(model)} parameters {model.cfg.to_dict()}; {steps} steps/epoch of "
        f"{world}x{cfg.batch_size}x{crop}x{crop} crops ({world} process{'es' * (world > 1)}), loss {cfg.loss}, "
        f"device {device}, {torch.get_num_threads()} threads")

    history, best, start = [], {"iou": -1.0, "epoch": 0}, 1
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
        except (RuntimeError, KeyError, ValueError) as err:
            raise CheckpointError(f"{out / 'last.pt'}: does not fit this run ({str(err).splitlines()[0]})") from None
        history, start = ckpt["history"], ckpt["epoch"] + 1
        best = {"iou": ckpt["best_iou"], "epoch": ckpt["best_epoch"], "threshold": ckpt["threshold"]}
        warning = restore_rng(ckpt.get("rng"), sampler, device, rank, world)
        if warning and main_rank:
            print(f"warning: {out / 'last.pt'}: {warning}", file=sys.stderr)
        log(f"resumed {out / 'last.pt'} at epoch {ckpt['epoch']} (best IoU {best['iou']:.4f} at epoch "
            f"{best['epoch']})")
    ddp = wrap_ddp(model, device, world)  # after loading: DDP broadcasts rank 0's weights
    model = ddp.module if world > 1 else model  # the bare FCN (SyncBatchNorm on CUDA) for evaluation and saving
    if main_rank:
        write_json(out / "config.json", {**asdict(cfg), "world_size": world})

    t0 = time.perf_counter()
    for epoch in range(start, cfg.epochs + 1):
        if rank0_decides(bool(cfg.max_minutes) and time.perf_counter() - t0 > 60 * cfg.max_minutes, world):
            log(f"stopping before epoch {epoch}: --max-minutes {cfg.max_minutes} reached")
            break
        train_loss = train_one_epoch(ddp, sampler, opt, sched, steps, cfg, weights, device, show=main_rank)
        if world > 1:  # the mean training loss over the ranks, for the log
            t = torch.tensor([train_loss], device=device)
            dist.all_reduce(t)
            train_loss = t.item() / world
        extra = {"rng": rng_states(sampler, device, world), "data_sha256": fingerprint, "world_size": world}
        if not main_rank:
            continue  # validation, checkpoints, log and plot: rank 0 only
        metrics, prob = evaluate(model, va_img, va_mask, cfg, device, weights)
        # the threshold is part of the model: fixed (--threshold), or the best on the validation strip (< 0);
        # the strip's best is logged either way
        strip_threshold, strip_iou = best_threshold(prob, va_mask)
        if cfg.threshold >= 0:
            threshold, thr_iou = cfg.threshold, segmentation_report(prob >= cfg.threshold, va_mask)["iou"]
        else:
            threshold, thr_iou = strip_threshold, strip_iou
        row = {"epoch": epoch, "train_loss": round(train_loss, 5), "val_loss": round(metrics["val_loss"], 5),
               "val_iou": round(metrics["val_iou"], 4), "val_f1": round(metrics["val_f1"], 4),
               "val_accuracy": round(metrics["val_accuracy"], 4), "threshold": threshold,
               "val_iou_at_threshold": round(thr_iou, 4), "strip_threshold": strip_threshold,
               "val_iou_at_strip_threshold": round(strip_iou, 4), "lr": f"{sched.get_last_lr()[0]:.2e}",
               "seconds": round(time.perf_counter() - t0, 1)}
        history.append(row)
        improved = thr_iou > best["iou"]
        if improved:
            best = {"iou": thr_iou, "epoch": epoch, "threshold": threshold}
            save_checkpoint(out / "best.pt", model, opt, sched, epoch, best, cfg, history, threshold, extra)
        save_checkpoint(out / "last.pt", model, opt, sched, epoch, best, cfg, history, best.get("threshold", 0.5),
                        extra)
        write_log(out / "log.csv", history)
        plot_losses(out / "loss_vs_epochs.png", history)
        print(f"epoch {epoch:3d}/{cfg.epochs}  train {train_loss:.4f}  val {metrics['val_loss']:.4f}  "
              f"IoU {metrics['val_iou']:.4f} (at {threshold}: {thr_iou:.4f})  F1 {metrics['val_f1']:.4f}  "
              f"{row['seconds']:.0f}s" + ("  *best" if improved else ""))

    summary = {"best_epoch": best["epoch"], "val_iou_at_threshold": round(best["iou"], 4),
               "threshold": best.get("threshold"), "train_seconds": round(time.perf_counter() - t0, 1),
               "out": str(out), "rank": rank, "world_size": world}
    log(f"best epoch {best['epoch']}: validation IoU {best['iou']:.4f} at threshold {best.get('threshold')}; "
          f"checkpoint {out / 'best.pt'}, plot {out / 'loss_vs_epochs.png'}")
    return summary, model


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
