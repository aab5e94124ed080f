"""Train the minerals classifier (7 minerals + "negative") on extracted patches.

    python minerals/extract_samples.py --data data/minerals --out runs/minerals/samples
    python minerals/train.py --data runs/minerals/samples --out runs/minerals/train            # from scratch
    python minerals/train.py --backbone efficientnet_lite1 --out runs/minerals/transfer        # transfer
    python minerals/train.py --val-fold -1 --out runs/minerals/train    # every photo trains: the model to ship

Reads top to bottom: config -> data (group-aware split) -> model -> loop -> save. Writes into ``--out``:
``best.pt`` / ``last.pt`` (minerals/checkpoint.py), ``config.json``, ``split.csv``, ``log.csv`` (per-epoch
metrics), ``curves.png``, ``model.onnx`` and ``model_summary.txt`` (the network graph), ``val_predictions.csv``
(validation probabilities of best.pt), ``calibration.json`` (the temperature and threshold of the last epoch,
fitted on the validation fold: what an all-photos run of this recipe can take) and ``result.json``.

A transfer backbone also trains on the whole photo of every mineral patch cut out of a larger one (``--photos``;
``auto``: the photos folder the extractor recorded in the samples folder), so it takes a patch or a whole photo.

``--val-fold -1`` trains on every photo for ``--epochs`` (chosen by cross-validation) and keeps the last epoch
(best.pt = last.pt); with no photo held out, its temperature and threshold come from cross-validation runs of the
same recipe (``--calibration``, else the backbone's ``CV_CALIBRATION`` in minerals/config.py).

More than one process: ``torchrun --nproc_per_node=2 minerals/train.py ...`` (DistributedDataParallel; gloo on
CPU, nccl on CUDA). ``--batch-size`` stays the global batch and step k of N processes sees the samples of step k
of one process; evaluation, logs, checkpoints and the export happen on rank 0 only (README: more than one machine).
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from minerals.config import CLASSES, TRANSFER_SIZES, Config, parse_args

if TYPE_CHECKING:  # PyTorch is imported by the functions that use it, after the options are parsed
    import torch


def make_loaders(cfg: Config, rank: int = 0, world: int = 1):
    from torch.utils.data import DataLoader, DistributedSampler

    from minerals.data import PatchDataset, eval_transform, read_index, split_rows, train_transform, with_photos

    rows = read_index(cfg.data)
    split_seed = cfg.seed if cfg.split_seed < 0 else cfg.split_seed
    train_rows, val_rows = (rows, []) if cfg.val_fold < 0 else split_rows(rows, cfg.n_folds, cfg.val_fold, split_seed)
    train_ds = PatchDataset(with_photos(train_rows, cfg.photos) if cfg.photos else train_rows,
                            train_transform(cfg.img_size, cfg.crop_scale), int(cfg.img_size * 1.25))
    val_ds = PatchDataset(val_rows, eval_transform(cfg.img_size), 0)
    # one seeded permutation per epoch (sampler.set_epoch), process r takes its items r, r+N, ...: with N
    # processes of batch_size // N, step k covers the same samples as step k of a single process
    sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)
    batch = max(1, cfg.batch_size // world)
    train_dl = DataLoader(train_ds, batch, sampler=sampler, drop_last=len(sampler) > batch)
    val_dl = DataLoader(val_ds, 2 * cfg.batch_size) if val_rows else None  # None: every photo trains
    return train_rows, val_rows, train_dl, val_dl


def param_groups(model, cfg: Config) -> list[dict]:
    """Trainable parameters; for the transfer model the new classifier trains at ``lr`` and the pretrained
    layers at ``lr * backbone_lr_scale`` (discriminative learning rates, https://arxiv.org/abs/1801.06146)."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if cfg.backbone not in TRANSFER_SIZES or cfg.backbone_lr_scale == 1.0:
        return [{"params": [p for _, p in params], "lr": cfg.lr}]
    head = [p for n, p in params if n.startswith("net.classifier.")]
    body = [p for n, p in params if not n.startswith("net.classifier.")]
    return [{"params": body, "lr": cfg.lr * cfg.backbone_lr_scale}, {"params": head, "lr": cfg.lr}]


def class_weights(labels: list[int], power: float) -> torch.Tensor:
    import torch

    counts = np.bincount(labels, minlength=len(CLASSES)).astype(np.float64)
    w = (counts.sum() / (len(CLASSES) * np.maximum(counts, 1))) ** power
    return torch.tensor(w / w.mean(), dtype=torch.float32)


def train_one_epoch(model, loader, opt, sched, weights, cfg, device, step: int, rank: int = 0) -> tuple[float, int]:
    """One pass over ``loader``. Returns (mean training loss over all processes, optimizer steps so far)."""
    import torch
    import torch.nn.functional as F
    from torchvision.transforms import v2
    from tqdm import tqdm

    from minerals.runtime import all_reduce

    model.train()
    total, n = 0.0, 0
    mixer = v2.RandomChoice([v2.MixUp(num_classes=len(CLASSES)), v2.CutMix(num_classes=len(CLASSES))])
    # the batch bar on a terminal only (disable=None: off when stderr is a log file; the epoch lines stay)
    for x, y in tqdm(loader, desc="train", leave=False, file=sys.stderr, disable=None if rank == 0 else True):
        if cfg.mix and torch.rand(()) < cfg.mix:
            x, y = mixer(x, y)  # y becomes mixed one-hot targets
        x = x.to(device, memory_format=torch.channels_last)
        y = y.to(device)
        loss = F.cross_entropy(model(x), y, weight=weights, label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total += loss.item() * len(y)
        n += len(y)
        step += 1
        if cfg.max_steps and step >= cfg.max_steps:
            break
    total, n = all_reduce([total, n], device)
    return total / max(n, 1), step


def evaluate(model, loader, device) -> tuple[float, np.ndarray, np.ndarray]:
    """(mean plain cross-entropy, probabilities (N, 8), labels (N,)) on ``loader`` (uncalibrated)."""
    import torch
    import torch.nn.functional as F

    model.eval()
    probs, labels, total = [], [], 0.0
    with torch.no_grad():
        for x, y in loader:
            logits = model(x.to(device, memory_format=torch.channels_last)).float().cpu()
            total += F.cross_entropy(logits, y, reduction="sum").item()
            probs.append(logits.softmax(1).numpy())
            labels.append(y.numpy())
    probs, labels = np.concatenate(probs), np.concatenate(labels)
    return total / max(len(labels), 1), probs, labels


def validate_epoch(model, val_dl, device, epoch: int, train_loss: float, lr: float, started: float) -> dict:
    """The log row of one epoch: validation loss, accuracy and macro-F1 (7 minerals), the temperature fitted on
    validation, the calibration error, the threshold chosen on the calibrated validation probabilities and the
    open-set accuracy at it."""
    from minerals import decision

    val_loss, probs, labels = evaluate(model, val_dl, device)
    summary = decision.mineral_metrics(probs, labels)
    temperature = decision.fit_temperature(probs, labels)
    probs = decision.calibrate(probs, temperature)
    threshold = decision.choose_threshold(probs, labels)
    return {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_accuracy": summary["accuracy"],
            "val_macro_f1": summary["macro_f1"], "temperature": temperature,
            "val_ece": decision.expected_calibration_error(probs, labels), "threshold": threshold,
            "val_open_set_accuracy": float(decision.open_set_correct(probs, labels, threshold).mean()),
            "lr": lr, "seconds": time.time() - started}


def make_optimizer(model, cfg: Config, total_steps: int):
    """AdamW over ``param_groups`` and its OneCycle schedule (https://arxiv.org/abs/1708.07120): cosine warm-up
    from lr/25 over the first 25 % of the steps, then cosine decay, per group."""
    import torch

    groups = param_groups(model, cfg)
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups], total_steps=total_steps,
                                                pct_start=0.25)
    return opt, sched


