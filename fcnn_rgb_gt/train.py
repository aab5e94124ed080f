"""Train the brief's FCN on one aerial image pair (rgb.png + gt.png), never feeding it more than 256x256x3.

    python fcnn_rgb_gt/train.py                      # data/fcnn/rgb.png + gt.png -> runs/fcnn/
    python fcnn_rgb_gt/train.py --data ../shared/data/fcnn/train_substitute --epochs 30
    python fcnn_rgb_gt/train.py --resume             # continue runs/fcnn/last.pt up to --epochs
    torchrun --nproc_per_node=2 fcnn_rgb_gt/train.py # DistributedDataParallel over 2 processes (see README)

A border strip of the image (``--val-fraction`` of one axis) is held out: training crops come only from the
rest, and the strip tracks the run (validation loss and building IoU of the averaged weights, an exponential
moving average kept at every step, EMA_EPOCHS horizon). Outputs in ``--out``: ``best.pt`` (the model to predict
with: the averaged weights, the decision threshold, the training image's colour statistics), ``last.pt`` (the
run's state, for --resume), ``config.json`` (the resolved config), ``log.csv`` and ``loss_vs_epochs.png``.
Training into a folder that holds an earlier run replaces its files (a warning says so); ``--resume`` continues
it with its own options (a resumed run equals an uninterrupted one, tested bit for bit). A step feeds
``--batch-size`` crops of ``--tile`` px, and ``batch-size x tile^2`` must stay within 256^2 pixels (the brief
allows the network one 256x256x3 input at a time). Under ``torchrun`` (fcnn_rgb_gt/ddp.py) every rank draws its
own crops (seed + 1000 x rank), gradients are averaged and an epoch has 1/world_size the steps; validation,
logs, checkpoints and the plot are rank 0's.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from common.config import HelpFormatter, add_config_args, resumed_config
from common.io import ImageReadError, atomic_write, remove_leftovers, write_json
from fcnn_rgb_gt.config import (
    CLEAN_RADIUS,
    DEFAULT_DATA,
    DEVICES,
    THRESHOLD,
    CheckpointError,
    TrainConfig,
    config_problem,
    parse_scales,
)

if TYPE_CHECKING:  # PyTorch is imported by the functions that use it, after the options are parsed
    import torch

    from fcnn_rgb_gt.model import FCN

EMA_EPOCHS = 2.0  # horizon of the exponential moving average of the weights, in epochs (decay 1 - 1/(this x steps))
OUTPUTS = ("best.pt", "last.pt", "config.json", "log.csv", "loss_vs_epochs.png")  # in --out
# options a resumed run takes from the command line; every other option is the checkpoint's (it defines the run)
RESUME_MAY_CHANGE = ("data", "rgb", "gt", "out", "epochs", "max_minutes", "device", "threads", "resume")


def parse_args(argv=None) -> TrainConfig:
    """The options (one per field of config.TrainConfig, its comment as the help), checked before any work."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    add_config_args(p, TrainConfig, choices={"device": DEVICES})  # the help of each option is its comment
    cfg = TrainConfig(**vars(p.parse_args(argv)))
    problem = config_problem(cfg)
    if problem:
        p.error(problem)
    return cfg


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
    import torch

    paths = {k: os.path.abspath(getattr(cfg, k)) if getattr(cfg, k) else "" for k in ("data", "rgb", "gt", "out")}
    return replace(cfg, **paths, device=str(device), threads=torch.get_num_threads())


def warn_if_earlier_run(out: Path) -> None:
    """Training into a folder that holds another run's files replaces them: say so (stderr)."""
    earlier = [name for name in ("last.pt", "best.pt", "log.csv") if (out / name).is_file()]
    if earlier:
        print(f"warning: {out} holds an earlier run ({', '.join(earlier)}): this run replaces its files "
              "(--resume continues it instead)", file=sys.stderr)


def warmup_cosine(total: int, warmup: float = 0.05, floor: float = 0.01):
    """LR factor per step: linear warm-up over ``warmup`` of the run, then cosine decay to ``floor``."""
    w = max(1, int(total * warmup))

    def factor(step: int) -> float:
        if step < w:
            return (step + 1) / w
        t = min(1.0, (step - w) / max(1, total - w))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

    return factor


def train_one_epoch(model, sampler, opt, sched, steps, cfg, weights, device, show: bool = True,
                    after_step=None) -> float:
    """One epoch of ``steps`` optimiser steps; ``after_step()`` runs after each (the weight averages)."""
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

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
        if after_step is not None:
            after_step()
        total += loss.item()
    return total / steps


