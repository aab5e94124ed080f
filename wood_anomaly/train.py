"""Fit the PatchCore-style wood anomaly model on a folder of unlabeled photos (no masks, no labels).

    python wood_anomaly/train.py                                  # data/wood/images -> runs/wood/
    python wood_anomaly/train.py --data ../shared/data/wood --out runs/wood_real
    torchrun --nproc_per_node=N wood_anomaly/train.py ...         # N processes (README.md: more machines)

Reads top to bottom: options (TrainConfig and its checks live in config.py, parsed before PyTorch is imported)
-> device and processes -> per-photo features (data) -> memory bank (model) -> calibration -> checkpoint. Each
photo is resized by ``--scale`` and featurised tile by tile by a frozen ImageNet EfficientNet-Lite0 into one
feature map (``data.feature_map``, the very map predict scores); a uniform random sample of
``--patches-per-image`` of its cells joins the memory bank (not a greedy coreset: the training photos may contain
defects, and a coreset would keep exactly those). Held-out cells, scored as predict scores them, give the
training spreads that standardise the deep and colour maps. Then every training photo is scored as predict.py
scores it and the label-free pixel threshold is fitted to the pooled scores (model.fit_threshold: where their
tail flattens into the defects), unless ``--threshold-spreads`` fixes it; the upper part of those scores is
kept for predict.py's refit on them pooled with the photos it predicts. The design is in README.md.

One pass, no optimiser, no trained weights (the backbone is frozen): no epochs, nothing to resume. Outputs in
``--out``: ``model.pt`` (bank, config, threshold, score statistics, training photos' names and identities),
``config.json`` (also the photos used and those skipped) and ``log.csv`` (one row per photo), each written under
a temporary name then renamed: a stopped or killed run (even SIGKILL) leaves the earlier files whole.

Under torchrun each rank featurises its share of the photos, the per-photo samples are all-gathered (gloo/nccl)
and every rank ends with a single process's bank and threshold (samples seeded by photo index); rank 0 writes.
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from common.config import HelpFormatter, add_config_args
from common.io import (
    ImageReadError,
    atomic_path,
    atomic_write,
    list_images,
    read_rgb,
    remove_leftovers,
    write_json,
)
from common.shard import launcher_env
from wood_anomaly.config import (
    DEVICES,
    TrainConfig,
    check_config,
    image_folder,
    parse_stages,
    too_small,
)

if TYPE_CHECKING:  # PyTorch is imported by the functions that use it, after the options are parsed
    import torch

    from wood_anomaly.model import PatchCore


def parse_args(argv=None) -> TrainConfig:
    """The options (one per field of config.TrainConfig, its comment as the help), checked before any work."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    add_config_args(p, TrainConfig, choices={"device": DEVICES})
    cfg = TrainConfig(**vars(p.parse_args(argv)))
    try:
        check_config(cfg)
    except ValueError as err:
        p.error(str(err))
    return cfg