def resume_state(ck: dict, model, opt, sched, world: int) -> tuple[int, float, list[dict]]:
    """Load a checkpoint's weights, optimizer and schedule; returns (epochs done, best metric, history)."""
    import torch

    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    sched.load_state_dict(ck["scheduler"])
    if world == 1 and "rng_state" in ck:  # the next draws are the ones an uninterrupted run makes (on CPU)
        torch.set_rng_state(ck["rng_state"].cpu())
    return ck["epoch"], ck["best_metric"], ck["history"]


def save_epoch(out: Path, model, opt, sched, cfg: Config, history: list[dict], best: float, log,
               note: str = "") -> float:
    """Rank 0, after each epoch: the log line (+ ``note``), best.pt when the epoch beats ``best`` (validation
    macro-F1, then accuracy; without validation every epoch, so best.pt is the last), last.pt, log.csv and
    curves.png; returns the best metric so far."""
    from minerals.checkpoint import save_checkpoint
    from minerals.outputs import plot_curves, write_log

    row = history[-1]
    log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()) + note)
    metric = row["val_macro_f1"] + 1e-3 * row["val_accuracy"] if "val_macro_f1" in row else float(row["epoch"])
    if metric > best:
        best = metric
        save_checkpoint(out / "best.pt", model, opt, sched, best, cfg, row, history)
    save_checkpoint(out / "last.pt", model, opt, sched, best, cfg, row, history)
    write_log(out / "log.csv", history)
    plot_curves(history, out / "curves.png")
    return best