def evaluate(model, image: np.ndarray, mask: np.ndarray, cfg: TrainConfig, device, weights: torch.Tensor) -> dict:
    """Tiled prediction of the validation strip: the training loss (same class weights, so the two curves
    compare), building IoU / F1 / accuracy of the mask at THRESHOLD after the clean-up (no share limit)."""
    from common.metrics import segmentation_report
    from fcnn_rgb_gt.infer import clean_mask, predict_probs

    model.eval()
    prob = predict_probs(model, image, device, tile=cfg.tile, overlap=min(32, cfg.tile // 4))
    p = np.clip(prob, 1e-6, 1 - 1e-6)
    nll = np.where(mask == 1, -np.log(p), -np.log(1 - p))
    w = weights.numpy()[mask]  # F.cross_entropy(weight=...) normalises by the summed weights
    rep = segmentation_report(clean_mask(prob >= THRESHOLD, CLEAN_RADIUS), mask)
    return {"val_loss": float((w * nll).sum() / w.sum()), **{f"val_{k}": float(v) for k, v in rep.items()}}


def write_log(path: Path, history: list[dict]) -> None:
    with atomic_write(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(history[-1]), extrasaction="ignore")  # a resumed older run's rows
        w.writeheader()
        w.writerows(history)


def build(cfg: TrainConfig, rank: int, world: int, device: torch.device, ckpt: dict | None, log) -> dict:
    """Data, model, crop sampler, optimiser and schedule of the run: a dict the loop and checkpoints share."""
    import torch
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from fcnn_rgb_gt.data import CropSampler, class_weights, data_fingerprint, load_data, to_tensor
    from fcnn_rgb_gt.infer import image_stats, prepare
    from fcnn_rgb_gt.model import FCN, ModelConfig, count_parameters

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

    scales = (1,) if cfg.plain else parse_scales(cfg.scales)
    model = FCN(ModelConfig(normalize=not cfg.plain, batch_norm=not cfg.plain, scales=scales))
    x = to_tensor(tr_img)
    model.set_input_stats(x.mean((1, 2)), x.std((1, 2)))
    model = prepare(model, device)
    # each rank draws its own random crops: the generator is seeded by rank
    sampler = CropSampler(x, torch.from_numpy(tr_mask).long(), cfg.tile, cfg.augment,
                          generator=torch.Generator().manual_seed(cfg.seed + 1000 * rank))
    crop = sampler.crop
    steps = max(4, round(tr_mask.size / (world * cfg.batch_size * crop * crop)))
    # the exponential moving average of the weights (EMA_EPOCHS horizon), batch-norm statistics included
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(1 - 1 / (EMA_EPOCHS * steps)), use_buffers=True)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.epochs * steps))
    log(f"model: {count_parameters(model)} parameters {model.cfg.to_dict()}; {steps} steps/epoch of "
        f"{world}x{cfg.batch_size}x{crop}x{crop} crops ({world} process{'es' * (world > 1)}), "
        f"device {device}, {torch.get_num_threads()} threads")
    return {"model": model, "ema": ema, "sampler": sampler, "opt": opt, "sched": sched, "steps": steps,
            "weights": class_weights(tr_mask), "val": (split.val(image), va_mask), "fingerprint": fingerprint,
            "input_stats": image_stats(image, mask),
            "device": device}


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min" if seconds < 5400 else \
        f"{seconds / 3600:.1f} h"


