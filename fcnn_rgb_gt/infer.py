"""Device choice, checkpoint loading and tiled inference (never more than 256x256 pixels into the network)."""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

from common.tiling import MAX_TILE, predict_tiled
from fcnn_rgb_gt.config import CheckpointError
from fcnn_rgb_gt.model import FCN, ModelConfig


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name}: not a device (auto, cpu or cuda)") from None


def set_threads(threads: int = 0) -> None:
    """Use ``threads`` intra-op threads (0: the CPU count, at most 2 on this shared machine's budget)."""
    torch.set_num_threads(threads or max(1, min(2, os.cpu_count() or 1)))


def prepare(model: FCN, device: torch.device) -> FCN:
    """Move to ``device``; channels_last is ~1.7x faster for these convolutions on CPU."""
    return model.to(device=device, memory_format=torch.channels_last)


def fuse_batch_norm(model: FCN) -> FCN:
    """Fold each eval-mode BatchNorm into the convolution before it (exact; one pass less over the activations)."""
    model.eval()
    for conv, bn in (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")):
        if isinstance(getattr(model, bn), torch.nn.BatchNorm2d):
            setattr(model, conv, fuse_conv_bn_eval(getattr(model, conv), getattr(model, bn)))
            setattr(model, bn, torch.nn.Identity())
    return model


class UpsampledConv(torch.nn.Module):
    """A 2x nearest-neighbour UpSample followed by ``conv`` (odd kernel, same padding), computed as one convolution
    at the input's resolution whose outputs are the 2x2 pixels each input pixel becomes, put in place by a pixel
    shuffle. Every upsampled pixel repeats an input pixel, so the taps of the kernel that fall on the same input
    pixel add up to one weight: the same sums (up to float rounding), for conv4 with 3x3 instead of 5x5 taps at a
    quarter of the pixels (~1/3 of the multiplies), and no upsampled copy."""

    def __init__(self, conv: torch.nn.Conv2d):
        super().__init__()
        (k, _), (pad, _) = conv.kernel_size, conv.padding
        offsets = [[(a + d - pad) // 2 for d in range(k)] for a in (0, 1)]  # input row of tap d at output row 2i+a
        lo, hi = min(map(min, offsets)), max(map(max, offsets))
        assert conv.stride == (1, 1) and lo == -hi, "same-padded convolution expected"
        w = conv.weight.detach()
        out, inp = w.shape[:2]
        phase = w.new_zeros(out, 2, 2, inp, hi - lo + 1, hi - lo + 1)  # (channel, row phase, column phase, ...)
        for a, b in ((0, 0), (0, 1), (1, 0), (1, 1)):
            for dy in range(k):
                for dx in range(k):
                    phase[:, a, b, :, offsets[a][dy] - lo, offsets[b][dx] - lo] += w[:, :, dy, dx]
        self.conv = torch.nn.Conv2d(inp, 4 * out, hi - lo + 1, padding=hi)
        self.conv.weight.data = phase.reshape(4 * out, inp, hi - lo + 1, hi - lo + 1)  # pixel_shuffle's order
        self.conv.bias.data = conv.bias.detach().repeat_interleave(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.conv(x), 2)


def fold_upsample(model: FCN) -> FCN:
    """Compute UpSample -> Conv4 as :class:`UpsampledConv` (for prediction: 4 phases of one 3x3 convolution)."""
    model.conv4, model.up = UpsampledConv(model.conv4), torch.nn.Identity()
    return model


def fold_difference(model: FCN) -> FCN:
    """Give conv4 one output, building minus background logit, in place of the two: the softmax over two logits
    is the sigmoid of their difference, and what follows conv4 (the resize, the mean over scales) is linear, so
    the same probabilities (up to float rounding) for half the work after conv4. See :func:`building_logit`."""
    conv, (w, b) = model.conv4, (model.conv4.weight.detach(), model.conv4.bias.detach())
    model.conv4 = torch.nn.Conv2d(conv.in_channels, 1, conv.kernel_size, padding=conv.padding)
    model.conv4.weight.data, model.conv4.bias.data = w[1:] - w[:1], b[1:] - b[:1]
    return model


def building_logit(logits: torch.Tensor) -> torch.Tensor:
    """``(B, H, W)`` building-minus-background logit of a model's ``(B, 2, H, W)`` output, or of the one channel of
    a model whose conv4 :func:`fold_difference` made the difference."""
    return logits[:, 1] - logits[:, 0] if logits.shape[1] == 2 else logits[:, 0]


def input_affine(model: FCN) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)``, each ``(1, 3, 1, 1)``: ``scale * pixel + shift`` is the model's standardised input for a
    0-255 pixel, ``(pixel / 255 - mean) / std`` with ``cfg.normalize``, else ``pixel / 255`` (one pass, not
    three)."""
    mean, std = model.mean, model.std
    if not model.cfg.normalize:
        mean, std = torch.zeros_like(mean), torch.ones_like(std)
    return 1 / (255 * std), -mean / std


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def read_checkpoint(path: str | Path, keys: tuple[str, ...] = ("model", "model_config")) -> dict:
    """The checkpoint dict at ``path`` (tensors and plain containers only: ``weights_only``), holding ``keys``;
    raises :class:`CheckpointError` ``"<path>: <reason>"`` for a missing, truncated, foreign or unsafe file."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file (e.g. {path / 'best.pt'})")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found (train first: python fcnn_rgb_gt/train.py)")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a cut-off one has no central directory
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (truncated, or another kind of file)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path}: holds Python objects other than tensors and plain containers; "
                              "refused (only weights-only checkpoints are loaded)") from None
    except (RuntimeError, KeyError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable checkpoint ({_first_line(err)})") from None
    missing = [k for k in keys if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: not an fcnn_rgb_gt checkpoint (no {', '.join(missing)})")
    return ckpt


def build_model(path: str | Path, ckpt: dict) -> FCN:
    """The FCN described by ``ckpt`` with its weights; :class:`CheckpointError` when they do not fit."""
    try:
        model = FCN(ModelConfig.from_dict(ckpt["model_config"]))
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError, TypeError, ValueError, NotImplementedError) as err:
        raise CheckpointError(f"{path}: not a valid fcnn_rgb_gt checkpoint ({_first_line(err)})") from None
    return model


def load_checkpoint(path: str | Path, device: torch.device, fuse: bool = True) -> tuple[FCN, dict]:
    """Return ``(model in eval mode, checkpoint dict)``; ``fuse`` folds batch norm into the convolutions, the two
    logits into their difference and the upsampling into conv4 (the same probabilities, for prediction: one
    output channel, :class:`UpsampledConv`)."""
    ckpt = read_checkpoint(path)
    model = build_model(path, ckpt)
    model.eval()
    if fuse:
        model = fold_upsample(fold_difference(fuse_batch_norm(model)))
    return prepare(model, device), ckpt


def _window(mask: np.ndarray, size: int, op) -> np.ndarray:
    """``op`` (np.logical_and: a minimum, np.logical_or: a maximum) of a 2-D ``mask`` over a centred window of odd
    ``size`` down each column; pixels beyond the border do not count. Windows of 1, 2, 4, ... rows are combined
    from shifted views (log2(size) passes over the mask)."""
    r = size // 2
    x = np.pad(mask, ((r, r), (0, 0)), constant_values=op is np.logical_and)  # the neutral value of op
    width = 1  # x[i] holds op over rows [i, i + width) of the padded mask
    while width < size:
        step = min(width, size - width)
        x, width = op(x[:-step], x[step:]), width + step
    return x[:len(mask)]


def clean_mask(mask: np.ndarray, radius: int) -> np.ndarray:
    """Morphological clean-up of a building mask: an opening (drops specks and strips thinner than 2 x radius + 1
    px) then a closing (fills gaps and holes as small), with a (2 radius + 1) px square; radius 0: unchanged.
    The same mask as scipy.ndimage's minimum / maximum filters (their reflected border adds nothing to a centred
    window), about 4x faster on a 2149x1479 mask (15 against 62 ms): logical and / or of shifted copies, one axis
    at a time."""
    if radius <= 0:
        return mask
    k = 2 * radius + 1

    def square(m: np.ndarray, op) -> np.ndarray:  # np.logical_and: erosion, np.logical_or: dilation
        return _window(_window(m, k, op).T, k, op).T

    opened = square(square(mask.astype(bool), np.logical_and), np.logical_or)
    return square(square(opened, np.logical_or), np.logical_and)  # then closed


def decide(prob: np.ndarray, threshold: float, radius: int, prior: float = 0.0,
           max_share: float = 0.0) -> tuple[np.ndarray, float]:
    """``(building mask, threshold used)`` of a probability map, as predict.py makes it: ``prob >= threshold``,
    the threshold raised where that would mark more than ``max_share`` x ``prior`` of the pixels (``prior``: the
    training image's building share; 0 for either: no limit) to the value that marks that share, then
    :func:`clean_mask` with ``radius``."""
    limit = max_share * prior
    if 0 < limit < 1 and (prob >= threshold).mean() > limit:
        flat = prob.ravel()
        k = min(flat.size - 1, round((1 - limit) * flat.size))
        threshold = max(threshold, float(np.partition(flat, k)[k]))
    return clean_mask(prob >= threshold, radius), threshold


def averaged_weights(state: dict) -> dict:
    """An ``AveragedModel`` state dict as the plain FCN's (its ``module.`` prefix and counter dropped)."""
    return {k.removeprefix("module."): v for k, v in state.items() if k != "n_averaged"}


# how far a new image may be from the training image before predict.py warns (see input_warnings)
MEAN_SHIFT = 0.5  # a channel's mean moved by more than this many of the training image's standard deviations
STD_RATIO = 1.5  # a channel's standard deviation more than this factor above or below the training image's
GRAY_CHROMA = 0.25  # the mean channel spread (max - min of R, G, B) below this share of the training image's
SHARE_RATIO = 2.5  # marked building share more than this factor above or below the training image's building share


def image_stats(image: np.ndarray, mask: np.ndarray | None = None) -> dict:
    """Colour statistics of an ``(H, W, 3)`` uint8 image in [0, 1]: per-channel ``mean`` and ``std``, ``chroma``
    (mean over pixels of max - min of R, G, B; 0 for a gray image) and, with a mask, ``building_share``."""
    x = image.reshape(-1, 3)
    step = max(1, len(x) // 1_000_000)  # a fixed sample of a large image: the statistics, not every pixel
    x = x[::step].astype(np.float32) / 255.0
    stats = {"mean": [round(float(v), 4) for v in x.mean(0)], "std": [round(float(v), 4) for v in x.std(0)],
             "chroma": round(float((x.max(1) - x.min(1)).mean()), 4)}
    if mask is not None:
        stats["building_share"] = round(float(mask.mean()), 4)
    return stats


def input_warnings(image: np.ndarray, marked: float, train: dict | None) -> list[str]:
    """Why the prediction of ``image`` (``marked``: the share of its pixels marked building) may not be trusted:
    it differs from the training image (``train``: its :func:`image_stats`; None for older checkpoints, which
    only get the gray check) in a way the model was never shown. [] when nothing stands out."""
    new = image_stats(image)
    out = []
    gray = new["chroma"] < GRAY_CHROMA * train["chroma"] if train else new["chroma"] == 0
    if gray:
        out.append(f"the image has (almost) no colour (mean channel spread {new['chroma']:.3f}"
                   + (f", training image {train['chroma']:.3f}" if train else "") + "): the model reads colour")
    if train:
        for c, name in enumerate("RGB"):
            shift = abs(new["mean"][c] - train["mean"][c]) / max(train["std"][c], 1e-3)
            ratio = new["std"][c] / max(train["std"][c], 1e-3)
            if shift > MEAN_SHIFT or not 1 / STD_RATIO <= ratio <= STD_RATIO:
                out.append(f"its colours differ from the training image's (channel {name}: mean {new['mean'][c]:.2f} "
                           f"vs {train['mean'][c]:.2f}, std {new['std'][c]:.2f} vs {train['std'][c]:.2f})")
                break
        prior = train.get("building_share", 0)
        if prior and not prior / SHARE_RATIO <= marked <= prior * SHARE_RATIO:
            out.append(f"it is marked {marked:.1%} building where the training image has {prior:.1%}: it may "
                       "differ in ground resolution, season or sensor")
    return out


def _even_tile(tile: int, height: int, width: int) -> int:
    """The tile to use: even (pool/upsample round trip), <= 256, no larger than the image needs."""
    need = max(height, width, 16)
    return max(2, min(tile, MAX_TILE, need + need % 2) // 2 * 2)


@torch.inference_mode()
def predict_probs(model: FCN, image: np.ndarray, device: torch.device | None = None, tile: int = MAX_TILE,
                  overlap: int = 32, batch_size: int = 1, progress=None) -> np.ndarray:
    """Building probability ``(H, W)`` float32 of an ``(H, W, 3)`` uint8 image, from blended overlapping tiles.
    ``tile`` and ``overlap`` are rounded down to even numbers: with an odd stride between tiles the 2x2 max-pool
    of neighbouring tiles pairs different pixels, and their blend differs from one untiled pass (measured: up to
    0.47 in probability at overlap 15 of 64 px tiles, against 0.06 at overlap 16)."""
    device = device or next(model.parameters()).device
    h, w = image.shape[:2]
    tile = _even_tile(tile, h, w)
    overlap = min(overlap, tile // 2) // 2 * 2

    scale, shift = input_affine(model)

    def fn(batch: np.ndarray) -> np.ndarray:
        assert batch.shape[1] <= MAX_TILE and batch.shape[2] <= MAX_TILE, batch.shape  # the brief's GPU limit
        pixels = torch.from_numpy(batch).to(device).permute(0, 3, 1, 2)  # uint8, channels_last strides
        logits = model.pyramid(torch.addcmul(shift, pixels, scale).contiguous(memory_format=torch.channels_last))
        # (B, t, t) building probability: softmax over two logits == sigmoid of their difference
        return torch.sigmoid(building_logit(logits).float()).cpu().numpy()

    return predict_tiled(image, fn, tile=tile, overlap=overlap, batch_size=batch_size, progress=progress)[..., 0]
