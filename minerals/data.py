"""Patch data of the minerals classifier: the index of extracted patches, the group-aware split, transforms.

Patches come from ``extract_samples.py`` (``<samples>/index.csv`` + ``<samples>/patches/<label>/*.jpg``).
Labels are the 7 minerals plus ``negative`` (background / non-mineral content): the classifier learns an
explicit rejection class, and ``predict.py`` turns low mineral confidence into ``"unknown"``.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.model_selection import StratifiedGroupKFold
from torchvision.transforms import v2

from common.io import read_rgb
from minerals.config import CLASSES


def read_index(samples: str | Path) -> list[dict]:
    """Rows of ``<samples>/index.csv`` (see extract_samples.INDEX_FIELDS), with an absolute ``file`` added."""
    samples = Path(samples)
    if not (samples / "index.csv").exists():
        raise FileNotFoundError(f"{samples}/index.csv not found: run minerals/extract_samples.py first")
    with open(samples / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["file"] = str(samples / "patches" / r["patch"])
        if r["label"] not in CLASSES:
            raise ValueError(f"{samples}/index.csv: unknown label {r['label']!r} (classes: {CLASSES})")
    return rows


def split_rows(rows: list[dict], n_folds: int = 5, fold: int = 0, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Stratified, group-aware split: fold ``fold`` of a ``StratifiedGroupKFold`` is the validation set.

    Groups are the source photo (or its duplicate group from manifest.csv), so every patch of a photo, its
    negatives and its near-duplicates stay on one side; each fold keeps the class proportions.
    """
    val = set(fold_indices(rows, n_folds, seed)[fold].tolist())
    return [r for i, r in enumerate(rows) if i not in val], [r for i, r in enumerate(rows) if i in val]


def with_photos(rows: list[dict], photos: str | Path) -> list[dict]:
    """``rows`` plus, for every mineral patch cut out of a larger photo (a found or given box; not the whole-image
    fallback, which already is the photo), the whole source photo ``photos/<source>`` with the patch's label and
    group: a model trained on both takes a tight patch or a whole photo. ``FileNotFoundError`` names a missing one."""
    extra = [{**r, "file": str(Path(photos) / r["source"]), "kind": "photo"} for r in rows
             if r["kind"] == "positive" and r["method"] != "full"]
    missing = [r["file"] for r in extra if not Path(r["file"]).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} source photos of the patches are not in {photos} (e.g. "
                                f"{missing[0]}): give the folder the samples were extracted from (--photos DIR), "
                                f"or --photos '' for the patches only")
    return rows + extra


def fold_indices(rows: list[dict], n_folds: int, seed: int) -> list[np.ndarray]:
    """The row indices of each fold of a seeded ``StratifiedGroupKFold`` over the rows' labels and groups."""
    y = [CLASSES.index(r["label"]) for r in rows]
    folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return [idx for _, idx in folds.split(np.zeros(len(rows)), y, [r["group"] for r in rows])]


def train_transform(size: int, min_scale: float = 0.25) -> v2.Compose:
    """Strong but CPU-cheap augmentation for training from few photos: scale/crop, flips, photometric changes.

    No hue change: colour is one of the strongest cues between these minerals (and hue jitter is the most
    expensive v2 op on CPU). Free-angle rotations are left out for the same cost reason; the flips cover 4
    orientations.
    """
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=(min_scale, 1.0), ratio=(0.75, 1.333), antialias=True),
        v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(),
        v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.25),
        v2.ToDtype(torch.float32, scale=True),
        v2.RandomErasing(p=0.2, scale=(0.02, 0.12)),
    ])


def eval_transform(size: int) -> v2.Compose:
    """Inference preprocessing: shorter side -> ``size``, centre crop, float in [0, 1]."""
    return v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size), v2.ToDtype(torch.float32, scale=True)])


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(3, H, W)`` uint8 tensor (what the v2 transforms take)."""
    return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1)


class PatchDataset(torch.utils.data.Dataset):
    """Patches decoded once into memory (shorter side cut to ``cache_side``; 0 keeps the stored size, which
    makes validation see exactly what predict.py sees), transformed on the fly."""

    def __init__(self, rows: list[dict], transform, cache_side: int):
        self.labels = [CLASSES.index(r["label"]) for r in rows]
        self.images = []
        for r in rows:
            im = Image.fromarray(read_rgb(r["file"]))
            s = cache_side / min(im.size) if cache_side else 1.0
            if s < 1:
                im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.LANCZOS)
            self.images.append(to_tensor(np.asarray(im)))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[i]), self.labels[i]
