"""Split images of any size into tiles of at most 256x256 and stitch per-tile outputs back without seams.

numpy only. The image is padded (reflect by default) to a regular grid of tiles, so every tile lies fully
inside the padded image, tiles of one grid all have the same size, and a network never sees more than
``tile x tile`` pixels at once. Padding is done tile by tile (the padded image is never built) and tiles are
yielded in batches: the extra memory of a tiled prediction is one input batch plus one output batch, besides
the ``(H, W, K)`` output map itself, whatever the image size.

Typical use::

    probs = predict_tiled(image, lambda batch: net(batch), tile=256, overlap=32, batch_size=8)

Blending: with ``overlap > 0`` each tile's output is weighted by a window that is 1 in the tile centre and
falls smoothly (raised cosine) to a small positive value at the tile border over the overlap width, and the
stitched output is the weighted mean. A constant output stays that constant, and tile borders leave no seam.
With ``overlap == 0`` every pixel comes from exactly one tile: the round trip is exact.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

MAX_TILE = 256  # the brief's memory limit: a network input is never larger than 256x256


@dataclass(frozen=True)
class TileGrid:
    """Tile positions of an ``height x width`` image.

    ``pad_top``/``pad_left`` are the padding added before the image; ``padded_shape`` is the size of the padded
    image; ``origins`` are the (y, x) top-left corners of the tiles in padded coordinates, row by row.
    """

    height: int
    width: int
    tile: int
    overlap: int
    pad_top: int
    pad_left: int
    padded_shape: tuple[int, int]
    origins: tuple[tuple[int, int], ...]

    def __len__(self) -> int:
        return len(self.origins)


def _axis(length: int, tile: int, overlap: int) -> tuple[int, int, list[int]]:
    """Padding before, padded length and tile starts along one axis."""
    stride = tile - overlap
    n = max(1, math.ceil((length - overlap) / stride)) if length > tile else 1
    padded = (n - 1) * stride + tile
    # centre the image, with an even padding before it so that 2x2 pooling of a network falls on the same
    # pixel pairs as in an untiled pass (tile and stride are even in every normal setting)
    return (padded - length) // 4 * 2, padded, [i * stride for i in range(n)]


def tile_grid(height: int, width: int, tile: int = MAX_TILE, overlap: int = 32) -> TileGrid:
    """Lay a regular grid of ``tile x tile`` tiles with ``overlap`` pixels shared between neighbours.

    Raises:
        ValueError: for a tile above :data:`MAX_TILE`, an overlap not in ``[0, tile/2]`` or an empty image.
    """
    if not 1 <= tile <= MAX_TILE:
        raise ValueError(f"tile must be in 1..{MAX_TILE}, got {tile}")
    if not 0 <= overlap <= tile // 2:
        raise ValueError(f"overlap must be in 0..{tile // 2} for tile {tile}, got {overlap}")
    if height < 1 or width < 1:
        raise ValueError(f"image must be at least 1x1, got {height}x{width}")
    top, ph, ys = _axis(height, tile, overlap)
    left, pw, xs = _axis(width, tile, overlap)
    return TileGrid(height, width, tile, overlap, top, left, (ph, pw), tuple((y, x) for y in ys for x in xs))


def _source_index(coords: np.ndarray, length: int, mode: str) -> np.ndarray:
    """Map padded coordinates (image coordinates, may be < 0 or >= length) to source indices, as np.pad does."""
    if mode == "edge" or (mode == "reflect" and length == 1):
        return np.clip(coords, 0, length - 1)
    if mode == "reflect":  # ... 2 1 | 0 1 2 ... L-1 | L-2 ...   (edge not repeated)
        period = 2 * (length - 1)
        q = np.mod(coords, period)
        return np.where(q < length, q, period - q)
    if mode == "symmetric":  # ... 1 0 | 0 1 2 ... L-1 | L-1 ...   (edge repeated)
        q = np.mod(coords, 2 * length)
        return np.where(q < length, q, 2 * length - 1 - q)
    raise ValueError(f"pad_mode must be 'reflect', 'symmetric', 'edge' or 'constant', got {mode!r}")


def _gather(image: np.ndarray, ys: np.ndarray, xs: np.ndarray, mode: str) -> np.ndarray:
    """``image`` at rows ``ys`` and columns ``xs`` (image coordinates, possibly outside it), padded as np.pad would."""
    h, w = image.shape[:2]
    if mode == "constant":
        out = image[np.ix_(np.clip(ys, 0, h - 1), np.clip(xs, 0, w - 1))]
        out[((ys < 0) | (ys >= h))[:, None] | ((xs < 0) | (xs >= w))[None, :]] = 0
        return out
    rows, cols = _run_or_index(_source_index(ys, h, mode)), _run_or_index(_source_index(xs, w, mode))
    if isinstance(rows, slice) and isinstance(cols, slice):  # inside the image: a plain copy, ~10x faster
        return image[rows, cols].copy()
    if isinstance(rows, slice) or isinstance(cols, slice):  # one axis inside: index the other one only
        return image[rows][:, cols] if isinstance(rows, slice) else image[:, cols][rows]
    return image[np.ix_(rows, cols)]


def _run_or_index(index: np.ndarray) -> slice | np.ndarray:
    """``index`` as a slice when it is a run of consecutive increasing integers, else unchanged."""
    if len(index) and index[-1] - index[0] == len(index) - 1 and (np.diff(index) == 1).all():
        return slice(int(index[0]), int(index[-1]) + 1)
    return index


def extract_tile(image: np.ndarray, grid: TileGrid, origin: tuple[int, int], mode: str = "reflect") -> np.ndarray:
    """The tile at ``origin`` (padded coordinates): equal to slicing :func:`pad_to_grid`'s output, built alone."""
    y, x = origin
    return _gather(image, np.arange(y, y + grid.tile) - grid.pad_top, np.arange(x, x + grid.tile) - grid.pad_left,
                   mode)


