"""Turning photos into model inputs and patch features, tile by tile (common.tiling).

A photo is read, resized by ``scale`` (the wood photos are 2592x1952; knots and cracks stay visible at half
size, and half size quarters the work), cut into 256x256 tiles (the network never sees more), and each tile
is reflect-padded by ``pad`` pixels before the network so that tile borders do not leave artefacts. The tiles'
feature maps are blended back into one feature map of the photo (``feature_map``): training samples its
memory bank from that map and predict scores it, so both see the same cells, each cell of the photo once.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from common.tiling import Stitcher, TileGrid, iter_tile_batches, tile_grid
from wood_anomaly.config import check_tiling
from wood_anomaly.model import colour_cells, self_reference_distance


def image_id(image: np.ndarray) -> str:
    """Identity of a decoded photo: SHA-256 of its shape and pixels. A training photo is recognised by it at
    predict time whatever its file name (a renamed copy is the same photo; a different photo that happens to
    share a name is not)."""
    h = hashlib.sha256(str(image.shape).encode())
    h.update(np.ascontiguousarray(image).data)
    return h.hexdigest()


def resize(image: np.ndarray, scale: float) -> np.ndarray:
    """Bilinear resize of ``(H, W, ...)`` uint8 by ``scale`` (1.0 returns it unchanged)."""
    if scale == 1.0:
        return image
    h, w = image.shape[:2]
    return np.asarray(Image.fromarray(image).resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                                    Image.BILINEAR))


def resize_map(score: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float ``(h, w)`` map to ``shape`` = (H, W)."""
    if score.shape == tuple(shape):
        return score
    return np.asarray(Image.fromarray(score.astype(np.float32)).resize((shape[1], shape[0]), Image.BILINEAR))


def to_tensor(batch: np.ndarray, device: torch.device, pad: int = 0) -> torch.Tensor:
    """``(B, h, w, 3)`` uint8 tiles -> ``(B, 3, h+2pad, w+2pad)`` float in [0, 1], reflect-padded, channels_last."""
    x = torch.from_numpy(batch).to(device).permute(0, 3, 1, 2).float().div_(255)
    if pad:
        x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    return x.contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def tile_feature_batches(features: torch.nn.Module, image: np.ndarray, tile: int, overlap: int, pad: int,
                         batch_size: int, device: torch.device):
    """Yield ``(features (B, D, tile/s, tile/s), origins)`` over the tile grid of an (already resized) image;
    the cells of the reflect padding are cut away again. ``pad`` must be a multiple of the stride s."""
    cut = pad // features.stride
    for batch, origins in iter_tile_batches(image, tile, overlap, batch_size):
        f = features(to_tensor(batch, device, pad))
        yield (f[..., cut:f.shape[-2] - cut, cut:f.shape[-1] - cut] if cut else f), origins


@torch.no_grad()
def feature_map(features: torch.nn.Module, image: np.ndarray, tile: int, overlap: int, pad: int, batch_size: int,
                device: torch.device) -> tuple[np.ndarray, tuple[int, int]]:
    """Patch features of an (already resized) ``(h, w, 3)`` image computed tile by tile and blended across the
    tile overlaps into one ``(ceil(h/s), ceil(w/s), D)`` float32 map (common.tiling.Stitcher at feature
    resolution, s = ``features.stride``): every cell that holds image pixels, once; no overlap duplicates and
    no cells of the tiles' reflect padding. Also returns the pixel offset ``(y0, x0)`` of the image inside the
    map's ``(rows*s, cols*s)`` pixels."""
    s = features.stride
    check_tiling(tile, overlap, pad, s)
    grid = tile_grid(image.shape[0], image.shape[1], tile, overlap)
    ph, pw = grid.padded_shape[0] // s, grid.padded_shape[1] // s
    cell_grid = TileGrid(ph, pw, grid.tile // s, grid.overlap // s, 0, 0, (ph, pw),
                         tuple((y // s, x // s) for y, x in grid.origins))
    stitcher = Stitcher(cell_grid, features.dim)
    for f, origins in tile_feature_batches(features, image, tile, overlap, pad, batch_size, device):
        stitcher.add(f.permute(0, 2, 3, 1).float().cpu().numpy(), [(y // s, x // s) for y, x in origins])
    top, left = grid.pad_top // s, grid.pad_left // s  # first cell row/column that holds image pixels
    bottom, right = -(-(grid.pad_top + grid.height) // s), -(-(grid.pad_left + grid.width) // s)
    return (np.ascontiguousarray(stitcher.result()[top:bottom, left:right]),
            (grid.pad_top - top * s, grid.pad_left - left * s))


@torch.no_grad()
def colour_map(image: np.ndarray, stride: int, n_ref: int, k: int, sigma: float, seed: int) -> np.ndarray:
    """``(h, w)`` float32 colour-rarity map of an (already resized) ``(h, w, 3)`` uint8 image: each
    ``stride`` x ``stride`` cell's mean distance to its ``k`` nearest among ``n_ref`` random cells of the same
    photo (``seed``), bilinearly upsampled to the image and smoothed by ``sigma``."""
    cells = colour_cells(torch.from_numpy(np.array(image)).permute(2, 0, 1), stride)
    d = self_reference_distance(cells.reshape(3, -1).T, n_ref, k, torch.Generator().manual_seed(seed))
    d = F.interpolate(d.reshape(1, 1, *cells.shape[1:]), scale_factor=stride, mode="bilinear", align_corners=False)
    d = d[0, 0, :image.shape[0], :image.shape[1]].numpy()
    return ndimage.gaussian_filter(d, sigma) if sigma > 0 else d
