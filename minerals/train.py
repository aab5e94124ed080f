"""Train the minerals classifier (7 minerals + "negative") on extracted patches.

    python minerals/extract_samples.py --data data/minerals --out runs/minerals/samples
    python minerals/train.py --data runs/minerals/samples --out runs/minerals/train            # from scratch
    python minerals/train.py --backbone efficientnet_lite0 --out runs/minerals/transfer        # transfer

Reads top to bottom: config -> data (group-aware split) -> model -> loop -> save. Writes into ``--out``:
``best.pt`` / ``last.pt`` (model, optimizer, scheduler, epoch, best metric, config, classes, threshold),
``config.json``, ``split.csv``, ``log.csv`` (per-epoch metrics), ``curves.png``, ``model.onnx`` and
``model_summary.txt`` (the network graph), ``val_predictions.csv`` (validation probabilities of best.pt).

More than one process (DistributedDataParallel, https://pytorch.org/docs/stable/notes/ddp.html)::

    torchrun --nproc_per_node=2 minerals/train.py --data ... --out ...                  # one machine
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=4 --master_addr=HOST0 --master_port=29500 minerals/train.py ...

``--batch-size`` stays the global batch (each of the N processes takes ``batch_size // N``) and every step sees
the same samples as one process would (DistributedSampler slices one seeded permutation per epoch), so the
schedule and the results match one process up to the batch arithmetic: per-process BatchNorm statistics on CPU
(SyncBatchNorm on CUDA), per-process augmentation draws. gloo on CPU, nccl on CUDA (one GPU per process);
evaluation, logs, checkpoints and the export happen on rank 0 only.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import pickle
import resource
import shutil
import sys
import warnings
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, DistributedSampler
from torchvision.transforms import v2
from tqdm import tqdm

from common.config import add_config_args, resumed_config
from common.io import ImageReadError, atomic_path, atomic_write, dumps_json, save_figure, write_json
from common.shard import launcher_env
from common.metrics import classification_summary
from minerals.data import (AUGMENTS, CLASSES, MINERALS, PatchDataset, eval_transform, read_index, split_rows,
                           subsample_rows, train_transform)
from minerals.decision import choose_threshold, mineral_confidence, open_set_correct
from minerals.model import BACKBONES, FlipTTA, build_model


@dataclass
class Config:
    data: str = "runs/minerals/samples"  # folder written by extract_samples.py (index.csv + patches/)
    out: str = "runs/minerals/train"  # run folder: checkpoints, logs, plots, graph
    backbone: str = "orenet"  # orenet (own, from scratch) | efficientnet_lite0 (ImageNet transfer)
    width: float = 1.0  # OreNet channel-width multiplier (0.82 M parameters at 1.0)
    freeze: int = 3  # efficientnet_lite0: keep the stem and this many first block stages frozen (of 7)
    img_size: int = 0  # input side in px (0: 128 for orenet, 224 for efficientnet_lite0, its pretraining size)
    epochs: int = 0  # (0: 100 for orenet, 7-29 min alone on 2-core machines, see README; 15 for efficientnet_lite0)
    time_budget_min: float = 27.0  # the whole run (data, training, validation, export) stays inside this: a few
    #                   timed steps before training say how long an epoch takes, and when `epochs` would not fit
    #                   the run plans fewer (the schedule then spans those); 0 = no limit. A resumed run keeps
    #                   the epochs it planned and stops before an epoch that would end past this (from its restart)
    batch_size: int = 48  # global batch: under torchrun each of the N processes takes batch_size // N
    crop_scale: float = 0.25  # smallest area share of a patch kept by RandomResizedCrop
    augment: str = "basic"  # basic: crop, flips, colour jitter, erasing | trivial: + TrivialAugmentWide
    #                   (https://arxiv.org/abs/2103.10158), one random photometric/geometric op per crop
    quarter_turns: bool = False  # also turn training crops by 90 degrees half of the time (all 8 dihedral views;
    #                   5-fold mean 0.826 / 0.796 against 0.826 / 0.799 without: README)
    drop_path: float = -1.0  # stochastic depth rate of the deepest block (-1: 0.1 for orenet, 0 for efficientnet_lite0)
    lr: float = 0.0  # peak OneCycle learning rate (0: 4e-3 for orenet, 2e-3 for efficientnet_lite0's new classifier)
    backbone_lr_scale: float = 0.0  # efficientnet_lite0: pretrained layers train at lr * this (0: 0.25; orenet: 1)
    head_epochs: int = 0  # efficientnet_lite0: the first N epochs train the new classifier only (pretrained layers at
    #                       lr 0: linear probing, then fine-tuning, LP-FT, https://arxiv.org/abs/2202.10054)
    weight_decay: float = 0.05  # AdamW decoupled weight decay
    label_smoothing: float = 0.1  # cross-entropy label smoothing (https://arxiv.org/abs/1512.00567)
    mix: float = -1.0  # share of batches mixed by MixUp (https://arxiv.org/abs/1710.09412) or CutMix
    #                   (https://arxiv.org/abs/1905.04899), half each; 0 = off (-1: 0.5 for orenet, 0 for
    #                   efficientnet_lite0)
    ema_decay: float = 0.0  # per-step exponential moving average of the weights (Polyak averaging,
    #                   https://pytorch.org/docs/stable/optim.html#weight-averaging-swa-and-ema); the average is
    #                   validated, checkpointed as "model" and used by predict.py; 0 = off
    tta: bool = False  # validate (and predict by default) on the mean of each patch and its mirror image
    class_weight_power: float = 0.5  # class weight = (N / (K * n_class)) ** power: 0 = none, 1 = inverse freq.
    n_folds: int = 5  # the validation set is one fold of a stratified group k-fold
    train_share: float = 1.0  # train on this share of the training folds' photos (0.1-1 in steps of 0.1; stratified,
    #                          group-aware; for learning curves: the validation fold stays whole)
    val_fold: int = 0  # which fold (0 .. n_folds-1) validates and chooses the threshold; the others train
    split_seed: int = -1  # seed of the fold assignment (-1: --seed); give it to compare training seeds on one split
    seed: int = 0  # training seed (initial weights, batch order, augmentation) and, by default, the split's
    device: str = "auto"  # where to train (auto: cuda when available)
    threads: int = 2  # CPU threads (the machine is shared: keep it small)
    max_steps: int = 0  # stop after this many optimizer steps (smoke tests); 0 = no limit
    resume: str = ""  # a last.pt to continue from
    export: bool = True  # export model.onnx + model_summary.txt at the end

    def resolve(self) -> "Config":
        transfer = self.backbone == "efficientnet_lite0"
        self.img_size = self.img_size or (224 if transfer else 128)
        self.epochs = self.epochs or (15 if transfer else 100)
        self.mix = (0.0 if transfer else 0.5) if self.mix < 0 else self.mix
        self.lr = self.lr or (2e-3 if transfer else 4e-3)
        self.backbone_lr_scale = self.backbone_lr_scale or (0.25 if transfer else 1.0)
        self.drop_path = (0.0 if transfer else 0.1) if self.drop_path < 0 else self.drop_path
        return self


def parse_args(argv=None) -> Config:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_config_args(p, Config, choices={"backbone": BACKBONES, "augment": AUGMENTS, "device": DEVICES})
    cfg = Config(**vars(p.parse_args(argv))).resolve()
    for problem in config_problems(cfg):
        p.error(problem)
    return cfg


def config_problems(cfg: Config) -> list[str]:
    """Option values (after ``resolve``) a run cannot train with, each naming its option: they used to be
    tracebacks (--val-fold 5, --batch-size 0, --threads 0) or to train something else than asked, silently
    (--epochs -1 and --time-budget-min -1 trained 1 epoch, --val-fold -1 the last fold, --ema-decay 1 kept the
    initial weights)."""
    rules = {  # field: (allowed, what to give)
        "epochs": (cfg.epochs >= 1, "at least 1 (0: the backbone's default)"),
        "img_size": (cfg.img_size >= 1, "a positive side in px (0: the backbone's default)"),
        "batch_size": (cfg.batch_size >= 1, "at least 1"),
        "threads": (cfg.threads >= 1, "at least 1"),
        "n_folds": (cfg.n_folds >= 2, "at least 2 (one fold validates, the others train)"),
        "val_fold": (0 <= cfg.val_fold < cfg.n_folds, f"a fold 0..{cfg.n_folds - 1} of --n-folds {cfg.n_folds}"),
        "train_share": (0.1 <= cfg.train_share <= 1, "a share in [0.1, 1] (steps of 0.1)"),
        "width": (cfg.width > 0, "a positive multiplier"),
        "freeze": (cfg.freeze >= 0, "0 or more stages"),
        "time_budget_min": (cfg.time_budget_min >= 0, "minutes >= 0 (0: no limit)"),
        "crop_scale": (0 < cfg.crop_scale <= 1, "an area share in (0, 1]"),
        "drop_path": (0 <= cfg.drop_path < 1, "a rate in [0, 1) (-1: the backbone's default)"),
        "lr": (cfg.lr > 0, "a positive rate (0: the backbone's default)"),
        "backbone_lr_scale": (cfg.backbone_lr_scale > 0, "a positive factor (0: the backbone's default)"),
        "head_epochs": (cfg.head_epochs == 0 or (cfg.backbone == "efficientnet_lite0"
                                                  and 0 < cfg.head_epochs < cfg.epochs),
                        "0, or fewer than --epochs with --backbone efficientnet_lite0 (orenet has no pretrained layers)"),
        "weight_decay": (cfg.weight_decay >= 0, "0 or more"),
        "label_smoothing": (0 <= cfg.label_smoothing < 1, "a share in [0, 1)"),
        "mix": (0 <= cfg.mix <= 1, "a share of batches in [0, 1] (-1: the backbone's default)"),
        "ema_decay": (0 <= cfg.ema_decay < 1, "a decay in [0, 1) (0: off; 1 would never move from the initial "
                                              "weights)"),
        "class_weight_power": (cfg.class_weight_power >= 0, "0 or more (0: no class weights)"),
        "max_steps": (cfg.max_steps >= 0, "0 or more (0: no limit)"),
        "seed": (0 <= cfg.seed < 2**32, "0 .. 2**32-1 (numpy's seeds)"),
        "split_seed": (-1 <= cfg.split_seed < 2**32, "0 .. 2**32-1, or -1: --seed"),
    }
    # NaN fails every comparison above, so it is refused with the rest
    return [f"--{name.replace('_', '-')} {getattr(cfg, name)}: give {what}" for name, (ok, what) in rules.items()
            if not ok]


DEVICES = ("auto", "cpu", "cuda")  # --device of train.py, predict.py and evaluate.py


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    return torch.device(name)


def setup_distributed(cfg: Config) -> tuple[int, int, torch.device]:
    """(rank, world size, device). Under torchrun (WORLD_SIZE > 1) joins the process group from the launcher's
    environment (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE): nccl with one GPU per process (LOCAL_RANK) on
    CUDA, gloo on CPU. One process without a launcher: no process group."""
    rank, world, local_rank = launcher_env()
    device = pick_device(cfg.device)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def make_loaders(cfg: Config, rank: int = 0, world: int = 1):
    rows = read_index(cfg.data)
    split_seed = cfg.seed if cfg.split_seed < 0 else cfg.split_seed
    train_rows, val_rows = split_rows(rows, cfg.n_folds, cfg.val_fold, split_seed)
    train_rows = subsample_rows(train_rows, cfg.train_share, split_seed)
    cache = int(cfg.img_size * 1.25)
    train_ds = PatchDataset(train_rows, train_transform(cfg.img_size, cfg.crop_scale, cfg.quarter_turns, cfg.augment), cache)
    val_ds = PatchDataset(val_rows, eval_transform(cfg.img_size), 0)
    # one seeded permutation per epoch (sampler.set_epoch), process r takes its items r, r+N, ...: with N
    # processes of batch_size // N, step k covers the same samples as step k of a single process
    sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)
    batch = max(1, cfg.batch_size // world)
    train_dl = DataLoader(train_ds, batch, sampler=sampler, drop_last=len(sampler) > batch)
    val_dl = DataLoader(val_ds, 2 * cfg.batch_size)
    return train_rows, val_rows, train_dl, val_dl


def sync_batchnorm(model: torch.nn.Module, cfg: Config) -> torch.nn.Module:
    """BatchNorm statistics over the global batch on CUDA (SyncBatchNorm runs on GPUs only; on CPU each process
    normalises with its own batch and DDP broadcasts rank 0's running statistics every step)."""
    if cfg.backbone == "efficientnet_lite0":
        from timm.layers import convert_sync_batchnorm  # also converts timm's fused BatchNormAct2d

        return convert_sync_batchnorm(model)
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def param_groups(model, cfg: Config) -> list[dict]:
    """Trainable parameters; for the transfer model the new classifier trains at ``lr`` and the pretrained
    layers at ``lr * backbone_lr_scale`` (discriminative learning rates, https://arxiv.org/abs/1801.06146)."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if cfg.backbone != "efficientnet_lite0" or (cfg.backbone_lr_scale == 1.0 and not cfg.head_epochs):
        return [{"params": [p for _, p in params], "lr": cfg.lr}]
    head = [p for n, p in params if n.startswith("net.classifier.")]
    body = [p for n, p in params if not n.startswith("net.classifier.")]
    return [{"params": body, "lr": cfg.lr * cfg.backbone_lr_scale}, {"params": head, "lr": cfg.lr}]


def class_weights(labels: list[int], power: float) -> torch.Tensor:
    counts = np.bincount(labels, minlength=len(CLASSES)).astype(np.float64)
    w = (counts.sum() / (len(CLASSES) * np.maximum(counts, 1))) ** power
    return torch.tensor(w / w.mean(), dtype=torch.float32)


def time_one_epoch(model, train_dl, val_dl, weights, cfg: Config, device, steps: int = 5) -> float:
    """Seconds one epoch (its training steps + a validation pass) should take here: the median of ``steps`` timed
    training steps (after one untimed warm-up step) times the steps of an epoch, plus the faster of two timed
    validation passes (medians and minima: one hiccup of the machine must not halve the planned epochs).

    Forward and backward only, no optimizer step; the weights, BatchNorm statistics and random state are put back
    afterwards, so the run that follows is the one that would have run without this probe.
    """
    def timed(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    def step(x, y):
        x = x.to(device, memory_format=torch.channels_last)
        F.cross_entropy(model(x), y.to(device), weight=weights).backward()

    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model.train()
        batches = iter(train_dl)
        times = [timed(lambda: step(*next(batches))) for _ in range(min(steps + 1, len(train_dl)))]
        per_step = float(np.median(times[1:] or times))
        val_seconds = min(timed(lambda: evaluate(model, val_dl, device, cfg.tta)) for _ in range(2))
    model.load_state_dict(state)
    model.zero_grad(set_to_none=True)
    return per_step * len(train_dl) + val_seconds


BUDGET_RESERVE_S = 30.0  # of the time budget, kept for the final evaluation, val_predictions.csv and the export


def epochs_within_budget(epochs: int, epoch_seconds: float, budget_seconds: float, spent_seconds: float,
                         reserve_seconds: float = BUDGET_RESERVE_S, margin: float = 1.1) -> int:
    """How many of ``epochs`` fit in what is left of the budget (at least 1): each epoch counted ``margin`` times
    its estimate, and ``reserve_seconds`` kept for the final evaluation and the export."""
    left = budget_seconds - spent_seconds - reserve_seconds
    return max(1, min(epochs, int(left // (epoch_seconds * margin))))


# what --resume may change: where and how the run executes, not what it trains
RESUME_MAY_CHANGE = ("data", "out", "resume", "device", "threads", "max_steps", "export", "time_budget_min")


def load_resume(cfg: Config, device, log) -> tuple[Config, dict | None]:
    """(the run's config, its checkpoint) for ``--resume``: the checkpoint's settings define the run (model,
    split, schedule, epochs planned); a different value on the command line is reported and not used."""
    if not cfg.resume:
        return cfg, None
    try:
        ck = torch.load(cfg.resume, map_location=device, weights_only=True)
        saved = ck["config"]
    except (OSError, RuntimeError, EOFError, KeyError, pickle.UnpicklingError) as err:
        raise SystemExit(f"error: --resume {cfg.resume}: not a last.pt of minerals/train.py ({err})") from None
    run, overridden = resumed_config(cfg, saved, RESUME_MAY_CHANGE)
    if ck.get("epoch", 0) >= run.epochs:  # it would train nothing and record a train time of 0 s as the run's
        raise SystemExit(f"error: --resume {cfg.resume}: the run has done all the {run.epochs} epochs it planned; "
                         "nothing is left to train (start a new run to train longer)")
    if overridden:
        log("--resume continues the run with its own settings: "
            + ", ".join(f"{name}={kept!r} (command line: {given!r})" for name, kept, given in overridden))
    return run, ck


def plan_epochs(model, train_dl, val_dl, weights, cfg: Config, device, world: int, started: float,
                log=print) -> tuple[int, float]:
    """(epochs that fit the time budget of a run started at ``started``, estimated seconds an epoch); every process
    plans the slowest one's."""
    epoch_seconds = time_one_epoch(model, train_dl, val_dl, weights, cfg, device)
    if world > 1:
        t = torch.tensor([epoch_seconds], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        epoch_seconds = t.item()
    fits = epochs_within_budget(cfg.epochs, epoch_seconds, 60 * cfg.time_budget_min, time.time() - started)
    log(f"an epoch takes about {epoch_seconds:.1f} s here: {cfg.epochs} epochs ~ {cfg.epochs * epoch_seconds / 60:.1f}"
        f" min; budget {cfg.time_budget_min:g} min for the whole run"
        + ("" if fits == cfg.epochs else f": planning {fits} epochs instead (--time-budget-min 0 for all)"))
    if cfg.head_epochs >= fits:
        log(f"warning: --head-epochs {cfg.head_epochs} of {fits} planned epochs: the pretrained layers never train")
    return fits, epoch_seconds


def past_budget(projected_seconds: float, budget_seconds: float, world: int, device) -> bool:
    """Whether ``projected_seconds`` exceeds the budget on any process (all processes then stop together)."""
    over = torch.tensor([float(projected_seconds > budget_seconds)], device=device)
    if world > 1:
        dist.all_reduce(over, op=dist.ReduceOp.MAX)
    return bool(over.item())


def train_one_epoch(model, loader, opt, sched, weights, cfg, device, step: int, rank: int = 0,
                    ema: AveragedModel | None = None, head_only: bool = False) -> tuple[float, int]:
    """One pass over ``loader``; ``head_only``: the pretrained layers' group (``param_groups``' first) steps at
    learning rate 0 (linear probing; OneCycle sets every step's rate from its own count, so the hold does not
    shift the schedule). Returns (mean training loss, optimizer steps so far)."""
    model.train()
    total, n = 0.0, 0
    mixer = v2.RandomChoice([v2.MixUp(num_classes=len(CLASSES)), v2.CutMix(num_classes=len(CLASSES))])
    for x, y in tqdm(loader, desc="train", leave=False, file=sys.stderr, disable=rank != 0):
        if cfg.mix and torch.rand(()) < cfg.mix:
            x, y = mixer(x, y)  # y becomes mixed one-hot targets
        x = x.to(device, memory_format=torch.channels_last)
        y = y.to(device)
        loss = F.cross_entropy(model(x), y, weight=weights, label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if head_only:
            opt.param_groups[0]["lr"] = 0.0
        opt.step()
        sched.step()
        if ema is not None:
            ema.update_parameters(model.module if isinstance(model, DistributedDataParallel) else model)
        total += loss.item() * len(y)
        n += len(y)
        step += 1
        if cfg.max_steps and step >= cfg.max_steps:
            break
    if dist.is_initialized():  # the mean over all processes' samples
        t = torch.tensor([total, n], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        total, n = t.tolist()
    return total / max(n, 1), step


@torch.no_grad()
def evaluate(model, loader, device, tta: bool = False) -> tuple[float, np.ndarray, np.ndarray]:
    """(mean plain cross-entropy, probabilities (N, 8), labels (N,)) on ``loader`` (``tta``: mirror averaging)."""
    model = (FlipTTA(model) if tta else model).eval()
    probs, labels, total = [], [], 0.0
    for x, y in loader:
        logits = model(x.to(device, memory_format=torch.channels_last)).float().cpu()
        total += F.cross_entropy(logits, y, reduction="sum").item()
        probs.append(logits.softmax(1).numpy())
        labels.append(y.numpy())
    probs, labels = np.concatenate(probs), np.concatenate(labels)
    return total / max(len(labels), 1), probs, labels


def mineral_metrics(probs: np.ndarray, labels: np.ndarray) -> dict:
    """Closed-set metrics on the mineral patches: the most likely mineral against the true one."""
    pos = labels < len(MINERALS)
    return classification_summary(labels[pos].tolist(), mineral_confidence(probs[pos])[1].tolist(), MINERALS)


def save_checkpoint(path: Path, model, opt, sched, epoch: int, best: float, cfg: Config, threshold: float,
                    history: list[dict], ema: AveragedModel | None = None) -> None:
    """``model`` holds the weights to use (the moving average when there is one; then ``train_model`` holds the
    trained weights and ``ema`` the averager's state, for ``--resume``)."""
    extra = {"train_model": model.state_dict(), "ema": ema.state_dict()} if ema is not None else {}
    with atomic_path(path) as tmp:
        torch.save({"model": (ema.module if ema is not None else model).state_dict(), **extra,
                    "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "epoch": epoch, "best_metric": best, "config": dataclasses.asdict(cfg), "classes": CLASSES,
                    "minerals": MINERALS, "threshold": threshold, "img_size": cfg.img_size,
                    "backbone": cfg.backbone, "width": cfg.width, "history": history,
                    "rng_state": torch.get_rng_state()}, tmp)  # augmentation / dropout draws, for --resume


def plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    ax[0].plot(ep, [h["train_loss"] for h in history], label="train (smoothed, weighted)")
    ax[0].plot(ep, [h["val_loss"] for h in history], label="validation")
    ax[0].set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax[1].plot(ep, [h["val_accuracy"] for h in history], label="accuracy (7 minerals)")
    ax[1].plot(ep, [h["val_macro_f1"] for h in history], label="macro-F1 (7 minerals)")
    ax[1].plot(ep, [h["val_open_set_accuracy"] for h in history], label="open-set acc. (+negatives, at threshold)")
    ax[1].set(xlabel="epoch", ylim=(0, 1), title="validation")
    for a in ax:
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    save_figure(fig, path, dpi=120)


def export_graph(model, cfg: Config, out: Path) -> None:
    """The network graph as ONNX (opens in Netron) and a readable layer-by-layer summary."""
    model = model.eval().to("cpu", memory_format=torch.contiguous_format)
    x = torch.rand(1, 3, cfg.img_size, cfg.img_size)
    with atomic_path(out / "model.onnx") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice (dynamo needs onnxscript)
        torch.onnx.export(model, (x,), tmp, input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    lines, hooks = [], []
    for name, mod in model.named_modules():
        if name and name.count(".") <= 1:
            hooks.append(mod.register_forward_hook(
                lambda m, i, o, name=name: lines.append(f"{name:<28} {type(m).__name__:<20} {tuple(o.shape)!s:<20} "
                                                        f"{sum(p.numel() for p in m.parameters()):>10,}")))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    n = sum(p.numel() for p in model.parameters())
    text = (f"{cfg.backbone}: input (1, 3, {cfg.img_size}, {cfg.img_size}) float RGB in [0, 1] -> logits over "
            f"{CLASSES}\n{n:,} parameters\n\n{'module':<28} {'type':<20} {'output shape':<20} {'params':>10}\n"
            + "\n".join(lines) + "\n\nfull module tree:\n" + str(model) + "\n")
    with atomic_write(out / "model_summary.txt") as f:
        f.write(text)


def fit(cfg: Config) -> tuple[torch.nn.Module, dict]:
    """Train as configured; returns (the trained network, unwrapped, on every process; rank 0's result dict,
    ``{}`` on the other ranks)."""
    t_start = time.time()
    rank, world, device = setup_distributed(cfg)
    log = (lambda *a: print(*a, file=sys.stderr)) if rank == 0 else (lambda *a: None)  # noqa: E731
    cfg, ck = load_resume(cfg, device, log)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", dataclasses.asdict(cfg))
        best_so_far = Path(cfg.resume).with_name("best.pt") if ck is not None else None
        if best_so_far is not None and best_so_far.exists() and not (out / "best.pt").exists():
            with atomic_path(out / "best.pt") as tmp:  # resumed into another folder: the run's best so far
                shutil.copyfile(best_so_far, tmp)

    # data
    t0 = time.time()
    try:
        train_rows, val_rows, train_dl, val_dl = make_loaders(cfg, rank, world)
    except (FileNotFoundError, ImageReadError, ValueError) as err:  # no index.csv, a lost patch, a foreign label
        raise SystemExit(f"error: --data {cfg.data}: {err}") from None
    if rank == 0:
        with atomic_path(out / "split.csv") as tmp, open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["patch", "label", "group", "split"])
            w.writerows([(r["patch"], r["label"], r["group"], s) for s, rs in (("train", train_rows), ("val", val_rows))
                         for r in rs])
    counts = {c: sum(r["label"] == c for r in train_rows) for c in CLASSES}
    log(f"{len(train_rows)} training / {len(val_rows)} validation patches (loaded in {time.time() - t0:.0f}s); "
        f"training counts {counts}" + (f"; {world} processes x batch {train_dl.batch_size}" if world > 1 else ""))

    # model
    model = build_model(cfg.backbone, len(CLASSES), cfg.width, freeze=cfg.freeze, drop_path=cfg.drop_path)
    model = model.to(device, memory_format=torch.channels_last)
    weights = class_weights(train_dl.dataset.labels, cfg.class_weight_power).to(device)
    epoch_seconds = None
    if ck is None and cfg.time_budget_min and not cfg.max_steps:  # (a resumed run keeps the epochs it planned)
        cfg.epochs, epoch_seconds = plan_epochs(model, train_dl, val_dl, weights, cfg, device, world, t_start, log)
    if rank == 0:
        write_json(out / "config.json", dataclasses.asdict(cfg))  # with the epochs planned
    groups = param_groups(model, cfg)
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    # OneCycle: cosine warm-up from lr/25 over the first 25 % of the steps, then cosine decay (per group)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups],
                                                total_steps=cfg.epochs * len(train_dl),
                                                pct_start=0.25)  # https://arxiv.org/abs/1708.07120
    ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
           if cfg.ema_decay else None)
    start, best, history, step = 0, -1.0, [], 0
    if ck is not None:
        model.load_state_dict(ck.get("train_model", ck["model"]))
        if ema is not None and "ema" in ck:
            ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        start, best, history = ck["epoch"], ck["best_metric"], ck["history"]
        step = start * len(train_dl)
        if world == 1 and "rng_state" in ck:  # the next draws are the ones an uninterrupted run makes (on CPU)
            torch.set_rng_state(ck["rng_state"].cpu())
        log(f"resumed from {cfg.resume} at epoch {start}")
    net = model  # what the loop trains; evaluation and checkpoints use the plain ``model``
    if world > 1:
        if device.type == "cuda":
            net = sync_batchnorm(model, cfg)
        net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
        torch.manual_seed(cfg.seed + rank)  # different augmentation / dropout draws per process

    # loop
    t_train, last_seconds = time.time(), 0.0  # the previous epoch's seconds, checkpoints and plot included
    for epoch in range(start + 1, cfg.epochs + 1):
        t = time.time()
        # (also in a resumed run, whose budget counts from its restart: it keeps the epochs it planned)
        if cfg.time_budget_min and last_seconds and past_budget(t - t_start + last_seconds,
                                                                60 * cfg.time_budget_min - BUDGET_RESERVE_S, world, device):
            log(f"stopping before epoch {epoch}: it would end past the {cfg.time_budget_min:g}-min budget ("
                + (f"estimated {epoch_seconds:.1f} s an epoch, " if epoch_seconds else "")
                + f"the last one took {last_seconds:.1f} s)")
            break
        train_dl.sampler.set_epoch(epoch)
        train_loss, step = train_one_epoch(net, train_dl, opt, sched, weights, cfg, device, step, rank, ema,
                                           head_only=epoch <= cfg.head_epochs)
        if world > 1:  # DDP copies rank 0's buffers before each forward; once more after the last one, so that
            for b in model.buffers():  # every rank holds the BatchNorm statistics of the checkpoint
                dist.broadcast(b, 0)
        if rank == 0:
            val_loss, probs, labels = evaluate(ema.module if ema is not None else model, val_dl, device, cfg.tta)
            summary = mineral_metrics(probs, labels)
            threshold = choose_threshold(probs, labels)
            row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_accuracy": summary["accuracy"],
                   "val_macro_f1": summary["macro_f1"], "threshold": threshold,
                   "val_open_set_accuracy": float(open_set_correct(probs, labels, threshold).mean()),
                   "lr": opt.param_groups[-1]["lr"], "seconds": time.time() - t}
            history.append(row)
            log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
            metric = summary["macro_f1"] + 1e-3 * summary["accuracy"]
            if metric > best:
                best = metric
                save_checkpoint(out / "best.pt", model, opt, sched, epoch, best, cfg, threshold, history, ema)
            save_checkpoint(out / "last.pt", model, opt, sched, epoch, best, cfg, threshold, history, ema)
            with atomic_path(out / "log.csv") as tmp, open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(row))
                w.writeheader()
                w.writerows(history)
            plot_curves(history, out / "curves.png")
        last_seconds = time.time() - t
        if cfg.max_steps and step >= cfg.max_steps:
            break
    train_seconds = time.time() - t_train
    if world > 1:
        if device.type == "cuda":  # SyncBatchNorm layers share their parameters and buffers with ``model``
            torch.cuda.synchronize()
        dist.barrier()
        dist.destroy_process_group()
    if rank != 0:
        return model, {}

    # save: the best checkpoint's validation predictions, the graph, a summary
    final = {k: v.clone() for k, v in model.state_dict().items()}
    if ema is not None:  # what the average adds: the last epoch's trained weights, and their average
        last_raw = mineral_metrics(*evaluate(model, val_dl, device, cfg.tta)[1:])
        last_ema = mineral_metrics(*evaluate(ema.module, val_dl, device, cfg.tta)[1:])
        log(f"last epoch: accuracy {last_raw['accuracy']:.4f} (trained weights), {last_ema['accuracy']:.4f} (EMA)")
    ck = torch.load(out / "best.pt", map_location=device, weights_only=True)
    model.load_state_dict(ck["model"])
    _, probs, labels = evaluate(model, val_dl, device, cfg.tta)
    with atomic_path(out / "val_predictions.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["patch", "label"] + [f"p_{c}" for c in CLASSES])
        w.writerows([[r["patch"], r["label"]] + [f"{p:.5f}" for p in pr] for r, pr in zip(val_rows, probs)])
    result = {"best_epoch": ck["epoch"], "threshold": ck["threshold"], "train_seconds": train_seconds,
              "world_size": world, "epochs_planned": cfg.epochs, "epoch_seconds_estimate": epoch_seconds,
              **({"last_accuracy_trained": last_raw["accuracy"], "last_accuracy_ema": last_ema["accuracy"],
                  "last_macro_f1_trained": last_raw["macro_f1"], "last_macro_f1_ema": last_ema["macro_f1"]}
                 if ema is not None else {}),
              **{k: v for k, v in mineral_metrics(probs, labels).items() if k in ("accuracy", "macro_f1")},
              "open_set_accuracy": float(open_set_correct(probs, labels, ck["threshold"]).mean())}
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    if device.type == "cuda":
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    write_json(out / "result.json", result)
    if cfg.export:
        export_graph(model, cfg, out)
    log(f"done: {dumps_json(result)}")
    model.load_state_dict(final)  # hand back the trained (last) weights, like the other ranks
    return model, result


def main(argv=None) -> dict:
    return fit(parse_args(argv))[1]


if __name__ == "__main__":
    main()