def fit(cfg: Config) -> tuple[torch.nn.Module, dict]:
    """Train as configured; returns (the trained network, unwrapped, on every process; rank 0's result dict,
    ``{}`` on the other ranks)."""
    import torch

    from common.io import ImageReadError, write_json
    from minerals import budget
    from minerals.checkpoint import held_out_calibration, load_resume, prepare_run_folder
    from minerals.model import build_model
    from minerals.outputs import write_split
    from minerals.runtime import finish_distributed, setup_distributed

    t_start = time.time()
    rank, world, device = setup_distributed(cfg.device)

    def log(*a) -> None:
        if rank == 0:
            print(*a, file=sys.stderr)
    cfg, ck = load_resume(cfg, device, log)
    calibration = held_out_calibration(cfg) if cfg.val_fold < 0 else None  # (before the data: fails fast)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    if rank == 0:
        prepare_run_folder(out, dataclasses.asdict(cfg), cfg.resume if ck is not None else "")

    # data
    t0 = time.time()
    try:
        train_rows, val_rows, train_dl, val_dl = make_loaders(cfg, rank, world)
    except (FileNotFoundError, ImageReadError, ValueError) as err:  # no index.csv, a lost patch, a foreign label
        raise SystemExit(f"error: --data {cfg.data}: {err}") from None
    if rank == 0:
        write_split(out / "split.csv", train_rows, val_rows)
    counts = {c: sum(r["label"] == c for r in train_rows) for c in CLASSES}
    if calibration is not None:
        log(f"every photo trains (--val-fold -1), {cfg.epochs} epochs, the last one kept; temperature "
            f"{calibration['temperature']:.3g} and threshold {calibration['threshold']:.2f} from "
            f"{calibration['source']}")
    log(f"{len(train_rows)} training / {len(val_rows)} validation patches"
        + (f" (+ {len(train_dl.dataset) - len(train_rows)} whole photos from {cfg.photos})" if cfg.photos
           else " (patches only: no --photos)")
        + f" (loaded in {time.time() - t0:.0f}s); "
        f"training counts {counts}" + (f"; {world} processes x batch {train_dl.batch_size}" if world > 1 else ""))

    # model, optimizer, schedule (the epochs planned within the time budget)
    model = build_model(cfg.backbone, len(CLASSES), cfg.width, freeze=cfg.freeze, drop_path=cfg.drop_path)
    model = model.to(device, memory_format=torch.channels_last)
    weights = class_weights(train_dl.dataset.labels, cfg.class_weight_power).to(device)
    epoch_seconds = None
    if ck is None and cfg.time_budget_min and not cfg.max_steps:  # (a resumed run keeps the epochs it planned)
        cfg.epochs, epoch_seconds = budget.plan_epochs(model, train_dl,
                                                       lambda: val_dl is not None and evaluate(model, val_dl, device),
                                                       weights, cfg.epochs, cfg.time_budget_min, device, t_start, log)
    if rank == 0:
        write_json(out / "config.json", dataclasses.asdict(cfg))  # with the epochs planned
    opt, sched = make_optimizer(model, cfg, cfg.epochs * len(train_dl))
    start, best, history = 0, -1.0, []
    if ck is not None:
        start, best, history = resume_state(ck, model, opt, sched, world)
        log(f"resumed from {cfg.resume} at epoch {start}")
    train_seconds = train_loop(model, cfg, (train_dl, val_dl), (opt, sched, weights), (start, best, history),
                               (rank, world, device), (t_start, epoch_seconds), out, log, calibration)
    finish_distributed(device)
    if rank != 0:
        return model, {}
    run = {"train_seconds": train_seconds, "world_size": world, "epochs_planned": cfg.epochs,
           "epoch_seconds_estimate": epoch_seconds}
    if calibration is not None:
        return model, save_all_photos_result(model, cfg, calibration, out, log, run)
    return model, save_results(model, cfg, val_rows, val_dl, device, out, log, run)


