"""Fit the PatchCore-style wood anomaly model on a folder of unlabeled photos (no masks, no labels).

    python wood_anomaly/train.py                                  # data/wood/images -> runs/wood/
    python wood_anomaly/train.py --data ../shared/data/wood --out runs/wood_real

Method (see README.md): every photo is resized by ``--scale``, cut into 256x256 tiles and passed through a
frozen ImageNet EfficientNet-Lite0; the locally averaged features of two early stages describe each patch.
A uniform random sample of ``--patches-per-image`` patch features per photo forms the memory bank. The
training photos may contain defects: a uniform sample keeps the bank's density faithful (a greedy coreset
would pick exactly the rare, defective patches), and the score of a patch is its mean distance to its
``--k`` nearest bank features, so a defect seen a few times in training (the same board photographed twice)
still scores high as long as ``k`` exceeds the number of its copies.

Each photo is compared with the bank rows of the ``--neighbours`` training photos whose mean feature is closest
to its own (SPADE-style retrieval: pine with pine, walnut with walnut; a training photo never with itself),
plus ``--self-patches`` random patches of the photo itself (self-reference: a new species is compared with
itself too).

A colour channel sharpens the map: the mean colour of every ``--colour-stride`` square cell (at ``--scale``) scored by its mean
distance to the ``--k`` nearest of ``--colour-patches`` random cells of the same photo (how rare the colour is
in its own photo). Both maps are standardised by their spread over the training photos, ``(s - q50) / (q95 -
q50)``, and fused by a weighted geometric mean, ``deep^w * colour^(1-w)`` (``--deep-weight``): a pixel is
anomalous only where its texture *and* its colour are unusual.

The pixel threshold is set without labels: ``--threshold-spreads`` training spreads above the median.

Outputs in ``--out``: ``model.pt`` (memory bank, config, threshold, score statistics), ``config.json`` and
``log.csv`` (one row per training photo).

More than one process or machine: ``torchrun --nproc_per_node=N wood_anomaly/train.py ...`` (plus torchrun's
``--nnodes/--node-rank/--rdzv-*`` arguments across machines). Each rank reads and featurises its
DistributedSampler share of the photos; the per-photo bank samples are all-gathered (torch.distributed, gloo
on CPU, nccl on CUDA), so every rank ends with the same memory bank and threshold as a single process (the
random sample of each photo is seeded by the photo's index, not by the order the photos are processed in).
Rank 0 alone writes the log and the checkpoint.
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from common.config import add_config_args
from common.io import ImageReadError, atomic_path, atomic_write, list_images, read_rgb, write_json
from common.shard import launcher_env
from wood_anomaly.data import colour_map, resize, tile_features
from wood_anomaly.model import PatchCore, knn_distance

DEFAULT_DATA = Path("data/wood")
DEFAULT_RUNS = Path("runs/wood")


@dataclass
class TrainConfig:
    data: str = str(DEFAULT_DATA)  # folder of photos, or a folder holding images/ (the real set's layout)
    out: str = str(DEFAULT_RUNS)  # run folder: model.pt, config.json, log.csv
    scale: float = 0.5  # photos are resized by this before tiling (2592x1952 -> 1296x976)
    stages: str = "1,2"  # EfficientNet-Lite0 stages used as patch features (1: stride 4, 2: 8, 3: 16)
    pool: int = 3  # local averaging of features over pool x pool neighbours (PatchCore aggregation)
    patches_per_image: int = 2000  # uniform random patch features per photo kept in the memory bank
    self_patches: int = 500  # at predict: random patches of the scored photo itself added to the bank
    calib_patches: int = 4000  # held-out patches per photo whose scores set the threshold
    k: int = 30  # score = mean distance to the k nearest bank features (k > copies of any one defect)
    neighbours: int = 3  # score against the bank rows of the most similar other training photos (0: all)
    sigma: float = 2.0  # Gaussian smoothing of the deep score map, in pixels of the resized photo
    colour_stride: int = 2  # colour channel: mean RGB of stride x stride cells of the resized photo (0: off)
    colour_patches: int = 2000  # colour reference: random cells of the scored photo itself (k nearest: --k)
    colour_sigma: float = 1.5  # Gaussian smoothing of the colour map, in pixels of the resized photo
    deep_weight: float = 0.2  # map = deep^w * colour^(1-w), both standardised by their training spread (1: deep only)
    threshold_spreads: float = 10.0  # label-free pixel threshold: this many training spreads (q95 - q50) above the median
    tile: int = 256  # network input tile (<= 256)
    overlap: int = 32  # overlap of neighbouring tiles, blended by common.tiling
    pad: int = 32  # reflect padding around each tile before the network (hides tile-border effects)
    batch_size: int = 8  # tiles per forward pass
    min_area: float = 2e-5  # predict: a photo is anomalous when its mask covers at least this fraction
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 2  # CPU threads (the shared development machine has 2 cores)


def parse_args(argv=None) -> TrainConfig:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_config_args(p, TrainConfig)
    return TrainConfig(**vars(p.parse_args(argv)))


def image_folder(data: str | Path) -> Path:
    """``data/images`` when it exists (the real set's layout), else ``data`` itself."""
    data = Path(data)
    return data / "images" if (data / "images").is_dir() else data


def resolve_device(name: str, threads: int = 2, local_rank: int = 0) -> torch.device:
    """``auto | cpu | cuda`` -> a device; under torchrun each process of a machine takes GPU ``local_rank``."""
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


def init_distributed(cfg: "TrainConfig") -> tuple[int, int, torch.device]:
    """``(rank, world_size, device)``. Under torchrun (WORLD_SIZE > 1) join its process group from the
    environment it sets (MASTER_ADDR/PORT, RANK, WORLD_SIZE): nccl on CUDA, gloo on CPU."""
    rank, world, local_rank = launcher_env()
    device = resolve_device(cfg.device, cfg.threads, local_rank)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def build_model(cfg: TrainConfig, device: torch.device) -> PatchCore:
    stages = tuple(int(s) for s in str(cfg.stages).split(","))
    return PatchCore(stages, cfg.pool, cfg.k, cfg.neighbours).to(device).eval().to(memory_format=torch.channels_last)


def photo_features(model: PatchCore, index: int, path: Path, cfg: TrainConfig, device: torch.device) -> dict:
    """One training photo -> its bank sample, held-out calibration sample, mean feature and a log row.

    The random split of its patch features is seeded by the photo's index in the sorted folder, so the result
    does not depend on which process handles the photo or in which order (distributed = single process)."""
    t0 = time.perf_counter()
    try:
        img = read_rgb(path)
    except ImageReadError as err:
        return {"index": index, "error": str(err)}
    small = resize(img, cfg.scale)
    feats = tile_features(model.features, small, cfg.tile, cfg.overlap, cfg.pad, cfg.batch_size, device)
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + index)
    order = torch.randperm(feats.shape[0], generator=gen)
    kept = feats[order[:cfg.patches_per_image]]
    part = {"index": index, "bank": kept, "desc": feats.mean(0),
            "held_out": feats[order[cfg.patches_per_image:][:cfg.calib_patches]]}
    if cfg.colour_stride > 0:  # the photo's colour map, computed as predict computes it; a random sample of it
        colour = torch.from_numpy(colour_map(small, cfg.colour_stride, cfg.colour_patches, cfg.k, cfg.colour_sigma,
                                             cfg.seed).ravel())
        part["colour"] = colour[torch.randperm(colour.shape[0], generator=gen)[:4 * cfg.calib_patches]]
    part["log"] = [path.name, *img.shape[:2], feats.shape[0], kept.shape[0], f"{time.perf_counter() - t0:.2f}"]
    return part


