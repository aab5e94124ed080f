"""Fit the PatchCore-style wood anomaly model on a folder of unlabeled photos (no masks, no labels).

    python wood_anomaly/train.py                                  # data/wood/images -> runs/wood/
    python wood_anomaly/train.py --data ../shared/data/wood --out runs/wood_real
    torchrun --nproc_per_node=N wood_anomaly/train.py ...         # N processes (README.md: more machines)

Reads top to bottom: config -> device and processes -> per-photo features (data) -> memory bank (model) ->
calibration -> checkpoint. Each photo is resized by ``--scale``, featurised tile by tile by a frozen ImageNet
EfficientNet-Lite0 into one feature map (``data.feature_map``, the very map predict scores), and a uniform
random sample of ``--patches-per-image`` of its cells joins the memory bank (uniform, not a greedy coreset: the
training photos may contain defects, and a coreset would keep exactly those). Held-out cells of every photo,
scored as predict scores them, give the training spread of the deep and colour scores that standardises both
maps, and the label-free pixel threshold (``--threshold-spreads`` spreads above the median). The design is in
README.md.

Training is one pass with no optimiser and no trained weights (the backbone is frozen; only the bank is filled):
no epochs, no loss curve, nothing to resume. Outputs in ``--out``: ``model.pt`` (bank, config, threshold, score
statistics, training photos' names and identities), ``config.json`` and ``log.csv`` (one row per photo). Every
option is checked before any work (``check_config``), so a setting predict.py could not use stops here.

Under torchrun each rank featurises its DistributedSampler share of the photos and the per-photo samples are
all-gathered (gloo on CPU, nccl on CUDA): every rank ends with the bank and threshold of a single process (each
photo's sample is seeded by its index in the sorted folder). Rank 0 alone writes the run folder.
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
from wood_anomaly.data import check_tiling, colour_map, feature_map, image_id, resize
from wood_anomaly.model import STAGES, PatchCore, knn_distance

DEFAULT_DATA = Path("data/wood")
DEFAULT_RUNS = Path("runs/wood")


# ------------------------------------------------------------------------------------------------------------ config
@dataclass
class TrainConfig:
    data: str = str(DEFAULT_DATA)  # folder of photos, or a folder holding images/ (the real set's layout)
    out: str = str(DEFAULT_RUNS)  # run folder: model.pt, config.json, log.csv
    scale: float = 0.5  # photos are resized by this before tiling (2592x1952 -> 1296x976; 1.0: smaller defects,
    #                     4x the work)
    stages: str = "1,2"  # EfficientNet-Lite0 stages used as patch features (1: stride 4, 2: 8, 3: 16)
    pool: int = 3  # local averaging of features over pool x pool neighbours (PatchCore aggregation)
    patches_per_image: int = 2000  # uniform random patch features per photo kept in the memory bank
    self_patches: int = 500  # at predict: random patches of the scored photo itself added to its reference
    #                          (an unseen surface is compared with itself too)
    calib_patches: int = 4000  # held-out patches per photo whose scores set the threshold
    k: int = 30  # score = mean distance to the k nearest bank features (k > copies of any one defect)
    neighbours: int = 3  # score against the bank rows of the most similar other training photos (0: all)
    sigma: float = 2.0  # Gaussian smoothing of the deep score map, in pixels of the resized photo
    colour_stride: int = 2  # colour channel: mean RGB of stride x stride cells of the resized photo (0: off)
    colour_patches: int = 2000  # colour reference: random cells of the scored photo itself (k nearest: --k)
    colour_sigma: float = 1.5  # Gaussian smoothing of the colour map, in pixels of the resized photo
    deep_weight: float = 0.2  # map = deep^w * colour^(1-w) of the standardised maps (1: the deep map alone, for
    #                           surfaces whose defects are no colour change; lower --threshold-spreads with it)
    threshold_spreads: float = 10.0  # label-free pixel threshold: training spreads (q95 - q50) above the median
    #                                  (lower: larger masks, more photos called anomalous)
    tile: int = 256  # network input tile (<= 256)
    overlap: int = 32  # overlap of neighbouring tiles, blended by common.tiling
    pad: int = 32  # reflect padding around each tile before the network (hides tile-border effects)
    batch_size: int = 8  # tiles per forward pass
    min_area: float = 2e-5  # predict: a photo is anomalous when its mask covers at least this fraction (0: any pixel)
    seed: int = 0  # random seed of the bank, calibration and colour-reference samples (predict reuses it)
    device: str = "auto"  # auto | cpu | cuda (under torchrun: the GPU of LOCAL_RANK)
    threads: int = 2  # CPU threads of PyTorch (0: PyTorch's default, every core)


DEVICES = ("auto", "cpu", "cuda")


def parse_stages(stages: str) -> tuple[int, ...]:
    """``"1,2"`` -> ``(1, 2)``; ValueError naming the option for anything but known stages."""
    try:
        out = tuple(sorted({int(v) for v in str(stages).split(",")}))
    except ValueError:
        out = ()
    if not out or any(v not in STAGES for v in out):
        raise ValueError(f"--stages {stages!r}: a comma-separated list of {sorted(STAGES)}")
    return out


def check_config(cfg: TrainConfig) -> None:
    """Raise ValueError naming the first option whose value the pipeline cannot use, before any work is done
    (predict.py checks a checkpoint's config the same way)."""
    stride = STAGES[min(parse_stages(cfg.stages))][1]
    check_tiling(cfg.tile, cfg.overlap, cfg.pad, stride)
    positive = {"scale": cfg.scale, "pool": cfg.pool, "patches_per_image": cfg.patches_per_image,
                "calib_patches": cfg.calib_patches, "k": cfg.k, "batch_size": cfg.batch_size,
                "threshold_spreads": cfg.threshold_spreads}
    non_negative = {"self_patches": cfg.self_patches, "neighbours": cfg.neighbours, "sigma": cfg.sigma,
                    "colour_stride": cfg.colour_stride, "colour_sigma": cfg.colour_sigma, "min_area": cfg.min_area,
                    "threads": cfg.threads}
    for name, v in positive.items():
        if not v > 0:
            raise ValueError(f"--{name.replace('_', '-')} {v}: must be positive")
    for name, v in non_negative.items():
        if not v >= 0:
            raise ValueError(f"--{name.replace('_', '-')} {v}: must be >= 0")
    if cfg.pool % 2 == 0:
        raise ValueError(f"--pool {cfg.pool}: must be odd (a centred pool x pool neighbourhood)")
    if cfg.colour_stride > 0 and cfg.colour_patches < 1:
        raise ValueError(f"--colour-patches {cfg.colour_patches}: must be positive with the colour channel on")
    if not 0 <= cfg.deep_weight <= 1:
        raise ValueError(f"--deep-weight {cfg.deep_weight}: must be in 0..1 (0: colour only, 1: deep only)")
    if cfg.device not in DEVICES:
        raise ValueError(f"--device {cfg.device!r}: one of {', '.join(DEVICES)}")


def parse_args(argv=None) -> TrainConfig:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
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
    rank, world, local_rank = launcher_env()
    device = resolve_device(cfg.device, cfg.threads, local_rank)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def build_model(cfg: TrainConfig, device: torch.device) -> PatchCore:
    """The frozen feature extractor with an empty memory bank, on ``device`` (channels_last: faster convolutions)."""
    model = PatchCore(parse_stages(cfg.stages), cfg.pool, cfg.k, cfg.neighbours)
    return model.to(device).eval().to(memory_format=torch.channels_last)


# ----------------------------------------------------------------------------------------------- data -> memory bank
def image_folder(data: str | Path) -> Path:
    """``data/images`` when it exists (the real set's layout), else ``data`` itself."""
    data = Path(data)
    return data / "images" if (data / "images").is_dir() else data


def photo_features(model: PatchCore, index: int, path: Path, cfg: TrainConfig, device: torch.device) -> dict:
    """One training photo -> its bank sample, held-out calibration sample, mean feature, identity and a log row
    (or ``{"index", "error"}``: the file and the reason, for a photo that could not be read or featurised).

    The cells are those of the stitched feature map predict scores (``data.feature_map``), so the mean feature
    and the samples describe the same cells as at predict time. The random split of the cells is seeded by the
    photo's index in the sorted folder, so the result does not depend on which process handles the photo or in
    which order (distributed = single process)."""
    t0 = time.perf_counter()
    try:
        img = read_rgb(path)
        small = resize(img, cfg.scale)
        cells, _ = feature_map(model.features, small, cfg.tile, cfg.overlap, cfg.pad, cfg.batch_size, device)
    except ImageReadError as err:
        return {"index": index, "error": str(err)}
    except (ValueError, RuntimeError, MemoryError) as err:  # e.g. out of memory on a huge photo
        return {"index": index, "error": f"{path}: {type(err).__name__}: {err}"}
    feats = torch.from_numpy(cells.reshape(-1, cells.shape[-1]))
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + index)
    order = torch.randperm(feats.shape[0], generator=gen)
    kept = feats[order[:cfg.patches_per_image]]
    part = {"index": index, "bank": kept, "desc": feats.mean(0), "id": image_id(img),
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
        model.set_bank(torch.cat([p["bank"] for p in photos]), index, torch.stack([p["desc"] for p in photos]),
                       [p["id"] for p in photos])
    return parts


# ------------------------------------------------------------------------------------------------------- calibration
def calibrate(model: PatchCore, photos: list[dict], cfg: TrainConfig) -> dict:
    """Training spread of each score: its median and 95th percentile over the training photos, from which the
    maps are standardised, ``(s - q50) / (q95 - q50)``; and the label-free pixel threshold on the fused,
    standardised map, ``threshold_spreads`` (a pixel must lie that many spreads above the median).

    q95 rather than q99: the training photos contain defects, and with a few percent of defective pixels the
    99th percentile already lies inside them (it did on the fabric run), the 95th does not. The deep scores of
    each photo's held-out cells are computed as predict computes them: against the bank rows of the photos
    retrieved for it (never its own rows) plus a random sample of its own cells (self-reference).
    """
    scores = []
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    for i, p in enumerate(photos):
        feats = p["held_out"]
        bank = model.select_bank(model.image_desc[i], exclude=i)
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


# ----------------------------------------------------------------------------------------------------------- outputs
def save_checkpoint(path: Path, model: PatchCore, cfg: TrainConfig, calib: dict, names: list[str]) -> None:
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
    folder. Returns the model and its calibration (threshold, score quantiles), identical on every rank."""
    check_config(cfg)
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
    if rank == 0:
        for err in bad:
            print(f"skipping {err}", file=sys.stderr)
    if len(bad) == len(paths):
        sys.exit(f"no usable image in {image_folder(cfg.data)} (reasons above)")
    if len(paths) - len(bad) == 1 and cfg.self_patches == 0:  # its own bank rows are left out: nothing left
        sys.exit(f"one usable photo in {image_folder(cfg.data)} and --self-patches 0: a photo is never compared "
                 "with its own bank rows, so it would have no reference (NaN scores); give more photos or "
                 "--self-patches > 0")
    calib = calibrate(model, [p for p in parts if "error" not in p], cfg)
    seconds = time.perf_counter() - t0
    if rank == 0:
        write_log(out / "log.csv", parts)
        names = [paths[p["index"]].name for p in parts if "error" not in p]
        save_checkpoint(out / "model.pt", model, cfg, calib, names)
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