# ---------------------------------------------------------------------------------------------- device and processes
def resolve_device(name: str, threads: int = 2, local_rank: int = 0) -> torch.device:
    """``auto | cpu | cuda`` -> a device; under torchrun each process of a machine takes GPU ``local_rank``."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is available")
    if name == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(name)


def init_distributed(cfg: TrainConfig) -> tuple[int, int, torch.device]:
    """``(rank, world_size, device)``. Under torchrun (WORLD_SIZE > 1) join its process group from the
    environment it sets (MASTER_ADDR/PORT, RANK, WORLD_SIZE): nccl on CUDA, gloo on CPU."""
    import torch.distributed as dist

    rank, world, local_rank = launcher_env()
    device = resolve_device(cfg.device, cfg.threads, local_rank)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def build_model(cfg: TrainConfig, device: torch.device) -> PatchCore:
    """The frozen feature extractor with an empty memory bank, on ``device`` (channels_last: faster convolutions)."""
    import torch

    from wood_anomaly.model import PatchCore

    model = PatchCore(parse_stages(cfg.stages), cfg.pool, cfg.k, cfg.neighbours)
    return model.to(device).eval().to(memory_format=torch.channels_last)


# ----------------------------------------------------------------------------------------------- data -> memory bank
def photo_features(model: PatchCore, index: int, path: Path, cfg: TrainConfig, device: torch.device) -> dict:
    """One training photo -> its bank sample, held-out calibration sample, mean feature, identity and a log row
    (or ``{"index", "error"}``: the file and the reason, for a photo that could not be read or featurised).

    The cells are those of the feature map predict scores (``data.feature_map``). Their random split is seeded by
    the photo's index in the sorted folder: the result does not depend on which process handles the photo or in
    which order. A photo too small to score (config.too_small) is refused."""
    import torch

    from wood_anomaly.data import colour_map, feature_map, image_id, resize

    t0 = time.perf_counter()
    try:
        img = read_rgb(path)
        small_photo = too_small(*img.shape[:2], cfg)
        if small_photo:
            return {"index": index, "error": f"{path}: {small_photo}"}
        small = resize(img, cfg.scale)
        cells, _ = feature_map(model.features, small, cfg.tile, cfg.overlap, cfg.pad, cfg.batch_size, device)
    except ImageReadError as err:
        return {"index": index, "error": str(err)}
    except (ValueError, RuntimeError, MemoryError) as err:  # e.g. out of memory on a huge photo
        return {"index": index, "error": f"{path}: {type(err).__name__}: {err}"}
    feats = torch.from_numpy(cells.reshape(-1, cells.shape[-1]))
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + index)
    order = torch.randperm(feats.shape[0], generator=gen)
    # a small photo (fewer cells than the bank sample and the calibration sample) keeps half of its cells out of
    # the bank for calibration, which would otherwise have no held-out cell at all
    n_bank = min(cfg.patches_per_image, feats.shape[0] - min(cfg.calib_patches, feats.shape[0] // 2))
    kept = feats[order[:n_bank]]
    part = {"index": index, "bank": kept, "desc": feats.mean(0), "id": image_id(img),
            "held_out": feats[order[n_bank:][:cfg.calib_patches]]}
    if cfg.colour_stride > 0:  # the photo's colour map, computed as predict computes it; a random sample of it
        colour = torch.from_numpy(colour_map(small, cfg.colour_stride, cfg.colour_patches, cfg.k, cfg.colour_sigma,
                                             cfg.seed).ravel())
        part["colour"] = colour[torch.randperm(colour.shape[0], generator=gen)[:4 * cfg.calib_patches]]
    part["log"] = [path.name, *img.shape[:2], feats.shape[0], kept.shape[0], f"{time.perf_counter() - t0:.2f}"]
    return part


def all_gather_photos(parts: list[dict], world: int) -> list[dict]:
    """Every rank's per-photo results on every rank, in photo order (single process: ``parts`` unchanged).
    DistributedSampler pads the last round with repeated photos; those duplicates are dropped here."""
    import torch.distributed as dist

    if world > 1:
        gathered: list[list[dict]] = [[] for _ in range(world)]
        dist.all_gather_object(gathered, parts)
        parts = list({p["index"]: p for rank_parts in gathered for p in rank_parts}.values())
    return sorted(parts, key=lambda p: p["index"])


def fit_bank(model: PatchCore, paths: list[Path], cfg: TrainConfig, device: torch.device, rank: int = 0,
             world: int = 1) -> list[dict]:
    """Featurise this rank's share of ``paths`` (DistributedSampler, no shuffling), gather all shares, and fill
    the model's memory bank ``(M, D)`` with ``patches_per_image`` random patch features of every readable
    photo. Returns the per-photo results (held-out features, log rows, read errors), the same on every rank."""
    import torch
    from torch.utils.data import DistributedSampler

    share = DistributedSampler(paths, num_replicas=world, rank=rank, shuffle=False) if world > 1 else range(len(paths))
    parts = all_gather_photos([photo_features(model, i, paths[i], cfg, device)
                               for i in tqdm(share, desc="memory bank", unit="photo", disable=rank > 0)], world)
    photos = [p for p in parts if "error" not in p]
    if photos:
        index = torch.cat([torch.full((len(p["bank"]),), i, dtype=torch.long) for i, p in enumerate(photos)])
        model.set_bank(torch.cat([p["bank"] for p in photos]), index, torch.stack([p["desc"] for p in photos]),
                       [p["id"] for p in photos])
    return parts


# ------------------------------------------------------------------------------------------------------- calibration
def calibrate(model: PatchCore, photos: list[dict], cfg: TrainConfig, progress: bool = True) -> dict:
    """Training spread of each score: its median and 95th percentile over the training photos, from which the
    maps are standardised, ``(s - q50) / (q95 - q50)`` (the threshold is fitted afterwards: fit_threshold).

    q95 rather than q99: the training photos contain defects, and with a few percent of defective pixels the
    99th percentile already lies inside them (it did on the fabric run), the 95th does not. The deep scores of
    each photo's held-out cells are computed as predict computes them: against the bank rows of the photos
    retrieved for it (never its own rows) plus a random sample of its own cells (self-reference)."""
    import torch

    from wood_anomaly.model import knn_distance

    scores = []
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    for i, p in enumerate(tqdm(photos, desc="calibration", unit="photo", disable=not progress)):
        feats = p["held_out"]
        bank = model.select_bank(model.image_desc[i], exclude=i)
        if cfg.self_patches > 0:
            bank = torch.cat([bank, feats[torch.randperm(feats.shape[0], generator=gen)[:cfg.self_patches]]
                              .to(bank.device)])
        scores.append(knn_distance(feats.to(bank.device), bank, cfg.k).cpu())
    deep = np.quantile(torch.cat(scores).numpy(), [0.5, 0.95])
    out = {"deep_q50": float(deep[0]), "deep_q95": float(deep[1])}
    if cfg.colour_stride > 0:
        colour = np.quantile(torch.cat([p["colour"] for p in photos]).numpy(), [0.5, 0.95])
        out.update(colour_q50=float(colour[0]), colour_q95=float(colour[1]))
    return out


def map_sample(model: PatchCore, index: int, path: Path, cfg: TrainConfig, stats: dict, device: torch.device) -> dict:
    """``{"index", "scores"}``: a random sample (at most ``fit_pixels``, seeded by the photo's index) of the fused
    map of one training photo, at ``cfg.scale``, computed exactly as predict.py computes it for that photo (its
    own bank rows left out)."""
    from wood_anomaly.predict import fit_sample, fused_map

    return {"index": index, "scores": fit_sample(fused_map(model, read_rgb(path), cfg, device, stats), index, cfg)}


def fit_threshold(model: PatchCore, paths: list[Path], parts: list[dict], cfg: TrainConfig, stats: dict,
                  device: torch.device, rank: int = 0, world: int = 1) -> dict:
    """The label-free pixel threshold: ``threshold_spreads`` when set, else fitted (model.fit_threshold) to the
    pooled fused maps of the training photos as predict.py scores them, so that it follows the folder's own
    defect share and contrast. Each rank maps its share; the samples are all-gathered. One predict pass.
    With the fit, the upper part of the pooled scores and their count (``fit_tail``, ``fit_count``:
    model.upper_part), from which predict.py refits on these scores pooled with the photos it predicts."""
    import torch
    from torch.utils.data import DistributedSampler

    from wood_anomaly.model import fit_threshold as fit
    from wood_anomaly.model import upper_part

    if cfg.threshold_spreads > 0:
        return {"threshold": float(cfg.threshold_spreads), "threshold_rule": "fixed"}
    usable = [p["index"] for p in parts if "error" not in p]
    share = (DistributedSampler(usable, num_replicas=world, rank=rank, shuffle=False) if world > 1
             else range(len(usable)))
    samples = all_gather_photos([map_sample(model, usable[i], paths[usable[i]], cfg, stats, device)
                                 for i in tqdm(share, desc="threshold fit", unit="photo", disable=rank > 0)], world)
    pooled = np.concatenate([s["scores"] for s in samples])
    tail, count = upper_part(pooled)
    return {**fit(pooled), "fit_tail": torch.from_numpy(tail), "fit_count": count}


def calibration_warning(parts: list[dict], cfg: TrainConfig) -> str | None:
    """A warning when photos gave fewer held-out calibration cells than ``calib_patches`` (small photos: half of
    their cells stay out of the bank), with the sample the spreads rest on; None when none did."""
    photos = [p for p in parts if "error" not in p]
    short = [p for p in photos if len(p["held_out"]) < cfg.calib_patches]
    if not short:
        return None
    total = sum(len(p["held_out"]) for p in photos)
    fewest = min(len(p["held_out"]) for p in short)
    return (f"calibration sample short: {len(short)} of {len(photos)} photos gave fewer than the {cfg.calib_patches} "
            f"held-out cells asked (--calib-patches; fewest {fewest}: a photo with fewer cells than "
            "--patches-per-image plus --calib-patches keeps at most half of them for calibration); the score "
            f"spreads rest on {total} cells in all")


# ----------------------------------------------------------------------------------------------------------- outputs
def save_checkpoint(path: Path, model: PatchCore, cfg: TrainConfig, calib: dict, names: list[str]) -> None:
    import torch

    ckpt = {"bank": model.bank.cpu(), "bank_image": model.bank_image.cpu(), "image_desc": model.image_desc.cpu(),
            "config": asdict(cfg), **calib, "train_images": names, "train_ids": model.train_ids}
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


def write_log(path: Path, parts: list[dict]) -> None:
    with atomic_write(path, "w", newline="") as f:
        log = csv.writer(f)
        log.writerow(["image", "height", "width", "patches", "kept", "seconds"])
        log.writerows(p["log"] for p in parts if "error" not in p)


# ----------------------------------------------------------------------------------------------------------- the run
def train(cfg: TrainConfig) -> tuple[PatchCore, dict]:
    """Fit the model on ``cfg.data`` (this process's share when started by torchrun); rank 0 writes the run
    folder. Returns the model and its calibration (threshold, score quantiles), identical on every rank.

    A photo that cannot be used (unreadable, a folder or a dead link named like a photo, too small) is named on
    stderr with the reason and left out; the others train the model. With none left: exit status 1."""
    import torch

    check_config(cfg)
    torch.manual_seed(cfg.seed)
    rank, world, device = init_distributed(cfg)
    out = Path(cfg.out)
    paths = list_images(image_folder(cfg.data))
    if not paths:
        sys.exit(f"no image in {image_folder(cfg.data)}")
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        remove_leftovers(out, ["model.pt", "config.json", "log.csv"])  # of a run killed while writing them
        print(f"{len(paths)} training photos from {image_folder(cfg.data)}, {world} process(es), device {device}")

    t0 = time.perf_counter()
    model = build_model(cfg, device)
    parts = fit_bank(model, paths, cfg, device, rank, world)
    bad = [p["error"] for p in parts if "error" in p]
    if rank == 0:
        for err in bad:
            print(f"skipping {err}", file=sys.stderr)
    if len(bad) == len(paths):
        sys.exit(f"no usable image in {image_folder(cfg.data)} (reasons above)")
    if len(paths) - len(bad) == 1 and cfg.self_patches == 0:  # its own bank rows are left out: nothing left
        sys.exit(f"one usable photo in {image_folder(cfg.data)} and --self-patches 0: a photo is never compared "
                 "with its own bank rows, so it would have no reference (NaN scores); give more photos or "
                 "--self-patches > 0")
    calib = calibrate(model, [p for p in parts if "error" not in p], cfg, progress=rank == 0)
    warning = calibration_warning(parts, cfg)
    if warning and rank == 0:
        print(f"warning: {warning}", file=sys.stderr)
    calib.update(fit_threshold(model, paths, parts, cfg, calib, device, rank, world), calibration_warning=warning)
    seconds = time.perf_counter() - t0
    if rank == 0:
        write_log(out / "log.csv", parts)
        names = [paths[p["index"]].name for p in parts if "error" not in p]
        save_checkpoint(out / "model.pt", model, cfg, calib, names)
        write_json(out / "config.json", {**asdict(cfg), "bank_size": int(model.bank.shape[0]), "world_size": world,
                                         **{k: v for k, v in calib.items() if k.startswith(("threshold", "calib"))},
                                         "train_seconds": round(seconds, 1),
                                         "train_images": names, "skipped": bad})
        print(f"memory bank {tuple(model.bank.shape)} from {len(names)} of {len(paths)} photos"
              + (f" ({len(bad)} skipped, reasons above)" if bad else "")
              + f", score spreads {({k: v for k, v in calib.items() if k != 'fit_tail'})}, {seconds:.0f} s -> "
              f"{out / 'model.pt'}")
    return model, calib


def main(argv=None) -> tuple[PatchCore, dict]:
    cfg = parse_args(argv)  # before PyTorch is imported: --help and a wrong option answer at once
    import torch.distributed as dist

    try:
        return train(cfg)
    finally:
        if dist.is_initialized():
            dist.barrier()  # nobody leaves before rank 0 has written the checkpoint
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