def all_gather_photos(parts: list[dict], world: int) -> list[dict]:
    """Every rank's per-photo results on every rank, in photo order (single process: ``parts`` unchanged).
    DistributedSampler pads the last round with repeated photos; those duplicates are dropped here."""
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
    share = DistributedSampler(paths, num_replicas=world, rank=rank, shuffle=False) if world > 1 else range(len(paths))
    parts = all_gather_photos([photo_features(model, i, paths[i], cfg, device)
                               for i in tqdm(share, desc="memory bank", unit="photo", disable=rank > 0)], world)
    photos = [p for p in parts if "error" not in p]
    if photos:
        index = torch.cat([torch.full((len(p["bank"]),), i, dtype=torch.long) for i, p in enumerate(photos)])
        model.set_bank(torch.cat([p["bank"] for p in photos]), index, torch.stack([p["desc"] for p in photos]))
    return parts


def calibrate(model: PatchCore, photos: list[dict], cfg: TrainConfig) -> dict:
    """Training spread of each score: its median and 95th percentile over the training photos, from which the
    maps are standardised, ``(s - q50) / (q95 - q50)``; and the label-free pixel threshold on the fused,
    standardised map, ``threshold_spreads`` (a pixel must lie that many spreads above the median).

    q95 rather than q99: the training photos contain defects, and with a few percent of defective pixels the
    99th percentile already lies inside them (it did on the fabric run), the 95th does not. The deep scores of
    each photo's held-out patches are computed as predict computes them (memory bank + that photo's own sample).
    """
    scores = []
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    for i, p in enumerate(photos):
        feats = p["held_out"]
        bank = model.select_bank(model.image_desc[i])
        if cfg.self_patches > 0:
            bank = torch.cat([bank, feats[torch.randperm(feats.shape[0], generator=gen)[:cfg.self_patches]]
                              .to(bank.device)])
        scores.append(knn_distance(feats.to(bank.device), bank, cfg.k).cpu())
    deep = np.quantile(torch.cat(scores).numpy(), [0.5, 0.95])
    out = {"threshold": float(cfg.threshold_spreads), "deep_q50": float(deep[0]), "deep_q95": float(deep[1])}
    if cfg.colour_stride > 0:
        colour = np.quantile(torch.cat([p["colour"] for p in photos]).numpy(), [0.5, 0.95])
        out.update(colour_q50=float(colour[0]), colour_q95=float(colour[1]))
    return out


