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

The pixel threshold is set without labels, from the scores of held-out patches of the training photos:
``q50 + 2 (q99 - q50)``, the 99th percentile pushed out by its own distance from the median.

Outputs in ``--out``: ``model.pt`` (memory bank, config, threshold, score statistics), ``config.json`` and
``log.csv`` (one row per training photo).
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from common.io import atomic_path, atomic_write, write_json
from wood_anomaly.data import read_images, resize, tile_features
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
    sigma: float = 2.0  # Gaussian smoothing of the score map, in pixels of the resized photo
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
    for f in fields(TrainConfig):
        p.add_argument("--" + f.name.replace("_", "-"), default=f.default,
                       type={"int": int, "float": float}.get(str(f.type), str))
    return TrainConfig(**vars(p.parse_args(argv)))


def image_folder(data: str | Path) -> Path:
    """``data/images`` when it exists (the real set's layout), else ``data`` itself."""
    data = Path(data)
    return data / "images" if (data / "images").is_dir() else data


def resolve_device(name: str, threads: int = 2) -> torch.device:
    if threads > 0:
        torch.set_num_threads(threads)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is available")
    return torch.device(name)


def build_model(cfg: TrainConfig, device: torch.device) -> PatchCore:
    stages = tuple(int(s) for s in str(cfg.stages).split(","))
    return PatchCore(stages, cfg.pool, cfg.k, cfg.neighbours).to(device).eval().to(memory_format=torch.channels_last)


def sample_rows(x: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """At most ``n`` rows of ``x``, drawn uniformly without replacement."""
    return x if x.shape[0] <= n else x[torch.randperm(x.shape[0], generator=gen)[:n]]


def fit_bank(model: PatchCore, images, cfg: TrainConfig, device: torch.device, log_path: Path):
    """Memory bank ``(M, D)``: ``patches_per_image`` random patch features of every photo (one log row each),
    plus, per photo, a second disjoint random sample of its features (``calib_patches``) kept to calibrate
    the threshold."""
    gen = torch.Generator().manual_seed(cfg.seed)
    parts, held_out, desc = [], [], []
    with atomic_write(log_path, "w", newline="") as f:
        log = csv.writer(f)
        log.writerow(["image", "height", "width", "patches", "kept", "seconds"])
        for path, img in tqdm(images, desc="memory bank", unit="photo"):
            t0 = time.perf_counter()
            feats = tile_features(model.features, resize(img, cfg.scale), cfg.tile, cfg.overlap, cfg.pad,
                                  cfg.batch_size, device)
            order = torch.randperm(feats.shape[0], generator=gen)
            parts.append(feats[order[:cfg.patches_per_image]])
            desc.append(feats.mean(0))
            held_out.append(feats[order[cfg.patches_per_image:][:cfg.calib_patches]])
            log.writerow([path.name, *img.shape[:2], feats.shape[0], parts[-1].shape[0],
                          f"{time.perf_counter() - t0:.2f}"])
    index = torch.cat([torch.full((len(p),), i, dtype=torch.long) for i, p in enumerate(parts)])
    return torch.cat(parts), index, torch.stack(desc), held_out


def calibrate(model: PatchCore, held_out: list[torch.Tensor], cfg: TrainConfig) -> dict:
    """Label-free pixel threshold ``q50 + 2 (q99 - q50)`` of the k-NN scores of held-out training patches.

    Each photo's held-out patches are scored as predict would score them (memory bank + that photo's own
    sample), so the threshold matches the scale of predicted maps without predicting every photo again.
    """
    scores = []
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    for feats in held_out:
        bank = model.select_bank(model.image_desc[len(scores)])
        if cfg.self_patches > 0:
            bank = torch.cat([bank, feats[torch.randperm(feats.shape[0], generator=gen)[:cfg.self_patches]]
                              .to(bank.device)])
        scores.append(knn_distance(feats.to(bank.device), bank, cfg.k).cpu())
    s = torch.cat(scores).numpy()
    q50, q99 = np.quantile(s, [0.5, 0.99])
    return {"threshold": float(q50 + 2 * (q99 - q50)), "q50": float(q50), "q99": float(q99)}


def save_checkpoint(path: Path, model: PatchCore, cfg: TrainConfig, calib: dict, images) -> None:
    ckpt = {"bank": model.bank.cpu(), "bank_image": model.bank_image.cpu(), "image_desc": model.image_desc.cpu(),
            "config": asdict(cfg), **calib,
            "train_images": [p.name for p, _ in images]}
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


def main(argv=None) -> None:
    cfg = parse_args(argv)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device, cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    images, bad = read_images(image_folder(cfg.data))
    if not images:
        sys.exit(f"no readable image in {image_folder(cfg.data)}")
    print(f"{len(images)} training photos ({len(bad)} unreadable) from {image_folder(cfg.data)}, device {device}")

    t0 = time.perf_counter()
    model = build_model(cfg, device)
    bank, index, desc, held_out = fit_bank(model, images, cfg, device, out / "log.csv")
    model.set_bank(bank, index, desc)
    calib = calibrate(model, held_out, cfg)
    seconds = time.perf_counter() - t0
    save_checkpoint(out / "model.pt", model, cfg, calib, images)
    write_json(out / "config.json", {**asdict(cfg), "bank_size": int(model.bank.shape[0]),
                                     "threshold": calib["threshold"], "train_seconds": round(seconds, 1)})
    print(f"memory bank {tuple(model.bank.shape)}, threshold {calib['threshold']:.3f}, "
          f"{seconds:.0f} s -> {out / 'model.pt'}")


if __name__ == "__main__":
    main()
