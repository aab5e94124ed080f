"""The brief's fully convolutional network, and nothing else.

    Input -> Conv1(3x3, 16, pad 1) -> ReLU -> Conv2(3x3, 32, pad 1) -> ReLU -> MaxPool(2x2)
          -> Conv3(3x3, 16, pad 1) -> ReLU -> UpSample(x2) -> Conv4(5x5, 2, pad 2) -> Output (2 channels)

The four convolutions are fixed. The brief allows extra *non-convolutional* layers; two are options, both off in
the plain network (``FCN()``) and both on in train.py's default:

* ``normalize``: per-channel input standardisation ``(x - mean) / std`` with fixed statistics (buffers, set
  from the training image by train.py) instead of the plain ``x / 255``.
* ``batch_norm``: BatchNorm2d after Conv1, Conv2 and Conv3 (before each ReLU).

A third, ``scales``, is a pyramid around the same four convolutions (shared weights): for each scale ``s`` the
input is average-pooled by ``s``, the network runs on that smaller copy of the same tile, its logits are resized
back (bilinear) and the logits of all scales are averaged. Scale ``s`` sees an ``s x 14`` px field of view at
``1 / s^2`` of the cost; ``(1,)`` is the plain single pass, train.py's default is ``(1, 2)``.

Input: ``(B, 3, H, W)`` float in [0, 1] (RGB / 255), H and W even. Output: ``(B, 2, H, W)`` logits; channel 1
is "building". Receptive field of one output pixel: 14x14 input pixels (3, 5, 6, 10, 14 through the layers).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 2  # 0 = background, 1 = building


@dataclass
class ModelConfig:
    normalize: bool = False  # fixed per-channel input standardisation (non-convolutional)
    batch_norm: bool = False  # BatchNorm2d after conv1..conv3
    scales: tuple[int, ...] = (1,)  # input downsampling factors whose logits are averaged (non-convolutional)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, stored: dict) -> ModelConfig:
        """The config a checkpoint stores. Options that older versions had are accepted at the value that is now
        built in (no dropout, nearest-neighbour upsampling); at another value ValueError says which."""
        stored = dict(stored)
        other = drop_legacy(stored, LEGACY_OPTIONS)
        if other:
            raise ValueError(f"model option {other}")
        if "scales" in stored:  # a list once stored as JSON; absent in older checkpoints: one scale
            stored["scales"] = tuple(stored["scales"])
        return cls(**stored)


# options of older versions and the value now built in (a checkpoint holding another value is refused)
LEGACY_OPTIONS = {"dropout": 0.0, "upsample": "nearest"}


def drop_legacy(stored: dict, legacy: dict) -> str:
    """Remove the ``legacy`` options (name: the value now built in) from a stored config, in place; return
    ``"name=value (...)"`` for the first one stored at another value, or ""."""
    other = ""
    for name, builtin in legacy.items():
        value = stored.pop(name, builtin)
        if value != builtin and not other:
            other = f"{name}={value!r} no longer exists (this version has {name}={builtin!r} built in)"
    return other


class FCN(nn.Module):
    def __init__(self, cfg: ModelConfig | None = None):
        super().__init__()
        cfg = cfg or ModelConfig()
        self.cfg = cfg

        def bn(channels: int) -> nn.Module:
            return nn.BatchNorm2d(channels) if cfg.batch_norm else nn.Identity()

        # mean/std are buffers so they travel with the checkpoint; identity (0, 1) unless `normalize`
        self.register_buffer("mean", torch.zeros(1, 3, 1, 1))
        self.register_buffer("std", torch.ones(1, 3, 1, 1))
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = bn(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = bn(32)
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(32, 16, 3, padding=1)
        self.bn3 = bn(16)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv4 = nn.Conv2d(16, NUM_CLASSES, 5, padding=2)
        self.relu = nn.ReLU(inplace=True)

    def set_input_stats(self, mean, std) -> None:
        """Per-channel mean/std of [0, 1] RGB inputs; used only when ``cfg.normalize``."""
        if self.cfg.normalize:
            self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
            self.std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp_min(1e-3).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.normalize:
            x = (x - self.mean) / self.std
        return self.pyramid(x)

    def pyramid(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of an already standardised ``x``: the mean over ``cfg.scales`` of :meth:`at_scale`."""
        y = self.at_scale(x, self.cfg.scales[0])
        for s in self.cfg.scales[1:]:
            y = y + self.at_scale(x, s)
        return y / len(self.cfg.scales) if len(self.cfg.scales) > 1 else y

    def at_scale(self, x: torch.Tensor, s: int) -> torch.Tensor:
        """Logits of ``x`` average-pooled by ``s``, resized back to its size. The input is first padded (edge
        pixels repeated) to a multiple of 2s, so the pooled copy has even sides for the max-pool / upsample."""
        if s == 1:
            return self.convs(x)
        h, w = x.shape[-2:]
        ph, pw = -h % (2 * s), -w % (2 * s)
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        y = self.convs(F.avg_pool2d(x, s))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)[..., :h, :w]

    def convs(self, x: torch.Tensor) -> torch.Tensor:
        """The brief's network on ``x`` (already standardised)."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.pool(self.bn2(self.conv2(x))))  # max-pool then ReLU: the same values, 1/4 the ReLUs
        x = self.relu(self.bn3(self.conv3(x)))
        x = self.up(x)
        return self.conv4(x)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def flops_per_pixel(scales: tuple[int, ...] = (1,)) -> int:
    """Multiply-add FLOPs (2 per MAC) of the four convolutions per input pixel (conv3 runs at 1/4 resolution),
    summed over the pyramid's ``scales`` (scale s runs on 1/s^2 of the pixels)."""
    macs = 3 * 16 * 9 + 16 * 32 * 9 + (32 * 16 * 9) / 4 + 16 * 2 * 25
    return int(2 * macs * sum(1 / s ** 2 for s in scales))