def estimate(run: dict, cfg: TrainConfig, epochs: int) -> str:
    """A line saying how long ``epochs`` epochs take here, from a few timed training steps and one validation on a
    copy of the model (zero input: no random number is drawn, the run itself does not change)."""
    import copy

    import torch
    import torch.nn.functional as F

    model, device, crop = copy.deepcopy(run["model"]).train(), run["device"], run["sampler"].crop
    x = torch.zeros(cfg.batch_size, 3, crop, crop, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.zeros(cfg.batch_size, crop, crop, dtype=torch.long, device=device)
    F.cross_entropy(model(x), y).backward()  # warm-up: first-call allocations, kernel choice
    t0 = time.perf_counter()
    for _ in range(3):
        F.cross_entropy(model(x), y).backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    step = (time.perf_counter() - t0) / 3
    t0 = time.perf_counter()
    evaluate(model, *run["val"], cfg, device, run["weights"])
    val = time.perf_counter() - t0
    total = epochs * (run["steps"] * step + val)
    stop = cfg.max_minutes and total > 60 * cfg.max_minutes
    return (f"{epochs} epochs of {run['steps']} steps x {step:.2f} s + validation {val:.1f} s: about {duration(total)}"
            f" here, plus checkpoints and the plot after each epoch"
            + (f"; the --max-minutes {cfg.max_minutes:g} safety stop ends it earlier" if stop else ""))


def end_epoch(run: dict, cfg: TrainConfig, epoch: int, train_loss: float, history: list, extra: dict,
              seconds: float, done: int) -> dict:
    """Rank 0 after each epoch: validate the averaged weights, log, checkpoint (best.pt: the averaged weights
    and THRESHOLD; last.pt: the run's state) and plot; return the validation metrics. ``seconds``: since this
    process started training, ``done``: the epochs it has trained (for the time left)."""
    from fcnn_rgb_gt.checkpoint import save_checkpoint
    from fcnn_rgb_gt.figures import plot_losses
    from fcnn_rgb_gt.infer import averaged_weights

    out = Path(cfg.out)
    m = evaluate(run["ema"].module, *run["val"], cfg, run["device"], run["weights"])
    history.append({"epoch": epoch, "train_loss": round(train_loss, 5), "val_loss": round(m["val_loss"], 5),
                    "val_iou": round(m["val_iou"], 4), "val_f1": round(m["val_f1"], 4),
                    "val_accuracy": round(m["val_accuracy"], 4), "lr": f"{run['sched'].get_last_lr()[0]:.2e}",
                    "seconds": round(seconds, 1)})
    save_checkpoint(out / "best.pt", run, epoch, cfg, history, extra,
                    model_state=averaged_weights(run["ema"].state_dict()))
    save_checkpoint(out / "last.pt", run, epoch, cfg, history, extra)
    write_log(out / "log.csv", history)
    plot_losses(out / "loss_vs_epochs.png", history)
    left = f"  about {duration(seconds / done * (cfg.epochs - epoch))} left" if epoch < cfg.epochs else ""
    print(f"epoch {epoch:3d}/{cfg.epochs}  train {train_loss:.4f}  val {m['val_loss']:.4f}  IoU {m['val_iou']:.4f}  "
          f"F1 {m['val_f1']:.4f}  {seconds:.0f}s" + left, flush=True)
    return m


def train(cfg: TrainConfig) -> tuple[dict, FCN]:
    """Train; return the summary and the trained (unwrapped) model. Under torchrun, call on every rank."""
    from fcnn_rgb_gt.ddp import distributed
    from fcnn_rgb_gt.infer import resolve_device

    with distributed(resolve_device(cfg.device)) as (rank, world, device):
        return _train(cfg, rank, world, device)


def _train(cfg: TrainConfig, rank: int, world: int, device: torch.device) -> tuple[dict, FCN]:
    import torch

    from fcnn_rgb_gt.checkpoint import read_resume, restore, rng_states
    from fcnn_rgb_gt.ddp import mean_over_ranks, rank0_decides, wrap_ddp
    from fcnn_rgb_gt.infer import set_threads

    main_rank = rank == 0
    log = partial(print, flush=True) if main_rank else lambda *a, **k: None  # other ranks: quiet
    set_threads(cfg.threads)
    ckpt = read_resume(Path(cfg.out), main_rank, world) if cfg.resume else None
    cfg = resolve_config(cfg, ckpt, device, main_rank)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    out = Path(cfg.out)
    if main_rank:
        remove_leftovers(out, OUTPUTS)
    if main_rank and ckpt is None:
        warn_if_earlier_run(out)
    run = build(cfg, rank, world, device, ckpt, log)
    history, start, last = [], 1, {}
    if ckpt is not None:
        history, start = restore(run, ckpt, out, device, rank, world, log)
    ddp = wrap_ddp(run["model"], device, world)  # after loading: DDP broadcasts rank 0's weights
    if world > 1:
        run["model"] = ddp.module  # the bare FCN (SyncBatchNorm on CUDA) for evaluation and saving
    if main_rank:
        write_json(out / "config.json", {**asdict(cfg), "world_size": world})
        log(estimate(run, cfg, cfg.epochs - start + 1))

    def average() -> None:  # after every optimiser step
        run["ema"].update_parameters(run["model"])

    t0 = time.perf_counter()
    for epoch in range(start, cfg.epochs + 1):
        if rank0_decides(bool(cfg.max_minutes) and time.perf_counter() - t0 > 60 * cfg.max_minutes, world):
            log(f"stopping before epoch {epoch}: --max-minutes {cfg.max_minutes} reached")
            break
        train_loss = train_one_epoch(ddp, run["sampler"], run["opt"], run["sched"], run["steps"], cfg,
                                     run["weights"], device, show=main_rank, after_step=average)
        train_loss = mean_over_ranks(train_loss, device, world)  # for the log
        extra = {"rng": rng_states(run["sampler"], device, world), "data_sha256": run["fingerprint"],
                 "input_stats": run["input_stats"], "world_size": world}
        if main_rank:  # validation, checkpoints, log and plot: rank 0 only
            last = end_epoch(run, cfg, epoch, train_loss, history, extra, time.perf_counter() - t0,
                             epoch - start + 1)

    done = history[-1]["epoch"] if history else 0
    summary = {"epochs": done, "val_iou": round(last.get("val_iou", math.nan), 4), "threshold": THRESHOLD,
               "train_seconds": round(time.perf_counter() - t0, 1), "out": str(out), "rank": rank,
               "world_size": world}
    log(f"averaged weights after epoch {done}: validation IoU {summary['val_iou']:.4f} (threshold {THRESHOLD}, "
        f"clean-up radius {CLEAN_RADIUS}); checkpoint {out / 'best.pt'}, plot {out / 'loss_vs_epochs.png'}")
    return summary, run["model"]


def main(argv=None) -> int:
    cfg = parse_args(argv)
    try:
        train(cfg)
    except ValueError as err:  # ImageReadError, CheckpointError ("<file>: <reason>"), --device cuda without CUDA
        print(f"error: {err}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"error: {cfg.rgb or Path(cfg.data) / 'rgb.png'}: not enough memory to train on this image; crop it "
              "or use a machine with more memory", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: {Path(cfg.out) / 'last.pt'} holds the last finished epoch (if any); --resume "
              "continues from it", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