def train_loop(model, cfg: Config, loaders, optim, state, where, times, out: Path, log,
               calibration: dict | None = None) -> float:
    """Epochs ``start + 1 .. cfg.epochs`` (fewer when the time budget or ``max_steps`` ends them), each validated
    (without a validation fold: given ``calibration``'s temperature and threshold), logged with the time left and
    saved (rank 0); returns the seconds spent. ``loaders``: (train, validation);
    ``optim``: (optimizer, schedule, class weights); ``state``: (epochs done, best metric, history);
    ``where``: (rank, world size, device); ``times``: (the run's start, the estimated seconds of an epoch)."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from minerals import budget
    from minerals.runtime import sync_batchnorm

    (train_dl, val_dl), (opt, sched, weights), (start, best, history) = loaders, optim, state
    (rank, world, device), (t_start, epoch_seconds) = where, times
    net = model  # what the loop trains; evaluation and checkpoints use the plain ``model``
    if world > 1:
        net = DistributedDataParallel(sync_batchnorm(model, cfg.backbone) if device.type == "cuda" else model,
                                      device_ids=[device.index] if device.type == "cuda" else None)
        torch.manual_seed(cfg.seed + rank)  # different augmentation / dropout draws per process
    t_train, last_seconds, step = time.time(), 0.0, start * len(train_dl)
    for epoch in range(start + 1, cfg.epochs + 1):
        t = time.time()
        # (also in a resumed run, whose budget counts from its restart: it keeps the epochs it planned)
        if cfg.time_budget_min and last_seconds and budget.past_budget(t - t_start + last_seconds,
                                                                       cfg.time_budget_min, device):
            log(f"stopping before epoch {epoch}: it would end past the {cfg.time_budget_min:g}-min budget ("
                + (f"estimated {epoch_seconds:.1f} s an epoch, " if epoch_seconds else "")
                + f"the last one took {last_seconds:.1f} s)")
            break
        train_dl.sampler.set_epoch(epoch)
        train_loss, step = train_one_epoch(net, train_dl, opt, sched, weights, cfg, device, step, rank)
        if world > 1:  # DDP copies rank 0's buffers before each forward; once more after the last one, so that
            for b in model.buffers():  # every rank holds the BatchNorm statistics of the checkpoint
                dist.broadcast(b, 0)
        if rank == 0:
            lr = opt.param_groups[-1]["lr"]
            history.append(validate_epoch(model, val_dl, device, epoch, train_loss, lr, t) if val_dl is not None
                           else {"epoch": epoch, "train_loss": train_loss, "temperature": calibration["temperature"],
                                 "threshold": calibration["threshold"], "lr": lr, "seconds": time.time() - t})
            left = (cfg.epochs - epoch) * (time.time() - t_train) / (epoch - start)
            best = save_epoch(out, model, opt, sched, cfg, history, best, log,
                              f" (epoch {epoch}/{cfg.epochs}, about {left / 60:.1f} min left)")
        last_seconds = time.time() - t
        if cfg.max_steps and step >= cfg.max_steps:
            break
    return time.time() - t_train


def save_results(model, cfg: Config, val_rows, val_dl, device, out: Path, log, run: dict) -> dict:
    """Rank 0, after training: the best checkpoint's calibrated validation predictions and scores (``result.json``,
    with the ``run`` facts), the graph export. ``model`` keeps the trained (last) weights, like the other ranks."""
    import torch

    from common.io import dumps_json, write_json
    from minerals.decision import calibrate, expected_calibration_error, mineral_metrics, open_set_correct
    from minerals.outputs import export_graph, write_val_predictions
    from minerals.runtime import peak_rss_mb

    final = {k: v.clone() for k, v in model.state_dict().items()}
    ck = torch.load(out / "best.pt", map_location=device, weights_only=True)
    model.load_state_dict(ck["model"])
    _, probs, labels = evaluate(model, val_dl, device)
    probs = calibrate(probs, ck["temperature"])  # what predict.py reports
    write_val_predictions(out / "val_predictions.csv", val_rows, probs)
    scores = mineral_metrics(probs, labels)
    result = {"best_epoch": ck["epoch"], "threshold": ck["threshold"], "temperature": ck["temperature"], **run,
              "accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"],
              "open_set_accuracy": float(open_set_correct(probs, labels, ck["threshold"]).mean()),
              "ece": expected_calibration_error(probs, labels), "peak_rss_mb": peak_rss_mb()}
    if device.type == "cuda":
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    write_json(out / "result.json", result)
    last = torch.load(out / "last.pt", map_location="cpu", weights_only=True)["history"][-1]
    write_json(out / "calibration.json", {
        "backbone": cfg.backbone, "img_size": cfg.img_size, "epochs": cfg.epochs, "temperature": last["temperature"],
        "threshold": last["threshold"], "ece": last["val_ece"], "held_out_patches": len(val_rows),
        "source": f"{out}: validation fold {cfg.val_fold} of {cfg.n_folds}, epoch {last['epoch']} (the last)"})
    if cfg.export:
        export_graph(model, cfg.backbone, cfg.img_size, out)
    log(f"done: {dumps_json(result)}")
    model.load_state_dict(final)
    return result


def save_all_photos_result(model, cfg: Config, calibration: dict, out: Path, log, run: dict) -> dict:
    """Rank 0, after a run on every photo: ``result.json`` (the run facts, the calibration taken and where from;
    no score: no photo was held out) and the graph export."""
    import torch

    from common.io import dumps_json, write_json
    from minerals.outputs import export_graph
    from minerals.runtime import peak_rss_mb

    kept = torch.load(out / "best.pt", map_location="cpu", weights_only=True)["epoch"]  # the last epoch trained
    result = {"best_epoch": kept, "threshold": calibration["threshold"],
              "temperature": calibration["temperature"], "calibration_source": calibration["source"], **run,
              "held_out_patches": 0, "peak_rss_mb": peak_rss_mb()}
    write_json(out / "result.json", result)
    if cfg.export:
        export_graph(model, cfg.backbone, cfg.img_size, out)
    log(f"done: {dumps_json(result)}")
    return result


def main(argv=None) -> dict:
    return fit(parse_args(argv, __doc__.split("\n\n")[0]))[1]


if __name__ == "__main__":
    main()