def save_checkpoint(path: Path, model: PatchCore, cfg: TrainConfig, calib: dict, names: list[str]) -> None:
    ckpt = {"bank": model.bank.cpu(), "bank_image": model.bank_image.cpu(), "image_desc": model.image_desc.cpu(),
            "config": asdict(cfg), **calib, "train_images": names}
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


def write_log(path: Path, parts: list[dict]) -> None:
    with atomic_write(path, "w", newline="") as f:
        log = csv.writer(f)
        log.writerow(["image", "height", "width", "patches", "kept", "seconds"])
        log.writerows(p["log"] for p in parts if "error" not in p)


def train(cfg: TrainConfig) -> tuple[PatchCore, dict]:
    """Fit the model on ``cfg.data`` (this process's share when started by torchrun); rank 0 writes the run
    folder. Returns the model and its calibration (threshold, score quantiles), identical on every rank."""
    torch.manual_seed(cfg.seed)
    rank, world, device = init_distributed(cfg)
    out = Path(cfg.out)
    paths = list_images(image_folder(cfg.data))
    if not paths:
        sys.exit(f"no image in {image_folder(cfg.data)}")
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        print(f"{len(paths)} training photos from {image_folder(cfg.data)}, {world} process(es), device {device}")

    t0 = time.perf_counter()
    model = build_model(cfg, device)
    parts = fit_bank(model, paths, cfg, device, rank, world)
    bad = [p["error"] for p in parts if "error" in p]
    if len(bad) == len(paths):
        sys.exit(f"no readable image in {image_folder(cfg.data)}")
    calib = calibrate(model, [p for p in parts if "error" not in p], cfg)
    seconds = time.perf_counter() - t0
    if rank == 0:
        for err in bad:
            print(f"skipping unreadable image {err}", file=sys.stderr)
        write_log(out / "log.csv", parts)
        save_checkpoint(out / "model.pt", model, cfg, calib, [paths[p["index"]].name for p in parts if "error" not in p])
        write_json(out / "config.json", {**asdict(cfg), "bank_size": int(model.bank.shape[0]), "world_size": world,
                                         "threshold": calib["threshold"], "train_seconds": round(seconds, 1)})
        print(f"memory bank {tuple(model.bank.shape)}, score spreads {calib}, "
              f"{seconds:.0f} s -> {out / 'model.pt'}")
    return model, calib


def main(argv=None) -> tuple[PatchCore, dict]:
    cfg = parse_args(argv)
    try:
        return train(cfg)
    finally:
        if dist.is_initialized():
            dist.barrier()  # nobody leaves before rank 0 has written the checkpoint
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
