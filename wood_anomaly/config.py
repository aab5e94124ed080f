"""The training configuration, its checks and the file layout, without PyTorch.

The scripts parse and check their options with these before they import PyTorch (2-3 s, longer under load), so
that ``--help`` and a wrong option answer at once. Standard library (and common.tiling's tile limit) only.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from common.tiling import MAX_TILE

DEFAULT_DATA = Path("data/wood")
DEFAULT_RUNS = Path("runs/wood")
DEMO_RUNS = Path("runs/wood_demo")  # the run of make demo-wood
DEVICES = ("auto", "cpu", "cuda")
# the EfficientNet-Lite0 stages used as features: index into timm's ``blocks`` -> (channels, stride)
STAGES = {1: (24, 4), 2: (40, 8), 3: (80, 16), 4: (112, 16)}


@dataclass
class TrainConfig:
    data: str = str(DEFAULT_DATA)  # folder of photos, or a folder holding images/ (the real set's layout)
    out: str = str(DEFAULT_RUNS)  # run folder: model.pt, config.json, log.csv
    scale: float = 0.5  # photos are resized by this before tiling (2592x1952 -> 1296x976; 1.0: smaller defects,
    #                     4x the work)
    stages: str = "1,2"  # EfficientNet-Lite0 stages used as patch features (1: stride 4, 2: 8, 3: 16)
    pool: int = 3  # local averaging of features over pool x pool neighbours (PatchCore aggregation)
    patches_per_image: int = 2000  # uniform random patch features per photo kept in the memory bank (a small
    #                                photo keeps at most half of its cells there, the rest calibrates)
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
    #                           surfaces whose defects are no colour change)
    threshold_spreads: float = 0.0  # 0: the label-free pixel threshold is fitted to the training photos' own
    #                                 fused maps (model.fit_threshold); > 0: a fixed threshold of this many
    #                                 training spreads (q95 - q50) above the median (lower: larger masks)
    fit_pixels: int = 200_000  # threshold fit: at most this many random map pixels per training photo
    tile: int = 256  # network input tile (<= 256)
    overlap: int = 32  # overlap of neighbouring tiles, blended by common.tiling
    pad: int = 32  # reflect padding around each tile before the network (hides tile-border effects)
    batch_size: int = 8  # tiles per forward pass
    min_area: float = 2e-5  # predict: a photo is anomalous when its mask covers at least this fraction (0: any pixel)
    seed: int = 0  # random seed of the bank, calibration and colour-reference samples (predict reuses it)
    device: str = "auto"  # auto | cpu | cuda (under torchrun: the GPU of LOCAL_RANK)
    threads: int = 2  # CPU threads of PyTorch (0: PyTorch's default, every core)


def parse_stages(stages: str) -> tuple[int, ...]:
    """``"1,2"`` -> ``(1, 2)``; ValueError naming the option for anything but known stages."""
    try:
        out = tuple(sorted({int(v) for v in str(stages).split(",")}))
    except ValueError:
        out = ()
    if not out or any(v not in STAGES for v in out):
        raise ValueError(f"--stages {stages!r}: a comma-separated list of {sorted(STAGES)}")
    return out


def check_tiling(tile: int, overlap: int, pad: int, stride: int) -> None:
    """Raise ValueError, naming the option, when ``tile``/``overlap``/``pad`` cannot give a feature map that lines
    up with the photo's cells at feature ``stride`` (the tile outputs must cover whole cells)."""
    if not stride <= tile <= MAX_TILE or tile % stride:
        raise ValueError(f"--tile {tile}: must be a multiple of the feature stride {stride} in {stride}..{MAX_TILE}")
    if not 0 <= overlap <= tile // 2 or overlap % stride:
        raise ValueError(f"--overlap {overlap}: must be a multiple of the feature stride {stride} in 0..{tile // 2} "
                         f"(half the tile)")
    if not 0 <= pad < tile or pad % stride:
        raise ValueError(f"--pad {pad}: must be a multiple of the feature stride {stride} in 0..{tile - 1} "
                         "(reflect padding needs less than a tile)")


def check_config(cfg: TrainConfig) -> None:
    """Raise ValueError naming the first option whose value the pipeline cannot use, before any work is done
    (predict.py checks a checkpoint's config the same way)."""
    stride = STAGES[min(parse_stages(cfg.stages))][1]
    check_tiling(cfg.tile, cfg.overlap, cfg.pad, stride)
    positive = {"scale": cfg.scale, "pool": cfg.pool, "patches_per_image": cfg.patches_per_image,
                "calib_patches": cfg.calib_patches, "k": cfg.k, "batch_size": cfg.batch_size,
                "fit_pixels": cfg.fit_pixels}
    non_negative = {"self_patches": cfg.self_patches, "neighbours": cfg.neighbours, "sigma": cfg.sigma,
                    "colour_stride": cfg.colour_stride, "colour_sigma": cfg.colour_sigma, "min_area": cfg.min_area,
                    "threads": cfg.threads, "threshold_spreads": cfg.threshold_spreads}
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


def too_small(height: int, width: int, cfg: TrainConfig) -> str | None:
    """Why a photo of ``height x width`` pixels is too small to score with ``cfg``, or None.

    After resizing by ``scale`` each side must hold one pooled neighbourhood of the coarsest feature stage
    (``pool`` x its stride: 24 px for the defaults), and the photo at least ``k`` cells of the finest stage
    (each cell is scored against its k nearest). A 1x1 photo would otherwise get a map and a label."""
    strides = [STAGES[s][1] for s in parse_stages(cfg.stages)]
    side = cfg.pool * max(strides)
    h, w = max(1, round(height * cfg.scale)), max(1, round(width * cfg.scale))
    cells = math.ceil(h / min(strides)) * math.ceil(w / min(strides))
    if min(h, w) >= side and cells >= cfg.k:
        return None
    need = math.ceil(max(side, math.ceil(math.sqrt(cfg.k)) * min(strides)) / cfg.scale)
    return (f"too small to score: {width} x {height} px; the model needs at least {need} x {need} px "
            f"(--scale {cfg.scale}, --pool {cfg.pool}, --stages {cfg.stages}, --k {cfg.k})")


def default_run(inside: str = "model.pt") -> Path:
    """The run the bare commands use: ``runs/wood`` (make train-wood) when it holds ``inside``, else the demo run
    ``runs/wood_demo`` (make demo-wood) when that does, else ``runs/wood`` (whose absence is then reported)."""
    for run in (DEFAULT_RUNS, DEMO_RUNS):
        if (run / inside).is_file():
            return run
    return DEFAULT_RUNS


def image_folder(data: str | Path) -> Path:
    """``data/images`` when it exists (the real set's layout), else ``data`` itself."""
    data = Path(data)
    return data / "images" if (data / "images").is_dir() else data


def output_folders(names: list[str]) -> dict[str, str | None]:
    """predict.py's output folder of each photo file name: its stem, or the whole file name when another photo
    has the same stem (``board.jpg``, ``board.png`` -> ``board.jpg/``, ``board.png/``). None when even that name
    is taken by another photo's folder (``a.jpg``, ``a.png`` and ``a.jpg.png``): that photo gets an error row.
    Depends on the whole list only, so every shard and evaluate.py find the same folders."""
    stems = Counter(Path(n).stem for n in names)
    out: dict[str, str | None] = {}
    taken: set[str] = set()
    for n in sorted(names):
        folder = Path(n).stem if stems[Path(n).stem] == 1 else n
        out[n] = None if folder in taken else folder
        taken.add(folder)
    return out