def pad_to_grid(image: np.ndarray, grid: TileGrid, mode: str = "reflect") -> np.ndarray:
    """Pad ``(H, W, ...)`` ``image`` to ``grid.padded_shape`` ('reflect', 'symmetric', 'edge' or 'constant')."""
    ph, pw = grid.padded_shape
    return _gather(image, np.arange(ph) - grid.pad_top, np.arange(pw) - grid.pad_left, mode)


def iter_tile_batches(
    image: np.ndarray,
    tile: int = MAX_TILE,
    overlap: int = 32,
    batch_size: int = 8,
    pad_mode: str = "reflect",
    grid: TileGrid | None = None,
) -> Iterator[tuple[np.ndarray, list[tuple[int, int]]]]:
    """Yield ``(batch, origins)``: ``batch`` is ``(B, tile, tile, C)`` (same dtype as ``image``), B <= batch_size.

    ``image`` is ``(H, W, C)`` or ``(H, W)`` (then C = 1). Border tiles are padded on the fly (``pad_mode``:
    'reflect', 'symmetric', 'edge' or 'constant'), so the only extra memory is one batch, whatever the image
    size. Each yielded batch is a fresh array that the caller may keep or modify.
    """
    if image.ndim == 2:
        image = image[..., None]
    grid = grid or tile_grid(image.shape[0], image.shape[1], tile, overlap)
    for i in range(0, len(grid.origins), batch_size):
        origins = list(grid.origins[i:i + batch_size])
        batch = np.stack([extract_tile(image, grid, o, pad_mode) for o in origins])
        assert batch.shape[1] <= MAX_TILE and batch.shape[2] <= MAX_TILE, "a tile exceeds 256x256"
        yield batch, origins


def blend_window(tile: int, overlap: int, floor: float = 1e-3) -> np.ndarray:
    """``(tile, tile)`` float32 weights: 1 inside, a raised-cosine ramp to ``floor`` over ``overlap`` at each edge."""
    w = np.ones(tile, dtype=np.float64)
    if overlap > 0:
        ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(overlap) + 0.5) / overlap)  # (0, 1) increasing
        w[:overlap] = ramp
        w[tile - overlap:] = ramp[::-1]
        w = np.maximum(w, floor)
    return np.outer(w, w).astype(np.float32)


class Stitcher:
    """Accumulate per-tile outputs ``(B, tile, tile, K)`` and return the blended ``(H, W, K)`` float32 map."""

    def __init__(self, grid: TileGrid, channels: int):
        self.grid = grid
        self.window = blend_window(grid.tile, grid.overlap)[..., None]
        self.acc = np.zeros(grid.padded_shape + (channels,), dtype=np.float32)
        self.weight = np.zeros(grid.padded_shape + (1,), dtype=np.float32)

    def add(self, outputs: np.ndarray, origins: list[tuple[int, int]]) -> None:
        outputs = np.asarray(outputs, dtype=np.float32)
        if outputs.ndim == 3:
            outputs = outputs[..., None]
        t = self.grid.tile
        if outputs.shape[1:3] != (t, t):
            raise ValueError(f"tile outputs must be {t}x{t}, got {outputs.shape[1:3]}")
        for out, (y, x) in zip(outputs, origins):
            self.acc[y:y + t, x:x + t] += out * self.window
            self.weight[y:y + t, x:x + t] += self.window

    def result(self) -> np.ndarray:
        g = self.grid
        sl = (slice(g.pad_top, g.pad_top + g.height), slice(g.pad_left, g.pad_left + g.width))
        if g.overlap == 0:  # every pixel has exactly one tile of weight 1: return it untouched (exact)
            return self.acc[sl].copy()
        return self.acc[sl] / self.weight[sl]


def predict_tiled(
    image: np.ndarray,
    fn: Callable[[np.ndarray], np.ndarray],
    tile: int = MAX_TILE,
    overlap: int = 32,
    batch_size: int = 8,
    pad_mode: str = "reflect",
    progress: Callable | None = None,
) -> np.ndarray:
    """Run ``fn`` over tiles of ``image`` and stitch the results.

    Args:
        image: ``(H, W, C)`` or ``(H, W)`` array of any size.
        fn: maps a ``(B, tile, tile, C)`` batch (dtype of ``image``) to ``(B, tile, tile, K)`` or
            ``(B, tile, tile)`` outputs (numpy-convertible).
        progress: optional wrapper for the batch iterator, e.g. ``functools.partial(tqdm, total=...)``.

    Returns:
        ``(H, W, K)`` float32 blended outputs.
    """
    grid = tile_grid(image.shape[0], image.shape[1], tile, overlap)
    batches = iter_tile_batches(image, tile, overlap, batch_size, pad_mode, grid=grid)
    if progress is not None:
        batches = progress(batches, total=math.ceil(len(grid) / batch_size))
    stitcher = None
    for batch, origins in batches:
        out = np.asarray(fn(batch))
        if out.ndim == 3:
            out = out[..., None]
        if stitcher is None:
            stitcher = Stitcher(grid, out.shape[-1])
        stitcher.add(out, origins)
    return stitcher.result()
