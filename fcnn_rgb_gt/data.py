"""Image-pair loading with checks, the spatial train/validation split, and random augmented training crops.

The exercise's encodings: ``rgb.png`` is RGB or RGBA (alpha dropped), ``gt.png`` is a gray or 3-identical-
channel mask with 0 = building and 255 = background. Here the mask becomes ``(H, W)`` uint8 with 1 = building.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from common.io import ImageReadError, read_mask, read_rgb
from fcnn_rgb_gt.config import DEFAULT_DATA

if TYPE_CHECKING:
    from fcnn_rgb_gt.config import TrainConfig

GT_MAPPING = {0: 1, 255: 0}  # exercise gt.png: 0 = building -> 1, 255 = background -> 0
MIN_TRAIN_SIDE = 32  # below this there is no room for a training crop and a validation strip


def read_gt(path: str | Path, shape: tuple[int, int] | None = None, rgb_path: str | Path | None = None) -> np.ndarray:
    """Read an exercise ``gt.png`` as ``(H, W)`` uint8, 1 = building; check its size against ``shape``.

    The values are the gray levels shown, read as ``rgb.png`` is (same EXIF orientation; a palette PNG by its
    palette's colours, not its indices); any value but 0 / 255 raises ImageReadError naming the file."""
    mask = read_mask(path, GT_MAPPING, colours=True)
    if shape is not None and mask.shape != tuple(shape):
        raise ImageReadError(path, f"size {mask.shape[1]}x{mask.shape[0]} (WxH) does not match "
                                   f"{rgb_path or 'the image'} ({shape[1]}x{shape[0]})")
    return mask


def load_pair(rgb_path: str | Path, gt_path: str | Path, min_side: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(image (H, W, 3) uint8, mask (H, W) uint8 1 = building)``; raises ImageReadError naming the bad file."""
    image = read_rgb(rgb_path)
    if min(image.shape[:2]) < min_side:
        raise ImageReadError(rgb_path, f"image is {image.shape[1]}x{image.shape[0]} px, too small to train on "
                                       f"(at least {min_side}x{min_side})")
    return image, read_gt(gt_path, image.shape[:2], rgb_path)


def load_training_pair(rgb_path: str | Path, gt_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """:func:`load_pair` of a pair large enough to train on, holding both classes."""
    image, mask = load_pair(rgb_path, gt_path, min_side=MIN_TRAIN_SIDE)
    check_both_classes(mask, gt_path)
    return image, mask


def check_both_classes(mask: np.ndarray, gt_path: str | Path) -> None:
    """A training mask must hold buildings and background: with one class the net learns nothing, yet the
    validation IoU is 1.0 (empty prediction, empty truth). Raises ImageReadError naming ``gt_path``."""
    share = float(mask.mean()) if mask.size else 0.0
    if share in (0.0, 1.0):
        only, other = ("background (255)", "building (0)") if share == 0 else ("building (0)", "background (255)")
        raise ImageReadError(gt_path, f"holds only {only}, no {other} pixel: nothing to train on (gt.png encodes "
                                      "0 = building, 255 = background)")


def load_data(cfg: TrainConfig):
    """train.py's pair (``cfg``: its config), its paths and the split. A missing default pair says where it
    belongs and how to get one."""
    rgb = Path(cfg.rgb or Path(cfg.data) / "rgb.png")
    gt = Path(cfg.gt or Path(cfg.data) / "gt.png")
    if not rgb.exists() and not rgb.is_symlink():  # a dead link: read_rgb says so
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


@dataclass(frozen=True)
class Split:
    """Spatial split along ``axis`` (0 = rows, 1 = columns): validation is ``[val_start, val_end)``, training is
    ``[train_start, train_end)``; a ``gap`` of unused pixels between them keeps every training receptive field
    (14 px) off the validation pixels."""

    axis: int
    train_start: int
    train_end: int
    val_start: int
    val_end: int
    side: str  # "top", "bottom", "left" or "right": where the validation strip lies

    def _take(self, arr: np.ndarray, start: int, end: int) -> np.ndarray:
        return arr[start:end] if self.axis == 0 else arr[:, start:end]

    def train(self, arr: np.ndarray) -> np.ndarray:
        return self._take(arr, self.train_start, self.train_end)

    def val(self, arr: np.ndarray) -> np.ndarray:
        return self._take(arr, self.val_start, self.val_end)


def spatial_split(mask: np.ndarray, val_fraction: float = 0.2, gap: int = 16) -> Split:
    """Hold out the border strip (top, bottom, left or right; ``val_fraction`` of that axis) whose building
    fraction is closest to the whole image's, so that validation is neither empty nor all buildings.
    Only the ground truth decides (never the model), and the choice is deterministic."""
    overall = mask.mean()
    candidates = []
    for axis, (first, last) in ((0, ("top", "bottom")), (1, ("left", "right"))):
        size = mask.shape[axis]
        val = max(8, int(round(size * val_fraction)))
        g = min(gap, max(0, (size - val) // 4))
        for side in (last, first):
            if side == last:
                split = Split(axis, 0, size - val - g, size - val, size, side)
            else:
                split = Split(axis, val + g, size, 0, val, side)
            candidates.append((abs(split.val(mask).mean() - overall), len(candidates), split))
    return min(candidates)[2]


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(3, H, W)`` float32 in [0, 1]."""
    return torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1).float().div_(255.0)


class CropSampler:
    """Random square crops of a training region with flips, 90-degree turns, scale and colour jitter.

    ``image`` ``(3, H, W)`` float in [0, 1], ``mask`` ``(H, W)`` long. ``sample(n)`` returns
    ``((n, 3, crop, crop) float, (n, crop, crop) long)``; crops never exceed the region or 256 px.
    Colour jitter (brightness, contrast, saturation, each +-``color``) is vectorised over the batch: torchvision's
    per-image ColorJitter cost more than the training step itself on this CPU.
    """

    def __init__(self, image: torch.Tensor, mask: torch.Tensor, crop: int, augment: bool = True,
                 scale: float = 0.25, color: float = 0.2, generator: torch.Generator | None = None):
        self.image, self.mask = image, mask
        h, w = mask.shape
        self.crop = max(2, min(crop, h, w) // 2 * 2)  # even: MaxPool/UpSample round-trip
        self.augment, self.scale, self.color = augment, scale, color
        self.g = generator or torch.Generator().manual_seed(0)

    def _rand(self, *shape) -> torch.Tensor:
        return torch.rand(shape, generator=self.g)

    def _one(self) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = self.mask.shape
        c = self.crop
        s = 2 ** ((2 * float(self._rand()) - 1) * math.log2(1 + self.scale)) if self.augment and self.scale > 0 else 1.0
        src = max(2, min(int(round(c * s)), h, w))  # source window, resized to c x c
        y = int(torch.randint(0, h - src + 1, (), generator=self.g))
        x = int(torch.randint(0, w - src + 1, (), generator=self.g))
        img, msk = self.image[:, y:y + src, x:x + src], self.mask[y:y + src, x:x + src]
        if src != c:
            img = F.interpolate(img[None], size=(c, c), mode="bilinear", align_corners=False)[0]
            msk = F.interpolate(msk[None, None].float(), size=(c, c), mode="nearest")[0, 0].long()
        if self.augment:
            k = int(torch.randint(0, 4, (), generator=self.g))
            img, msk = torch.rot90(img, k, (1, 2)), torch.rot90(msk, k, (0, 1))
            if float(self._rand()) < 0.5:
                img, msk = img.flip(2), msk.flip(1)
        return img, msk

    def _jitter(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]

        def f() -> torch.Tensor:  # one random factor per image in 1 +- color
            return 1 + self.color * (2 * self._rand(n, 1, 1, 1) - 1)

        gray = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        x = gray + (x - gray) * f()  # saturation
        mean = x.mean((1, 2, 3), keepdim=True)
        x = mean + (x - mean) * f()  # contrast
        return (x * f()).clamp_(0, 1)  # brightness

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        imgs, msks = zip(*(self._one() for _ in range(n)))
        x, y = torch.stack(imgs), torch.stack(msks)
        if self.augment and self.color > 0:
            x = self._jitter(x)
        return x, y
